"""Where the spots are in the annotations' coordinates: centres and footprints, AnnData or SpatialData.

AnnData (squidpy layout): ``obsm["spatial"]`` in full-resolution pixels, one section chosen; a footprint
is the disc of ``spot_diameter_fullres``. SpatialData: each shapes element the table annotates is mapped
into one coordinate system by its own transformation; a footprint is the circle, bin square or cell
polygon itself, mapped the same way (so a rotation or shear of the bins is honoured).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import shapely
from anndata import AnnData

from spacrd import _spatial
from spacrd._constants import SCANPY_IMAGE_KEYS, SPATIALDATA_KEYS, UNS_KEYS
from spacrd._validation import check_coordinates

if TYPE_CHECKING:
    from spatialdata import SpatialData

#: Segments per quarter circle of spot discs.
DISC_QUAD_SEGS = 8
_XY = {"input_axes": ("x", "y"), "output_axes": ("x", "y")}


@dataclass
class SpotsIn:
    """Spots in the annotations' coordinates.

    Attributes
    ----------
    table
        The AnnData whose ``obs`` gets the labels (the AnnData itself or the SpatialData table).
    rows
        ``(n,)`` int rows of ``table`` these spots are; other rows are not touched.
    centres
        ``(n, 2)`` float64 ``(x, y)`` in the annotations' coordinates.
    footprint
        Builds the ``(n,)`` footprints (shapely geometries) in those coordinates, when asked for.
    section
        What the coordinates are: the AnnData section, or the SpatialData coordinate system.

    """

    table: AnnData
    rows: np.ndarray
    centres: np.ndarray
    footprint: Any
    section: str


def anndata_spots(
    adata: AnnData,
    *,
    library_key: str | None,
    library_id: str | None,
    spatial_key: str,
    img_res_key: str | None,
) -> SpotsIn:
    """The spots of one section of an AnnData, in full-resolution pixels (or those of ``img_res_key``)."""
    coords = check_coordinates(adata, spatial_key)
    spatial = adata.uns.get(UNS_KEYS.SPATIAL)
    spatial = spatial if isinstance(spatial, Mapping) else {}
    if library_key is not None and library_key in adata.obs:
        sections = adata.obs[library_key].astype(str).to_numpy()
        names = list(dict.fromkeys(sections[adata.obs[library_key].notna().to_numpy()]))
    else:
        only = library_id if library_id is not None else (next(iter(spatial)) if len(spatial) == 1 else "")
        sections, names = np.full(adata.n_obs, str(only), dtype=object), [str(only)]
    if library_id is None:
        if len(names) != 1:
            raise ValueError(
                f"The spots belong to {len(names)} sections ({names[:10]}) and annotations are drawn on one "
                "section's image: pass library_id= naming the section the annotations belong to (call once "
                "per section; the labels of other sections are kept)."
            )
        library_id = names[0]
    elif str(library_id) not in names:
        raise ValueError(
            f"library_id {library_id!r} is not a section of obs[{library_key!r}]; sections: {names}."
        )
    library_id = str(library_id)
    rows = np.flatnonzero(sections == library_id)
    entry = spatial.get(library_id, {})
    scalefactors = entry.get(SCANPY_IMAGE_KEYS.SCALEFACTORS, {}) if isinstance(entry, Mapping) else {}
    scale = 1.0
    if img_res_key is not None:
        factor = f"tissue_{img_res_key}_scalef"
        if factor not in scalefactors:
            raise KeyError(
                f"img_res_key={img_res_key!r} needs adata.uns['spatial'][{library_id!r}]['scalefactors']"
                f"[{factor!r}] to map spot centres to that image's pixels; it has {sorted(scalefactors)}."
            )
        scale = float(scalefactors[factor])
    centres = coords[rows] * scale
    diameter = scalefactors.get(SCANPY_IMAGE_KEYS.SPOT_DIAMETER)

    def footprint() -> np.ndarray:
        if diameter is None:
            raise KeyError(
                f"min_overlap= needs the spot diameter, adata.uns['spatial'][{library_id!r}]['scalefactors']"
                f"[{SCANPY_IMAGE_KEYS.SPOT_DIAMETER!r}] (full-resolution pixels); it is missing."
            )
        return discs(centres, float(diameter) * scale / 2)

    return SpotsIn(adata, rows, centres, footprint, library_id)


def discs(centres: np.ndarray, radius: float | np.ndarray) -> np.ndarray:
    """``(n,)`` Polygons: discs of ``radius`` around ``centres`` ``(n, 2)``, one template ring moved to each.

    The same polygon as :func:`shapely.buffer` of a point, built from coordinates in one call (buffering
    a million points one by one takes ten times longer).
    """
    ring = shapely.get_coordinates(shapely.buffer(shapely.Point(0, 0), 1.0, quad_segs=DISC_QUAD_SEGS))
    radius = np.broadcast_to(np.asarray(radius, dtype=np.float64), (len(centres),))
    return shapely.polygons(centres[:, None, :] + ring[None] * radius[:, None, None])


def _affine(element: Any, system: str, name: str) -> np.ndarray:
    from spatialdata.transformations import get_transformation

    transformations = get_transformation(element, get_all=True)
    if system not in transformations:
        raise ValueError(
            f"{name} is not registered in coordinate system {system!r} (it is in {sorted(transformations)}); "
            "pass coordinate_system= naming one the spots and the annotations share."
        )
    return np.asarray(transformations[system].to_affine_matrix(**_XY), dtype=np.float64)


def to_system(geometries: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """``(n,)`` geometries mapped by a ``(3, 3)`` affine, with :func:`shapely.transform` (vectorised)."""
    if np.allclose(affine, np.eye(3)):
        return geometries
    linear, shift = affine[:2, :2].T, affine[:2, 2]
    return shapely.transform(geometries, lambda xy: xy @ linear + shift)


def choose_system(candidates: list[set[str]], requested: str | None) -> str:
    """``requested``, or the coordinate system all ``candidates`` share (``"global"`` when it is one)."""
    shared = set.intersection(*candidates) if candidates else set()
    if requested is not None:
        if requested not in shared:
            raise ValueError(
                f"coordinate_system={requested!r} is not one the spots (and annotations) share: {sorted(shared)}."
            )
        return requested
    if "global" in shared:
        return "global"
    if len(shared) == 1:
        return next(iter(shared))
    raise ValueError(
        f"The spots (and annotations) share coordinate systems {sorted(shared)}; pass coordinate_system= "
        "naming the one the annotations' coordinates are in."
    )


def spatialdata_spots(
    sdata: SpatialData,
    *,
    table_key: str | None,
    coordinate_system: str | None,
    annotation_element: str | None,
) -> SpotsIn:
    """Every row of the table, its spots mapped into one coordinate system of the annotations."""
    table_key = _spatial.resolve_table_key(sdata, table_key)
    table = sdata.tables[table_key]
    keys = _spatial.table_keys(table, table_key)
    systems = [
        set(_spatial.coordinate_systems(_spatial.shapes_element(sdata, r, table_key))) for r in keys.regions
    ]
    if annotation_element is not None:
        systems.append(set(_spatial.coordinate_systems(sdata.shapes[annotation_element])))
    system = choose_system(systems, coordinate_system)
    rows, centres, parts = [], [], []
    for element in keys.regions:
        spots = _spatial.table_spots(sdata, table, element, keys, table_key)
        affine = _affine(sdata.shapes[element], system, f"Spots element {element!r}")
        rows.append(spots.rows)
        centres.append(spots.transformed(affine).centres)
        parts.append((element, spots, affine))

    def footprint() -> np.ndarray:
        out = []
        for element, spots, affine in parts:
            shapes = sdata.shapes[element]
            positions = shapes.index.get_indexer(table.obs[keys.instance_key].to_numpy()[spots.rows])
            geometry = np.asarray(shapes.geometry.to_numpy(), dtype=object)[positions]
            if spots.kind == "circle":
                radius = shapes[SPATIALDATA_KEYS.RADIUS].to_numpy(dtype=np.float64)[positions]
                geometry = discs(shapely.get_coordinates(geometry), radius)
            out.append(to_system(geometry, affine))
        return np.concatenate(out) if out else np.zeros(0, dtype=object)

    return SpotsIn(table, np.concatenate(rows), np.vstack(centres), footprint, system)


def annotation_affine(sdata: SpatialData, element: str, system: str) -> np.ndarray:
    """``(3, 3)`` affine from a shapes element of annotations to ``system``."""
    return _affine(sdata.shapes[element], system, f"Annotations element {element!r}")


def is_element(data: Any, annotations: Any) -> bool:
    """Whether ``annotations`` names a shapes element of ``data`` (a SpatialData)."""
    return isinstance(annotations, str) and _spatial.is_spatialdata(data) and annotations in data.shapes
