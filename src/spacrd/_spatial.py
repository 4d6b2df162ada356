"""SpatialData adapter: which table, which shapes it annotates, and where its spots lie in an image.

A SpatialData table is an AnnData whose rows annotate shapes elements through ``region`` (the elements'
names), ``region_key`` (the ``obs`` column naming each row's element) and ``instance_key`` (the ``obs``
column matching a row to a shapes index). Every part of spacrd that reads SpatialData (``pp`` for crops
and features, ``model`` for the table it trains on, ``pl`` for the plots) resolves these here, so the
rules are written once:

- rows are matched to shapes by instance id, whatever the row order;
- a spot's centre is its circle centre or its polygon's centroid;
- a spot's width ("diameter") is the circle's diameter, the side of a square bin, or a cell polygon's
  equivalent diameter ``2 * sqrt(area / pi)``;
- shapes coordinates reach an image's full-resolution (``scale0``) pixels through one affine matrix,
  :func:`shapes_to_image`, and widths scale by ``sqrt(|det|)`` of its linear part.

Shapes are read as spatialdata-io 0.7.0 (``spatialdata_io.readers``) writes them: Visium spots are
circles (points with a ``"radius"`` column) in full-resolution pixels; Visium HD bins are one shapes
element per bin size, ``f"{dataset_id}_square_{bin:03}um"``, squares as polygons (or circles with
``bins_as_squares=False``) in full-resolution pixels, each annotated by its own table (``region_key
"region"``, ``instance_key "location_id"``); Xenium cells are ``"cell_circles"`` (radius
``sqrt(area / pi)``) and ``"cell_boundaries"`` polygons in µm, mapped to pixels by
``Scale(1 / pixel_size)``, with the table annotating ``"cell_circles"`` (``instance_key "cell_id"``) and
the H&E registered by an ``Affine`` to ``"global"``.

spatialdata is imported only inside the functions, so that spacrd imports without loading it.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd

from ._constants import SPATIALDATA_KEYS

if TYPE_CHECKING:
    from anndata import AnnData
    from spatialdata import SpatialData

SpotKind = Literal["circle", "square", "polygon"]

# A square's area equals (perimeter / 4)²; among quadrilaterals only a square's does, so this (with four
# corners) tells square bins from cell outlines, rotated or not, without trusting vertex order.
_SQUARE_RTOL = 1e-6
_POINT, _POLYGON, _MULTIPOLYGON = 0, 3, 6  # shapely.get_type_id codes


def is_spatialdata(obj: Any) -> bool:
    """Whether ``obj`` is a :class:`~spatialdata.SpatialData`, without importing spatialdata needlessly.

    spatialdata is imported only when it is loaded already or ``obj``'s type comes from it; an object
    made without spatialdata cannot be one.
    """
    if "spatialdata" not in sys.modules and type(obj).__module__.split(".")[0] != "spatialdata":
        return False
    from spatialdata import SpatialData

    return isinstance(obj, SpatialData)


def get_table(sdata: SpatialData, table_key: str | None, *, argument: str = "table_key") -> AnnData:
    """``sdata.tables[table_key]``; ``None`` takes the only table. ``argument`` names the key in errors."""
    return sdata.tables[resolve_table_key(sdata, table_key, argument=argument)]


def resolve_table_key(sdata: SpatialData, table_key: str | None, *, argument: str = "table_key") -> str:
    """``table_key``, checked to name a table of ``sdata``; ``None`` names the only table."""
    if table_key is None:
        if len(sdata.tables) != 1:
            raise ValueError(
                f"The SpatialData object holds {len(sdata.tables)} tables ({list(sdata.tables)}); say "
                f"which one holds the spots with `{argument}=`."
            )
        (table_key,) = sdata.tables
    if table_key not in sdata.tables:
        raise KeyError(
            f"SpatialData has no table {table_key!r} (it has {list(sdata.tables)}); pass {argument}= "
            "naming the table of spots."
        )
    return table_key


@dataclass(frozen=True)
class TableKeys:
    """How a table's rows point to shapes: the elements, the column naming one per row, the id column."""

    regions: tuple[str, ...]
    region_key: str
    instance_key: str


