"""SpaCRD on SpatialData: the spots' table, with spot centres and histology embeddings from its elements.

A SpatialData table is an AnnData whose rows annotate the spot shapes (``region``, ``region_key``,
``instance_key``), so the model registers the table itself; no conversion is needed (a Visium AnnData in
the scanpy layout converts with ``spatialdata_io.experimental.from_legacy_anndata``). How rows, shapes
and images relate is resolved by :mod:`spacrd._spatial`; this module decides what the model needs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from anndata import AnnData

from spacrd import _spatial
from spacrd._constants import DEFAULT_BACKBONE, OBSM_KEYS, SPATIALDATA_KEYS
from spacrd._spatial import is_spatialdata
from spacrd.pp import image_features

if TYPE_CHECKING:
    from spatialdata import SpatialData

    from ._protocols import ModelCore
    from ._spec import InputSpec

HISTOLOGY_STATS = DEFAULT_BACKBONE


def prepare_table(
    sdata: SpatialData,
    table_key: str = SPATIALDATA_KEYS.TABLE,
    shapes_key: str | Sequence[str] | None = None,
    image_key: str | Mapping[str, str] | None = None,
    *,
    spatial_key: str = OBSM_KEYS.SPATIAL,
    histology_key: str = OBSM_KEYS.HISTOLOGY,
    backbone: str | Any = HISTOLOGY_STATS,
    **image_feature_kwargs: Any,
) -> AnnData:
    """Return ``sdata.tables[table_key]`` with the spot centres and histology embeddings SpaCRD reads.

    The table is returned itself, not a copy, so what a model writes into it (predictions, set-up
    entries) lands in ``sdata``. Its rows are matched to the spot shapes through the table's
    ``region_key`` and ``instance_key`` columns (by instance id, whatever the row order).

    Parameters
    ----------
    sdata
        SpatialData with a table annotating spot shapes, and optionally H&E image elements. Spots are
        circles (points with a ``"radius"`` column, as spatialdata-io writes Visium spots and Xenium
        ``cell_circles``), square polygons (Visium HD bins) or cell polygons (Xenium
        ``cell_boundaries``); see :mod:`spacrd._spatial`.
    table_key
        The table of spots (counts, labels).
    shapes_key
        The shapes element(s) the table's rows annotate. ``None``: every element named in the table's
        ``region_key`` column. Every row must belong to one of them.
    image_key
        H&E image element(s) under the spots: one key for all shapes elements, or a mapping
        ``{shapes_key: image_key}`` (shapes elements left out have no image). ``None``: no image.
    spatial_key
        ``obsm`` key of the spot centres.
    histology_key
        ``obsm`` key of the per-spot embeddings.
    backbone, **image_feature_kwargs
        Passed to :func:`spacrd.pp.image_features` (backbone, ``batch_size``, ``crop_diameter``...).

    Returns
    -------
    The table, with (only where absent; entries already there are kept as they are):

    ``obsm[spatial_key]``
        ``(n_obs, 2)`` float64 spot centres ``(x, y)`` (circle centres, polygon centroids): in pixels
        of the image's full-resolution level (``scale0``) for spots with an image, mapped with the
        elements' coordinate transformations; in the shapes element's own (intrinsic) coordinates for
        spots without one.
    ``obsm[histology_key]``, ``uns[histology_key]``
        Written by :func:`spacrd.pp.image_features` when ``image_key`` is given: float32 embeddings,
        NaN rows for spots without an image, and their provenance.

    Nothing else in ``sdata`` changes.

    Raises
    ------
    KeyError
        A missing table, shapes or image element.
    ValueError
        A table not annotated with ``region``/``region_key``/``instance_key`` or not annotating the
        shapes, shapes that are neither circles with radii nor polygons, table rows whose instance ids
        the shapes lack or repeat.

    """
    if not is_spatialdata(sdata):
        raise TypeError(f"Expected a SpatialData object, got {type(sdata).__name__}.")
    table = _spatial.get_table(sdata, table_key)
    keys = _spatial.table_keys(table, table_key)
    shape_keys = _shape_keys(sdata, keys, table_key, shapes_key, _spatial.row_regions(table, keys))
    images = _images(sdata, image_key, shape_keys)

    centres = None
    if spatial_key not in table.obsm:
        centres = np.full((table.n_obs, 2), np.nan, dtype=np.float64)
        for key in shape_keys:
            spots = _spatial.table_spots(sdata, table, key, keys, table_key)
            if key in images:  # into pixels of the image's scale0, as the crops are cut
                spots = spots.transformed(_spatial.shapes_to_image(sdata, key, images[key]))
            centres[spots.rows] = spots.centres

    if images and histology_key not in table.obsm:
        image_features(
            sdata,
            backbone,
            key_added=histology_key,
            image_key=list(images.values()),
            shapes_key=list(images),
            table_key=table_key,
            **image_feature_kwargs,
        )
    if centres is not None:
        table.obsm[spatial_key] = centres
    return table


def table_region_key(table: AnnData) -> str:
    """The ``obs`` column naming the shapes element of each row of a SpatialData table."""
    return _spatial.table_keys(table, "").region_key


def registered_table(model_cls: type[ModelCore], data: Any) -> Any:
    """The table of a SpatialData that ``model_cls.setup_spatialdata`` registered; other data unchanged."""
    if not is_spatialdata(data):
        return data
    registered = [
        key
        for key, table in data.tables.items()
        if model_cls._get_most_recent_anndata_manager(table, required=False) is not None
    ]
    if not registered:
        raise ValueError(
            f"No table of this SpatialData is set up for {model_cls.__name__}; call "
            f"{model_cls.__name__}.setup_spatialdata(sdata, table_key=...) first."
        )
    if len(registered) > 1:
        raise ValueError(
            f"Tables {registered} of this SpatialData are all set up for {model_cls.__name__}; pass the one "
            f"to train on, e.g. {model_cls.__name__}(sdata.tables[{registered[-1]!r}])."
        )
    return data.tables[registered[0]]


def target_table(
    spec: InputSpec,
    source: AnnData | None,
    data: Any,
    table_key: str,
    image_key: str | Mapping[str, str] | None,
) -> Any:
    """Resolve a SpatialData prediction target to its table, with the spot centres the model reads.

    Spot centres go under the set-up ``spatial_key``. Histology embeddings are computed only when asked
    for: for a model with an image branch whose table lacks the set-up embedding key, ``image_key``
    names the H&E image(s) to embed with the ``histology_stats`` backbone (embeddings of another
    backbone come from :func:`spacrd.pp.image_features` beforehand). Without it the table is predicted
    as an AnnData without embeddings is: from expression alone, with a warning. ``source`` is the
    model's registered AnnData, whose ``uns`` records the training backbone. AnnData (or ``None``) is
    returned unchanged.
    """
    if not is_spatialdata(data):
        return data
    args = spec.setup_args
    histology_key = args["image_key"] if spec.uses_images else None
    table = _spatial.get_table(data, table_key)
    if histology_key is None or histology_key in table.obsm:
        image_key = None
    if (
        image_key is not None
        and histology_key is not None  # else image_key is None: set just above
        and (backbone := _source_backbone(source, histology_key)) != HISTOLOGY_STATS
    ):
        raise ValueError(
            f"The model's histology embeddings came from backbone {backbone!r}; compute the target's with "
            f"spacrd.pp.image_features(sdata, <that backbone>, key_added={histology_key!r}, "
            f"table_key={table_key!r}, image_key=...) before predicting."
        )
    keys = {"histology_key": histology_key} if histology_key is not None else {}
    return prepare_table(data, table_key, image_key=image_key, spatial_key=args["spatial_key"], **keys)


def target_batch_key(
    setup_key: str | None, data: Any, table: AnnData | None, batch_key: str | None
) -> str | None:
    """The section column of a SpatialData target: ``batch_key``, the set-up one, else one per shapes element.

    A table annotating several shapes elements holds several sections; without a section column they
    are kept apart by the table's ``region_key``, as :meth:`SpaCRD.setup_spatialdata` and the command
    do, rather than pooled into one section. AnnData targets keep ``batch_key`` as given. ``setup_key``
    is the set-up ``batch_key``.
    """
    if batch_key is not None or table is None or not is_spatialdata(data):
        return batch_key
    if setup_key is not None and setup_key in table.obs:
        return None  # the set-up column, as for an AnnData
    return table_region_key(table)


# --------------------------------------------------------------------------------------------------
# checks
# --------------------------------------------------------------------------------------------------


def _shape_keys(
    sdata: SpatialData,
    keys: _spatial.TableKeys,
    table_key: str,
    shapes_key: str | Sequence[str] | None,
    row_regions: np.ndarray,
) -> list[str]:
    """The spots' shapes elements, checked: annotated by the table, spot geometries, every row covered."""
    regions = list(keys.regions)
    used = list(pd.unique(row_regions))
    wanted = (
        used if shapes_key is None else ([shapes_key] if isinstance(shapes_key, str) else list(shapes_key))
    )
    for key in wanted:
        _spatial.shapes_element(sdata, key, table_key)
        if key not in regions:
            raise ValueError(f"Table {table_key!r} annotates {regions}, not shapes {key!r}.")
        _spatial.element_spots(sdata, key).check_sizes()
    others = [r for r in used if r not in wanted]
    if others:
        raise ValueError(
            f"{int(np.isin(row_regions, others).sum())} rows of table {table_key!r} annotate {others}, which "
            f"shapes_key={wanted} leaves out; include them or subset the table first "
            "(spatialdata.match_table_to_element)."
        )
    return wanted


