"""Called cancer regions as polygons: what a pathologist can open in QuPath or a SpatialData viewer."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import shapely
from anndata import AnnData

from spacrd import _spatial
from spacrd._constants import CANCER, OBS_KEYS, OBSM_KEYS, SCANPY_IMAGE_KEYS, UNS_KEYS
from spacrd._tiles import DEFAULT_MIN_TILES, drop_islands, microns_per_pixel, section_tiles
from spacrd._validation import check_coordinates

if TYPE_CHECKING:
    from geopandas import GeoDataFrame
    from spatialdata import SpatialData

#: Class name of the regions by default: QuPath's built-in tumour class.
DEFAULT_CLASS_NAME = "Tumor"
SECTION_COLUMN, CLASS_COLUMN, AREA_COLUMN, N_SPOTS_COLUMN = "section", "classification", "area_um2", "n_spots"


@dataclass(frozen=True)
class _Section:
    """One section's spots: name, their rows, centres ``(n, 2)``, µm per unit (NaN unknown), a width."""

    name: str
    rows: np.ndarray
    centres: np.ndarray
    um_per_unit: float
    spot_diameter: float


def member_mask(obs: pd.DataFrame, key: str, category: Any = CANCER) -> np.ndarray:
    """``(n,)`` bool: rows whose ``obs[key]`` is ``category`` (a bool column: is true; missing: false)."""
    if key not in obs:
        raise KeyError(
            f"obs has no column {key!r}; run model.predict first (it writes the call to obs['ctr']) or pass "
            f"call_key= naming a column of {list(obs.columns)[:20]}."
        )
    column = obs[key]
    if pd.api.types.is_bool_dtype(column.dtype):
        return np.asarray(column.astype("boolean").fillna(False), dtype=bool)
    values = column.astype(object)
    mask = np.asarray(values.notna() & (values.astype(str) == str(category)), dtype=bool)
    return mask


def region_of(
    centres: np.ndarray,
    members: np.ndarray,
    *,
    min_area: float | None = None,
    min_tiles: float = DEFAULT_MIN_TILES,
    um_per_unit: float = float("nan"),
    fallback_reach: float = 1.0,
    section: str = "",
) -> shapely.Geometry:
    """The region of one section's ``members`` (``(n,)`` bool) among spots at ``centres`` ``(n, 2)``.

    The union of the members' tiles (:mod:`spacrd._tiles`) without the islands smaller than
    ``min_area`` µm² (which needs ``um_per_unit``, µm per coordinate unit) or, when ``min_area`` is
    ``None``, than ``min_tiles`` median tiles. Empty when nothing is left.
    """
    tiles = section_tiles(centres, fallback_reach)
    region = tiles.region(members)
    if min_area is None:
        smallest = float(min_tiles) * tiles.median_area
    elif np.isfinite(um_per_unit):
        smallest = float(min_area) / um_per_unit**2
    else:
        raise ValueError(
            f"min_area={min_area} is in µm², but the pixel size of section {section!r} is unknown; pass "
            "microns_per_unit= (µm per coordinate unit), or min_tiles= instead of min_area."
        )
    return drop_islands(region, smallest)


def _anndata_sections(
    adata: AnnData,
    library_key: str | None,
    library_id: str | Sequence[str] | None,
    spatial_key: str,
    microns_per_unit: float | Mapping[str, float] | None,
) -> list[_Section]:
    coords = check_coordinates(adata, spatial_key)
    spatial = adata.uns.get(UNS_KEYS.SPATIAL)
    spatial = spatial if isinstance(spatial, Mapping) else {}
    if library_key is not None and library_key in adata.obs:
        labels = adata.obs[library_key]
        if labels.isna().any():
            raise ValueError(f"obs[{library_key!r}] has missing values; every spot needs a section.")
        values = labels.astype(str).to_numpy()
        names = [str(c) for c in pd.unique(values)]
    elif len(spatial) <= 1:
        only = str(next(iter(spatial))) if spatial else "section"
        values, names = np.full(adata.n_obs, only, dtype=object), [only]
    else:
        raise KeyError(
            f"obs has no column {library_key!r} and uns['spatial'] holds {len(spatial)} sections; pass "
            "library_key= naming the obs column of each spot's section."
        )
    if library_id is not None:
        wanted = [library_id] if isinstance(library_id, str) else [str(x) for x in library_id]
        unknown = [w for w in wanted if w not in names]
        if unknown:
            raise ValueError(f"library_id {unknown} not found; the sections are {names}.")
        names = wanted
    sections = []
    for name in names:
        rows = np.flatnonzero(values == name)
        entry = spatial.get(name, {})
        recorded = microns_per_pixel(entry) if isinstance(entry, Mapping) else None
        scale = _per_section(microns_per_unit, name, recorded)
        diameter = float(
            entry.get(SCANPY_IMAGE_KEYS.SCALEFACTORS, {}).get(SCANPY_IMAGE_KEYS.SPOT_DIAMETER, 1.0)
        )
        sections.append(_Section(name, rows, coords[rows], scale, diameter))
    return sections