def table_keys(table: AnnData, table_key: str = "") -> TableKeys:
    """The ``region``, ``region_key`` and ``instance_key`` of a table, checked against its ``obs``."""
    from spatialdata.models import get_table_keys

    try:
        regions, region_key, instance_key = get_table_keys(table)
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(
            f"Table {table_key!r} does not say which shapes it annotates; parse it with "
            "spatialdata.models.TableModel.parse(table, region=, region_key=, instance_key=)."
        ) from error
    if region_key is None or instance_key is None:
        raise ValueError(
            f"Table {table_key!r} does not say which shapes it annotates (no region_key/instance_key); parse "
            "it with spatialdata.models.TableModel.parse(table, region=, region_key=, instance_key=)."
        )
    for key in (region_key, instance_key):
        if key not in table.obs:
            raise ValueError(
                f"Table {table_key!r} names obs column {key!r} in its attrs but has no such column."
            )
    regions = (regions,) if isinstance(regions, str) else tuple(regions)
    return TableKeys(tuple(str(r) for r in regions), str(region_key), str(instance_key))


def row_regions(table: AnnData, keys: TableKeys) -> np.ndarray:
    """``(n_obs,)`` str: the shapes element each table row annotates."""
    return table.obs[keys.region_key].astype(str).to_numpy()


def shapes_element(sdata: SpatialData, key: str, table_key: str | None = None) -> Any:
    """``sdata.shapes[key]``, with an error that says what ``key`` is when it is not a shapes element."""
    if key in sdata.shapes:
        return sdata.shapes[key]
    kind = next((k for k in ("labels", "points", "images") if key in getattr(sdata, k)), None)
    detail = f"{key!r} is a {kind} element" if kind else f"there is no element {key!r}"
    owner = f"Table {table_key!r} must annotate" if table_key is not None else "Spots must be"
    raise KeyError(f"{owner} spot shapes, but {detail} (shapes: {list(sdata.shapes)}).")


def instance_positions(
    shapes: Any, instances: np.ndarray, key: str, table_key: str, instance_key: str
) -> np.ndarray:
    """``(n,)`` positions in ``shapes`` of the rows whose index equals ``instances``, in that order."""
    index = pd.Index(instances)
    repeated = index[index.duplicated()].unique()
    if len(repeated):
        raise ValueError(
            f"Table {table_key!r} has several rows for instance(s) {repeated[:3].tolist()} of shapes {key!r} "
            f"(obs[{instance_key!r}] must be unique per region)."
        )
    position = shapes.index.get_indexer(index)
    if (position < 0).any():
        raise ValueError(
            f"{int((position < 0).sum())} row(s) of table {table_key!r} point to instances missing from shapes "
            f"{key!r} (first: {instances[position < 0][:3].tolist()}; obs[{instance_key!r}] is "
            f"{instances.dtype}, the shapes index {shapes.index.dtype})."
        )
    return position


@dataclass(frozen=True)
class Spots:
    """Spots of one shapes element: where they are and how wide, in one coordinate frame.

    Attributes
    ----------
    element
        Name of the shapes element.
    kind
        ``"circle"`` (points with a radius), ``"square"`` (square polygons, e.g. Visium HD bins) or
        ``"polygon"`` (other outlines, e.g. Xenium cell boundaries).
    rows
        ``(n,)`` int: the table rows these spots are (or positions in the shapes element without a table).
    names
        ``(n,)`` str: table ``obs_names`` (or the shapes index).
    centres
        ``(n, 2)`` float64 ``(x, y)``: circle centres or polygon centroids.
    diameters
        ``(n,)`` float64 widths in the same units: circle diameter, square side, or a polygon's
        equivalent diameter ``2 * sqrt(area / pi)``. NaN where a circle has no radius.

    """

    element: str
    kind: SpotKind
    rows: np.ndarray
    names: np.ndarray
    centres: np.ndarray
    diameters: np.ndarray

    @property
    def diameter(self) -> float:
        """Median width of the element's spots (NaN when any is missing; 1.0 for no spots)."""
        if not len(self.diameters):
            return 1.0
        if not np.isfinite(self.diameters).all():
            return float("nan")
        return float(np.median(self.diameters))

    def check_sizes(self) -> None:
        """Raise unless every spot has a finite, positive width."""
        bad = ~(np.isfinite(self.diameters) & (self.diameters > 0))
        if bad.any():
            what = "radii" if self.kind == "circle" else "areas (empty polygons)"
            raise ValueError(
                f"Shapes {self.element!r} have missing or infinite {what} for {int(bad.sum())} spot(s) "
                f"(first: {list(self.names[bad][:3])}); fix them or pass crop_diameter=."
            )

    def transformed(self, affine: np.ndarray) -> Spots:
        """The spots mapped by a ``(3, 3)`` affine: centres through it, widths by ``sqrt(|det|)``."""
        affine = np.asarray(affine, dtype=np.float64)
        centres = self.centres @ affine[:2, :2].T + affine[:2, 2]
        return replace(self, centres=centres, diameters=self.diameters * affine_scale(affine))


