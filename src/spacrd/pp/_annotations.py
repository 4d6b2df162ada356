"""Labels from a pathologist's regions: which spots, bins or cells lie in which annotated class."""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import shapely
from anndata import AnnData

from spacrd import _spatial
from spacrd._constants import CALL_CATEGORIES, CANCER, NON_CANCER, OBS_KEYS, OBSM_KEYS, UNS_KEYS

from ._annotation_spots import (
    SpotsIn,
    anndata_spots,
    annotation_affine,
    is_element,
    spatialdata_spots,
    to_system,
)

if TYPE_CHECKING:
    from geopandas import GeoDataFrame
    from spatialdata import SpatialData

logger = logging.getLogger(__name__)

#: What a class can mean: cancer, non-cancer, or nothing (its annotations are ignored).
TARGETS = (CANCER, NON_CANCER, None)
_AREA_TYPES = ("Polygon", "MultiPolygon")
_CODE = {NON_CANCER: 0, CANCER: 1}


def _check_classes(classes: Any) -> dict[str, str | None]:
    if not isinstance(classes, Mapping) or not classes:
        raise TypeError(
            "`classes` must map annotation class names to 'cancer', 'non-cancer' or None, e.g. "
            "classes={'Tumor': 'cancer', 'Stroma': 'non-cancer', 'Ignore*': None}."
        )
    bad = {k: v for k, v in classes.items() if v not in TARGETS}
    if bad:
        raise ValueError(f"`classes` values must be 'cancer', 'non-cancer' or None; got {bad}.")
    return {str(k): v for k, v in classes.items()}


def _annotation_frame(
    data: Any, annotations: Any, class_key: str, system: str | None
) -> tuple[GeoDataFrame, str]:
    """The annotations as a GeoDataFrame in the spots' coordinates, and a description of their source."""
    from geopandas import GeoDataFrame

    from spacrd.io import read_annotations

    if is_element(data, annotations):
        assert system is not None  # a SpatialData's spots name their coordinate system
        frame = data.shapes[annotations]
        affine = annotation_affine(data, annotations, system)
        frame = GeoDataFrame(
            frame.drop(columns=frame.geometry.name), geometry=to_system(frame.geometry.to_numpy(), affine)
        )
        source = f"shapes element {annotations!r}"
    elif isinstance(annotations, GeoDataFrame):
        frame, source = annotations, "GeoDataFrame"
    elif isinstance(annotations, str | os.PathLike):
        frame, source = read_annotations(annotations), str(annotations)
    else:
        raise TypeError(
            "`annotations` must be a GeoJSON path, a GeoDataFrame or the name of a SpatialData shapes element, "
            f"got {type(annotations).__name__}."
        )
    if class_key not in frame:
        raise KeyError(
            f"The annotations ({source}) have no column {class_key!r} with class names; their columns are "
            f"{list(frame.columns)}. Pass class_key= naming it."
        )
    return frame, source


def _area_geometries(frame: GeoDataFrame, names: np.ndarray, source: str) -> tuple[np.ndarray, int]:
    """Polygonal geometries of ``frame`` (invalid outlines repaired), and how many were repaired."""
    geometry = np.asarray(frame.geometry.to_numpy(), dtype=object)
    missing = shapely.is_missing(geometry) | shapely.is_empty(geometry)
    types = np.array(["" if m else g.geom_type for g, m in zip(geometry, missing, strict=True)])
    wrong = ~missing & ~np.isin(types, _AREA_TYPES)
    if wrong.any():
        found = sorted(set(zip(names[wrong], types[wrong], strict=True)))
        raise ValueError(
            f"{int(wrong.sum())} annotation(s) of {source} are not areas ({found[:5]}); labels come from Polygon "
            "and MultiPolygon outlines. Map their classes to None in `classes`, or drop them."
        )
    invalid = ~missing & ~shapely.is_valid(geometry)
    if invalid.any():  # hand-drawn outlines cross themselves; "structure" keeps what was meant to be inside
        geometry = geometry.copy()
        geometry[invalid] = shapely.make_valid(geometry[invalid], method="structure", keep_collapsed=False)
    geometry[missing] = None
    return geometry, int(invalid.sum())