def _images(
    sdata: SpatialData, image_key: str | Mapping[str, str] | None, shape_keys: list[str]
) -> dict[str, str]:
    if image_key is None:
        return {}
    if isinstance(image_key, str):
        images = dict.fromkeys(shape_keys, image_key)
    elif isinstance(image_key, Mapping):
        unknown = [k for k in image_key if k not in shape_keys]
        if unknown:
            raise ValueError(
                f"image_key maps shapes {unknown}, which are not among the spots' shapes {shape_keys}."
            )
        images = dict(image_key)
    else:
        raise TypeError(
            f"image_key must be an image key or a mapping {{shapes_key: image_key}}, got {type(image_key).__name__}."
        )
    missing = sorted({v for v in images.values() if v not in sdata.images})
    if missing:
        raise KeyError(f"SpatialData has no image {missing[0]!r} (it has {list(sdata.images)}).")
    return images


def _source_backbone(source: AnnData | None, histology_key: str) -> str:
    """Backbone that made the training embeddings, from their provenance; histology_stats if unrecorded."""
    if source is None:
        return HISTOLOGY_STATS
    provenance = source.uns.get(histology_key)
    if isinstance(provenance, Mapping) and "backbone" in provenance:
        return str(provenance["backbone"])
    return HISTOLOGY_STATS