def spot_geometry(
    shapes: Any, key: str, positions: np.ndarray | None = None
) -> tuple[SpotKind, np.ndarray, np.ndarray]:
    """Centres ``(n, 2)``, widths ``(n,)`` and kind of the rows ``positions`` of a shapes element.

    Points need a ``"radius"`` column (circles); polygons and multipolygons are squares when all of them
    are (four corners, area ``(perimeter / 4)²``), else cell outlines. Other geometries, empty ones and
    mixes of points and polygons are refused.
    """
    import shapely

    geometry = np.asarray(shapes.geometry.to_numpy(), dtype=object)
    if positions is not None:
        geometry = geometry[positions]
    radius_key = SPATIALDATA_KEYS.RADIUS
    if not len(geometry):
        kind: SpotKind = "circle" if radius_key in shapes.columns else "polygon"
        return kind, np.zeros((0, 2)), np.zeros(0)
    types = shapely.get_type_id(geometry)
    if shapely.is_empty(geometry).any() or shapely.is_missing(geometry).any():
        raise ValueError(f"Shapes {key!r} contain empty or missing geometries; drop them first.")
    if (types == _POINT).all():
        if radius_key not in shapes.columns:
            raise ValueError(
                f"Shapes {key!r} are points without a {radius_key!r} column, so not circles. Spots must be "
                "circles (points with a radius, as for Visium) or polygons (square bins as for Visium HD, "
                "cell outlines as for Xenium)."
            )
        radius = shapes[radius_key].to_numpy(dtype=np.float64)
        radius = radius if positions is None else radius[positions]
        centres = np.column_stack([shapely.get_x(geometry), shapely.get_y(geometry)]).astype(np.float64)
        return "circle", centres, 2.0 * radius
    if not np.isin(types, (_POLYGON, _MULTIPOLYGON)).all():
        found = sorted({shapely.get_type_id(g) for g in geometry})
        raise ValueError(
            f"Shapes {key!r} mix geometry types (shapely type ids {found}); spots must all be circles "
            "(points with a radius) or all polygons."
        )
    area = shapely.area(geometry).astype(np.float64)
    centres = shapely.get_coordinates(shapely.centroid(geometry)).astype(np.float64)
    corners = shapely.get_num_coordinates(shapely.simplify(geometry, 0.0))
    perimeter = shapely.length(geometry)
    square = (
        (types == _POLYGON)
        & (corners == 5)
        & np.isclose(area, (perimeter / 4) ** 2, rtol=_SQUARE_RTOL, atol=0.0)
    )
    if square.all():
        return "square", centres, np.sqrt(area)
    return "polygon", centres, 2.0 * np.sqrt(area / np.pi)


def table_spots(
    sdata: SpatialData, table: AnnData, shapes_key: str, keys: TableKeys, table_key: str
) -> Spots:
    """The table rows annotating ``shapes_key``, in table order, with their shapes' geometry."""
    shapes = shapes_element(sdata, shapes_key, table_key)
    if shapes_key not in keys.regions:
        raise ValueError(f"Table {table_key!r} annotates {list(keys.regions)}, not shapes {shapes_key!r}.")
    rows = np.flatnonzero(row_regions(table, keys) == shapes_key)
    instances = table.obs[keys.instance_key].to_numpy()[rows]
    positions = instance_positions(shapes, instances, shapes_key, table_key, keys.instance_key)
    kind, centres, diameters = spot_geometry(shapes, shapes_key, positions)
    return Spots(shapes_key, kind, rows, table.obs_names.to_numpy()[rows], centres, diameters)