def _per_section(value: float | Mapping[str, float] | None, name: str, recorded: float | None) -> float:
    if isinstance(value, Mapping):
        value = value.get(name)
    if value is None:
        value = recorded
    if value is None:
        return float("nan")
    value = float(value)
    if not np.isfinite(value) or value <= 0:
        raise ValueError(f"microns_per_unit of section {name!r} must be a positive number, got {value}.")
    return value


def _spatialdata_sections(
    sdata: SpatialData, table_key: str | None, microns_per_unit: float | Mapping[str, float] | None
) -> tuple[AnnData, list[_Section]]:
    table_key = _spatial.resolve_table_key(sdata, table_key)
    table = sdata.tables[table_key]
    keys = _spatial.table_keys(table, table_key)
    sections = []
    for element in keys.regions:
        spots = _spatial.table_spots(sdata, table, element, keys, table_key)
        scale = _per_section(microns_per_unit, element, None)
        sections.append(_Section(element, spots.rows, spots.centres, scale, spots.diameter))
    return table, sections


def ctr_regions(
    data: AnnData | SpatialData,
    *,
    call_key: str = OBS_KEYS.CALL,
    prob_key: str = OBS_KEYS.PROB,
    category: Any = CANCER,
    class_name: str = DEFAULT_CLASS_NAME,
    library_key: str | None = OBS_KEYS.SECTION,
    library_id: str | Sequence[str] | None = None,
    spatial_key: str = OBSM_KEYS.SPATIAL,
    min_area: float | None = None,
    min_tiles: float = DEFAULT_MIN_TILES,
    microns_per_unit: float | Mapping[str, float] | None = None,
    table_key: str | None = None,
    key_added: str | None = None,
) -> GeoDataFrame:
    """The called cancer region of each section as polygons, from the spots' tiles.

    Every spot stands for its tile: the part of the section nearer to it than to any other spot and
    within one spot spacing (the median distance between neighbouring spots) of its centre. On Visium
    HD's square bins the tiles are the bins; on the hexagonal grids of Visium and legacy ST, hexagons.
    A section's region is the union of its called spots' tiles, so its outline runs half-way between a
    called spot and its uncalled neighbours, and uncalled spots inside it leave holes. Islands smaller
    than ``min_area`` µm² (default: ``min_tiles`` tiles, so a lone called spot is dropped) are left out.
    :func:`spacrd.pl.ctr` draws the same polygons with the same defaults.

    Parameters
    ----------
    data
        An AnnData with spot centres in ``obsm[spatial_key]`` (full-resolution pixels in the
        squidpy/scanpy layout), or a SpatialData whose table (``table_key``) annotates shapes elements
        (spots, bins or cells); each of those elements is a section, in its own coordinates.
    call_key
        ``obs`` column of the call: categorical or strings (the spots whose value is ``category`` form
        the region), or bool (true ones).
    prob_key
        ``obs`` column of the cancer probability, averaged over each region's spots (NaN when absent).
    category
        Value of ``obs[call_key]`` outlined; any label column works, e.g. ``call_key="label",
        category="invasive cancer"``.
    class_name
        Class written in the ``classification`` column: QuPath's ``"Tumor"`` by default, so that
        QuPath shows the regions in its tumour colour.
    library_key
        AnnData: ``obs`` column of each spot's section. If it is absent, all spots are one section named
        after the only ``uns["spatial"]`` library.
    library_id
        AnnData: the section(s) to outline (default: all).
    spatial_key
        AnnData: ``obsm`` key of the spot centres.
    min_area
        Smallest island kept, in µm²; needs the pixel size (below). ``None``: ``min_tiles`` instead.
    min_tiles
        Smallest island kept when ``min_area`` is ``None``, in median tiles of the section. The default,
        2.5, drops a lone called spot (one tile inside the tissue, up to about two at its edge, whose
        tiles reach one spacing out) and a pair inside the tissue; 0 keeps every island.
    microns_per_unit
        µm per coordinate unit, one number or one per section. Default: AnnData reads
        ``microns_per_pixel`` from ``uns["spatial"][section]["scalefactors"]`` or ``["metadata"]``;
        SpatialData has no such record (areas are NaN unless it is given).
    table_key
        SpatialData: the table of spots (default: the only one).
    key_added
        SpatialData: also store the regions as shapes, each with the transformations of its section's
        spots element: ``sdata.shapes[key_added]`` for one section, ``f"{key_added}_{element}"`` per
        element for several (replacing earlier ones; a section without a region gets none).

    Returns
    -------
    :class:`~geopandas.GeoDataFrame`, one row per section with a region (sections without one have no
    row), in the coordinates of the spots (AnnData: those of ``obsm[spatial_key]``; SpatialData: the
    intrinsic coordinates of the spots element). Columns: ``section``, ``classification``
    (``class_name``), ``area_um2`` (NaN where the pixel size is unknown), ``n_spots`` (called spots
    whose centres lie in the kept region), ``f"mean_{prob_key}"`` and ``geometry`` (a Polygon or
    MultiPolygon, holes kept). Writes nothing into an AnnData.

    Examples
    --------
    >>> model.predict(adata)  # doctest: +SKIP
    >>> regions = spacrd.tl.ctr_regions(adata)  # doctest: +SKIP
    >>> spacrd.io.write_geojson(regions, "regions.geojson")  # doctest: +SKIP

    """
    from geopandas import GeoDataFrame

    if _spatial.is_spatialdata(data):
        table, sections = _spatialdata_sections(data, table_key, microns_per_unit)
    elif isinstance(data, AnnData):
        if key_added is not None:
            raise ValueError(
                "key_added= stores shapes in a SpatialData; an AnnData gets only the returned frame."
            )
        table = data
        sections = _anndata_sections(data, library_key, library_id, spatial_key, microns_per_unit)
    else:
        raise TypeError(f"`data` must be an AnnData or a SpatialData, got {type(data).__name__}.")
    members = member_mask(table.obs, call_key, category)
    prob = table.obs[prob_key].to_numpy(dtype=float) if prob_key in table.obs else None
    rows = []
    for section in sections:
        inside = members[section.rows]
        region = region_of(
            section.centres,
            inside,
            min_area=min_area,
            min_tiles=min_tiles,
            um_per_unit=section.um_per_unit,
            fallback_reach=section.spot_diameter,
            section=section.name,
        )
        if region.is_empty:
            continue
        counted = inside & shapely.intersects_xy(region, section.centres[:, 0], section.centres[:, 1])
        mean = (
            float(np.nanmean(prob[section.rows][counted])) if prob is not None and counted.any() else np.nan
        )
        rows.append(
            {
                SECTION_COLUMN: section.name,
                CLASS_COLUMN: class_name,
                AREA_COLUMN: float(region.area * section.um_per_unit**2),
                N_SPOTS_COLUMN: int(counted.sum()),
                f"mean_{prob_key}": mean,
                "geometry": region,
            }
        )
    columns = [SECTION_COLUMN, CLASS_COLUMN, AREA_COLUMN, N_SPOTS_COLUMN, f"mean_{prob_key}", "geometry"]
    regions = GeoDataFrame(pd.DataFrame(rows, columns=columns), geometry="geometry", crs=None)
    if key_added is not None:
        _store_shapes(data, regions, [s.name for s in sections], key_added)
    return regions


def shapes_key(key_added: str, element: str, n_sections: int) -> str:
    """Name of the shapes element holding ``element``'s regions: ``key_added``, or per element for several."""
    return key_added if n_sections == 1 else f"{key_added}_{element}"


def _store_shapes(sdata: SpatialData, regions: GeoDataFrame, elements: list[str], key_added: str) -> None:
    from spatialdata.models import ShapesModel
    from spatialdata.transformations import get_transformation

    for element in elements:
        name = shapes_key(key_added, element, len(elements))
        if name in elements:
            raise ValueError(
                f"key_added={key_added!r} would replace the spots element {name!r}; choose another name."
            )
        own = regions[regions[SECTION_COLUMN] == element].reset_index(drop=True)
        if name in sdata.shapes:
            del sdata.shapes[name]
        if not len(own):
            continue
        transformations = get_transformation(sdata.shapes[element], get_all=True)
        sdata.shapes[name] = ShapesModel.parse(own, transformations=dict(transformations))