def _memberships(
    spots: SpotsIn, geometry: np.ndarray, codes: np.ndarray, min_overlap: float | None
) -> np.ndarray:
    """``(n, 2)`` bool: whether each spot is in a non-cancer (column 0) and a cancer (column 1) annotation."""
    n = len(spots.centres)
    inside = np.zeros((n, 2), dtype=bool)
    if min_overlap is None:
        tree = shapely.STRtree(geometry)
        spot, polygon = tree.query(shapely.points(spots.centres), predicate="intersects")
        for code in (0, 1):
            inside[np.unique(spot[codes[polygon] == code]), code] = True
        return inside
    # Areas add up only over disjoint pieces, so each class is dissolved first; the dissolved outlines
    # are cut along a grid of a few footprints a side, so that each intersection below is with a small piece.
    footprints = spots.footprint()
    area = shapely.area(footprints)
    parts, part_codes = _pieces(geometry, codes, cell=PIECE_FOOTPRINTS * float(np.sqrt(np.median(area))))
    spot, part = shapely.STRtree(parts).query(footprints, predicate="intersects")
    whole = shapely.contains_properly(parts[part], footprints[spot])
    overlap = area[spot]
    cut = ~whole
    overlap[cut] = shapely.area(shapely.intersection(footprints[spot[cut]], parts[part[cut]]))
    for code in (0, 1):
        chosen = part_codes[part] == code
        share = np.bincount(spot[chosen], weights=overlap[chosen], minlength=n) / np.where(area > 0, area, 1)
        inside[:, code] = share >= min_overlap * (1 - 1e-9)
    return inside


#: Side of the grid cells that dissolved annotations are cut into, in footprint widths.
PIECE_FOOTPRINTS = 16


def _pieces(geometry: np.ndarray, codes: np.ndarray, cell: float) -> tuple[np.ndarray, np.ndarray]:
    """Each class's annotations dissolved and cut along a grid of ``cell``: disjoint pieces and their class."""
    parts, part_codes = [], []
    for code in (0, 1):
        if not (codes == code).any():
            continue
        dissolved = shapely.get_parts(shapely.union_all(geometry[codes == code]))
        x0, y0, x1, y1 = shapely.total_bounds(dissolved)
        xs, ys = np.arange(x0, x1 + cell, cell), np.arange(y0, y1 + cell, cell)
        gx, gy = (
            np.meshgrid(xs[:-1], ys[:-1]) if len(xs) > 1 and len(ys) > 1 else (np.array([x0]), np.array([y0]))
        )
        grid = shapely.box(gx.ravel(), gy.ravel(), gx.ravel() + cell, gy.ravel() + cell)
        piece, box = shapely.STRtree(grid).query(dissolved, predicate="intersects")
        cut = shapely.get_parts(shapely.intersection(dissolved[piece], grid[box]))
        cut = cut[(shapely.get_type_id(cut) == 3) & (shapely.area(cut) > 0)]
        parts.append(cut)
        part_codes.append(np.full(len(cut), code))
    return np.concatenate(parts), np.concatenate(part_codes)


def _existing_labels(table: AnnData, key_added: str, rows: np.ndarray) -> np.ndarray:
    """``(n_obs,)`` object: the labels in ``obs[key_added]`` that stay (those outside ``rows``).

    A bool column (true = cancer) is read as the labels it means; other values are refused rather than
    mixed with the new ones.
    """
    values = np.full(table.n_obs, np.nan, dtype=object)
    if key_added not in table.obs or len(rows) == table.n_obs:
        return values
    column = table.obs[key_added]
    known = column.notna().to_numpy()
    if pd.api.types.is_bool_dtype(column.dtype):
        flags = column.astype("boolean").fillna(False).to_numpy(dtype=bool)
        values[known] = np.where(flags, CANCER, NON_CANCER)[known]
        return values
    values[known] = column.astype(object).to_numpy()[known]
    others = {str(v) for v in values[known]} - set(CALL_CATEGORIES)
    if others:
        raise ValueError(
            f"obs[{key_added!r}] exists and holds {sorted(others)[:5]}, not only {list(CALL_CATEGORIES)}; "
            "labels_from_annotations keeps that column's other sections, so pass another key_added=."
        )
    return values