def element_spots(sdata: SpatialData, shapes_key: str) -> Spots:
    """Every row of the shapes element ``shapes_key`` (no table), rows numbered from 0."""
    shapes = shapes_element(sdata, shapes_key)
    kind, centres, diameters = spot_geometry(shapes, shapes_key)
    names = shapes.index.astype(str).to_numpy()
    return Spots(shapes_key, kind, np.arange(len(shapes)), names, centres, diameters)


def shapes_to_image(sdata: SpatialData, shapes_key: str, image_key: str) -> np.ndarray:
    """``(3, 3)`` affine from a shapes element's coordinates to pixels of an image's ``scale0``.

    A spot centre ``(x, y, 1) @ affine.T`` is then in the pixels crops are cut from. spatialdata-io's
    Visium and Visium HD readers register spots and images in several coordinate systems (the
    dataset's full-resolution one and one per downscaled image), so spatialdata's search for a path
    between the two elements finds several equally short ones and refuses to choose. Any system both
    are registered in gives the map, so the image's first one that the shapes share is used; without a
    shared system, spatialdata's transformations graph decides.
    """
    from spatialdata.transformations import get_transformation, get_transformation_between_coordinate_systems

    shapes, image = sdata.shapes[shapes_key], sdata.images[image_key]
    axes = {"input_axes": ("x", "y"), "output_axes": ("x", "y")}
    to_shapes_system = get_transformation(shapes, get_all=True)
    for system, image_to_system in get_transformation(image, get_all=True).items():
        if system in to_shapes_system:  # shapes -> system, then system -> image pixels
            return np.linalg.solve(
                image_to_system.to_affine_matrix(**axes), to_shapes_system[system].to_affine_matrix(**axes)
            ).astype(np.float64)
    try:
        transformation = get_transformation_between_coordinate_systems(sdata, shapes, image)
    except (RuntimeError, ValueError, KeyError) as err:  # spatialdata: "No path found between ..."
        raise ValueError(
            f"Image {image_key!r} (coordinate systems {list(get_transformation(image, get_all=True))}) and "
            f"shapes {shapes_key!r} (coordinate systems {list(to_shapes_system)}) share no coordinate system, "
            "so where the spots lie in the image is unknown. Register both in one with "
            "spatialdata.transformations.set_transformation, or pick the image of these spots."
        ) from err
    return np.asarray(transformation.to_affine_matrix(**axes), dtype=np.float64)


def affine_scale(affine: np.ndarray) -> float:
    """How an affine scales lengths: ``sqrt(|det|)`` of its linear part (exact for similarity maps)."""
    return float(np.sqrt(abs(np.linalg.det(np.asarray(affine, dtype=np.float64)[:2, :2]))))


def scale0(image: Any) -> Any:
    """The full-resolution level of an image element: the DataArray itself or a DataTree's ``scale0``."""
    from xarray import DataArray

    if isinstance(image, DataArray):
        return image
    from spatialdata import get_pyramid_levels

    return get_pyramid_levels(image, n=0)


def coordinate_systems(element: Any) -> list[str]:
    """Names of the coordinate systems an element is registered in."""
    from spatialdata.transformations import get_transformation

    return list(get_transformation(element, get_all=True))


def library_ids(sdata: SpatialData, shapes_keys: Sequence[str], image_key: str | None = None) -> list[str]:
    """One library (section) per shapes element: the coordinate system it is drawn in, in first-seen order.

    Readers register one element in several systems (spatialdata-io's Visium HD reader: the full
    resolution and one per downscaled image); they show the same section, so each element gives one:
    the first it shares with ``image_key``, else its first.
    """
    image_systems = coordinate_systems(sdata.images[image_key]) if image_key is not None else []
    chosen = []
    for key in shapes_keys:
        systems = coordinate_systems(sdata.shapes[key])
        shared = [cs for cs in systems if cs in image_systems]
        chosen.append((shared or systems)[0])
    return list(dict.fromkeys(chosen))


def images_in(sdata: SpatialData, coordinate_system: str) -> list[str]:
    """Image elements registered in ``coordinate_system``."""
    return [name for name, image in sdata.images.items() if coordinate_system in coordinate_systems(image)]