def labels_from_annotations(
    data: AnnData | SpatialData,
    annotations: str | os.PathLike | GeoDataFrame,
    *,
    classes: Mapping[str, str | None],
    key_added: str = "cancer",
    min_overlap: float | None = None,
    class_key: str = "classification",
    library_key: str | None = OBS_KEYS.SECTION,
    library_id: str | None = None,
    img_res_key: str | None = None,
    spatial_key: str = OBSM_KEYS.SPATIAL,
    table_key: str | None = None,
    coordinate_system: str | None = None,
    uns_key: str = UNS_KEYS.ANNOTATIONS,
) -> None:
    """Label spots, bins or cells cancer / non-cancer from annotated regions (QuPath GeoJSON, shapes).

    A spot gets the class of the annotations its centre lies in (boundary included) or, with
    ``min_overlap``, of those covering at least that share of its footprint. Spots in no annotation
    stay unlabelled (NA), which the model treats as unlabelled; spots in annotations of both cancer and
    non-cancer classes are NA too, and counted in the message. Holes of polygons are not inside them.
    The result can be passed to :meth:`~spacrd.model.SpaCRD.setup_anndata` as ``labels_key=key_added``.

    Parameters
    ----------
    data
        An AnnData in the squidpy/scanpy layout (spot centres in ``obsm[spatial_key]``, full-resolution
        pixels; spot diameter ``uns["spatial"][section]["scalefactors"]["spot_diameter_fullres"]``) or a
        SpatialData whose table (``table_key``) annotates shapes elements (Visium spots, Visium HD bins,
        Xenium cells).
    annotations
        A GeoJSON file as QuPath 0.4–0.6 exports it (a FeatureCollection or a list of Features; see
        :func:`spacrd.io.read_annotations`), a GeoDataFrame with a ``class_key`` column (e.g. from
        :func:`spacrd.tl.ctr_regions`), or, for a SpatialData, the name of one of its shapes elements.
        Coordinates: for an AnnData, full-resolution pixels of the section's image (the pixels QuPath
        shows when it opens that image), or pixels of ``img_res_key``'s image; for a SpatialData, those
        of ``coordinate_system`` (a shapes element is mapped there by its own transformation).
    classes
        Maps every class name found to ``"cancer"``, ``"non-cancer"`` or ``None`` (its annotations are
        ignored), e.g. ``{"Tumor": "cancer", "Stroma": "non-cancer", "Ignore*": None}``. Unclassified
        QuPath annotations have the class ``"Unclassified"``. A class found but not mapped is an error
        that lists the classes found.
    key_added
        ``obs`` column written: categorical ``["non-cancer", "cancer"]``, NA where unlabelled.
    min_overlap
        ``None``: assign by the centre. A share in ``(0, 1]``: assign by the area of the footprint (the
        spot's disc of ``spot_diameter_fullres``, a bin's square, a cell's outline) inside the class's
        annotations; spots reaching it for both classes are conflicting (NA).
    class_key
        Column of a GeoDataFrame or shapes element with the class names.
    library_key
        AnnData: ``obs`` column of each spot's section.
    library_id
        AnnData: the section the annotations were drawn on (needed when there are several). Only its
        spots are labelled; the other sections keep what ``obs[key_added]`` held (NA if it is new), so
        that each section's file can be applied in turn.
    img_res_key
        AnnData: the annotations are in pixels of ``uns["spatial"][library_id]["images"][img_res_key]``
        (e.g. ``"hires"``), not full resolution; spot centres are scaled by ``tissue_{img_res_key}_scalef``.
    spatial_key
        AnnData: ``obsm`` key of the spot centres.
    table_key
        SpatialData: the table of spots (default: the only one).
    coordinate_system
        SpatialData: the coordinate system of the annotations; default ``"global"``, or the only one the
        spots (and an annotations element) share.
    uns_key
        ``uns`` entry of the provenance.

    Returns
    -------
    ``None``. Writes, in the AnnData or the SpatialData table,

    ``obs[key_added]``
        The labels (categorical).
    ``uns[uns_key][key_added][section]``
        Provenance per section (``library_id``, or the SpatialData coordinate system): ``source``,
        ``classes`` (class to ``"cancer"``, ``"non-cancer"`` or ``"ignored"``), ``assignment``
        (``"centre"`` or ``"footprint"``), ``min_overlap`` (0 for ``"centre"``), ``coordinates``,
        ``n_annotations``, ``n_cancer``, ``n_non_cancer``, ``n_unlabelled``, ``n_conflicting`` and
        ``n_repaired`` (self-crossing outlines made valid).

    Examples
    --------
    >>> spacrd.pp.labels_from_annotations(  # doctest: +SKIP
    ...     adata, "A1.geojson", classes={"Tumor": "cancer", "Stroma": "non-cancer"}, library_id="A1"
    ... )
    >>> spacrd.model.SpaCRD.setup_anndata(adata, labels_key="cancer", batch_key="section")  # doctest: +SKIP

    """
    classes = _check_classes(classes)
    if min_overlap is not None and not (0 < float(min_overlap) <= 1):
        raise ValueError(f"min_overlap is a share of each footprint in (0, 1], got {min_overlap}.")
    if _spatial.is_spatialdata(data):
        element = str(annotations) if is_element(data, annotations) else None
        spots = spatialdata_spots(
            data, table_key=table_key, coordinate_system=coordinate_system, annotation_element=element
        )
        coordinates = f"coordinate system {spots.section!r}"
    elif isinstance(data, AnnData):
        spots = anndata_spots(
            data,
            library_key=library_key,
            library_id=library_id,
            spatial_key=spatial_key,
            img_res_key=img_res_key,
        )
        coordinates = (
            "full-resolution pixels" if img_res_key is None else f"pixels of the {img_res_key!r} image"
        )
    else:
        raise TypeError(f"`data` must be an AnnData or a SpatialData, got {type(data).__name__}.")

    frame, source = _annotation_frame(data, annotations, class_key, spots.section)
    names = (
        frame[class_key].astype(object).where(frame[class_key].notna(), "Unclassified").astype(str).to_numpy()
    )
    found = pd.Series(names).value_counts()
    unmapped = [name for name in found.index if name not in classes]
    if unmapped:
        listing = ", ".join(f"{name!r} ({n})" for name, n in found.items())
        raise ValueError(
            f"Annotation class(es) {unmapped} are not in `classes`. The annotations ({source}) hold: {listing}. "
            "Map each to 'cancer', 'non-cancer' or None (ignored)."
        )
    targets = np.array([classes[name] for name in names], dtype=object)
    used = np.array([t is not None for t in targets], dtype=bool)
    geometry, repaired = _area_geometries(frame[used], names[used], source)
    codes = np.array([_CODE[t] for t in targets[used]], dtype=np.int64)
    present = ~shapely.is_missing(geometry)
    geometry, codes = geometry[present], codes[present]
    if not len(geometry):
        raise ValueError(
            f"No annotation of {source} has a class mapped to 'cancer' or 'non-cancer' (classes found: "
            f"{list(found.index)}; `classes` maps {classes})."
        )

    inside = _memberships(spots, geometry, codes, None if min_overlap is None else float(min_overlap))
    conflicting = inside.all(axis=1)
    labels = np.full(len(spots.rows), np.nan, dtype=object)
    labels[inside[:, 1] & ~conflicting] = CANCER
    labels[inside[:, 0] & ~conflicting] = NON_CANCER
    n_cancer, n_non_cancer = int((labels == CANCER).sum()), int((labels == NON_CANCER).sum())
    if n_cancer + n_non_cancer + int(conflicting.sum()) == 0:
        bounds = np.round(shapely.total_bounds(geometry), 1).tolist()
        spot_bounds = np.round([*spots.centres.min(axis=0), *spots.centres.max(axis=0)], 1).tolist()
        raise ValueError(
            f"No spot of {spots.section!r} lies in any annotation: the annotations span {bounds} and the spot "
            f"centres {spot_bounds} (x0, y0, x1, y1, {coordinates}). Check that the annotations were drawn on "
            "this section's image at this resolution (img_res_key=, library_id=, coordinate_system=)."
        )

    table = spots.table
    values = _existing_labels(table, key_added, spots.rows)
    values[spots.rows] = labels
    table.obs[key_added] = pd.Categorical(values, categories=list(CALL_CATEGORIES))
    record = {
        "source": source,
        "classes": {name: (target if target is not None else "ignored") for name, target in classes.items()},
        "assignment": "centre" if min_overlap is None else "footprint",
        "min_overlap": 0.0 if min_overlap is None else float(min_overlap),
        "coordinates": coordinates,
        "n_annotations": len(geometry),
        "n_cancer": n_cancer,
        "n_non_cancer": n_non_cancer,
        "n_unlabelled": int(len(labels) - n_cancer - n_non_cancer),
        "n_conflicting": int(conflicting.sum()),
        "n_repaired": repaired,
    }
    provenance = {key: dict(value) for key, value in table.uns.get(uns_key, {}).items()}
    provenance.setdefault(key_added, {})[spots.section] = record
    table.uns[uns_key] = provenance
    message = (
        f"{spots.section}: {n_cancer} cancer, {n_non_cancer} non-cancer, {record['n_unlabelled']} unlabelled "
        f"spots (of which {record['n_conflicting']} in annotations of both), from {len(geometry)} annotations."
    )
    logger.info(message)
    if conflicting.any():
        warnings.warn(
            f"{int(conflicting.sum())} spot(s) lie in annotations of both cancer and non-cancer classes and are "
            f"left unlabelled ({message})",
            UserWarning,
            stacklevel=2,
        )
