"""The label-free call as the plots show it: which spots, the legend entry, and the threshold behind it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from matplotlib.lines import Line2D

from spacrd._constants import CANCER, UNS_KEYS

from ._utils import check_obs_key

if TYPE_CHECKING:
    from anndata import AnnData
    from matplotlib.axes import Axes
    from matplotlib.collections import PatchCollection

_RECORD_KEYS = ("threshold", "prob_key")


def _is_record(value: Any) -> bool:
    return isinstance(value, Mapping) and "threshold" in value


def prediction_record(adata: AnnData, prob_key: str, uns_key: str = UNS_KEYS.PREDICTION) -> Mapping | None:
    """What :meth:`~spacrd.model.SpaCRD.predict` recorded about ``obs[prob_key]``, or ``None``.

    ``uns[uns_key]`` when it holds a threshold for ``prob_key`` (a record without ``"prob_key"`` is taken
    to be for it). Otherwise, as when ``predict(uns_key=...)`` wrote under another key, the one entry of
    ``uns`` with ``"threshold"`` and ``"prob_key" == prob_key``; none when several claim ``prob_key``, since
    which of them wrote the column cannot be told.
    """
    info = adata.uns.get(uns_key)
    if _is_record(info) and info.get("prob_key", prob_key) == prob_key:
        return info
    matches = [
        value
        for key, value in adata.uns.items()
        if key != uns_key
        and isinstance(value, Mapping)
        and all(k in value for k in _RECORD_KEYS)
        and value["prob_key"] == prob_key
    ]
    return matches[0] if len(matches) == 1 else None


def threshold_from_uns(
    adata: AnnData, prob_key: str, uns_key: str = UNS_KEYS.PREDICTION
) -> tuple[float | None, str | None]:
    """The threshold (and its method) that the model used to call ``obs[prob_key]``, if it recorded one."""
    info = prediction_record(adata, prob_key, uns_key)
    if info is None:
        return None, None
    return float(info["threshold"]), info.get("threshold_method")


def call_mask(obs: pd.DataFrame, call_key: str) -> np.ndarray:
    """Boolean mask of the spots called cancer in ``obs[call_key]``."""
    check_obs_key(obs, call_key, "the label-free call; pass `show_call=False` to plot without it")
    call = obs[call_key]
    if (
        isinstance(call.dtype, pd.CategoricalDtype)
        or call.dtype == object
        or pd.api.types.is_string_dtype(call)
    ):
        return np.asarray(call.astype(object) == CANCER, dtype=bool)
    if pd.api.types.is_bool_dtype(call):
        return np.asarray(call.astype("boolean").fillna(False), dtype=bool)
    raise ValueError(
        f"`adata.obs[{call_key!r}]` must be categorical with a {CANCER!r} category or boolean, "
        f"found dtype {call.dtype}."
    )


def call_label(adata: AnnData, prob_key: str, call_key: str, uns_key: str = UNS_KEYS.PREDICTION) -> str:
    """Legend text for the call outline, with the threshold when the model recorded one for these keys."""
    info = prediction_record(adata, prob_key, uns_key)
    if info is None or info.get("call_key", call_key) != call_key:
        return f"{call_key} = {CANCER}"
    method = info.get("threshold_method")
    how = f", {method}" if method else ""
    return f"{call_key} = {CANCER} ({prob_key} ≥ {float(info['threshold']):.2f}{how})"


def call_legend_handle(
    adata: AnnData,
    prob_key: str,
    call_key: str,
    color: str,
    uns_key: str = UNS_KEYS.PREDICTION,
    style: str = "spots",
) -> Line2D:
    """Legend entry for the call: a line (``style="region"``) or an open circle in ``color``, with :func:`call_label`'s text."""
    label = call_label(adata, prob_key, call_key, uns_key)
    if style == "region":
        return Line2D([], [], color=color, linewidth=1.5, label=label)
    return Line2D(
        [], [], marker="o", linestyle="none", markerfacecolor="none", markeredgecolor=color, label=label
    )


#: Artist label of the called-region outline (leading underscore: kept out of legends).
CALL_REGION_LABEL = "_call_region"


def library_region(
    adata: AnnData,
    library: str,
    library_key: str | None,
    spatial_key: str,
    called: np.ndarray,
    min_area: float | None,
    min_tiles: float,
):
    """The called region of one library, in ``obsm[spatial_key]`` units, as :func:`spacrd.tl.ctr_regions` builds it."""
    from spacrd.tl._regions import _anndata_sections, region_of

    (section,) = _anndata_sections(adata, library_key, [library], spatial_key, None)
    return region_of(
        section.centres,
        called[section.rows],
        min_area=min_area,
        min_tiles=min_tiles,
        um_per_unit=section.um_per_unit,
        fallback_reach=section.spot_diameter,
        section=library,
    )


def call_region(
    ax,
    region,
    scale: float,
    origin: np.ndarray,
    color: str,
    linewidth: float,
    label: str = CALL_REGION_LABEL,
    **style,
):
    """Draw the outline of a called region (full-resolution units) on ``ax``, at ``xy * scale - origin``.

    Each polygon is one path, its holes wound against its outside, so that the path contains a point
    exactly when the polygon does. Returns the collection (label :data:`CALL_REGION_LABEL`), or ``None``
    for an empty region.
    """
    import shapely
    from matplotlib.collections import PathCollection
    from matplotlib.path import Path

    parts = shapely.get_parts(shapely.orient_polygons(np.atleast_1d(np.asarray(region, dtype=object))))
    parts = parts[~shapely.is_empty(parts)]
    if not len(parts):
        return None
    paths = []
    for polygon in parts:
        rings = [polygon.exterior, *polygon.interiors]
        vertices = np.vstack([np.asarray(r.coords) * scale - origin for r in rings])
        codes = np.concatenate(
            [[Path.MOVETO, *[Path.LINETO] * (len(r.coords) - 2), Path.CLOSEPOLY] for r in rings]
        )
        paths.append(Path(vertices, codes))
    collection = PathCollection(
        paths,
        facecolors="none",
        edgecolors=color,
        linewidths=linewidth,
        zorder=4,
        transform=ax.transData,
        **style,
    )
    collection.set_label(label)
    ax.add_collection(collection)
    return collection


def annotation_outlines(
    ax, outlines, library: str, scale: float, origin, color: str, linewidth: float
) -> list:
    """Dashed outlines of ``outlines`` (a GeoDataFrame; its ``section`` column, if any, picks the rows of
    ``library``) on ``ax``; returns the legend entry, or nothing when no row has an area.
    """
    rows = outlines if "section" not in outlines else outlines[outlines["section"].astype(str) == library]
    drawn = call_region(
        ax,
        rows.geometry.to_numpy(),
        scale,
        origin,
        color,
        linewidth,
        label="_annotation_outline",
        linestyles="--",
    )
    if drawn is None:
        return []
    return [Line2D([], [], color=color, linewidth=linewidth, linestyle="--", label="annotations")]


def spot_rings(
    ax: Axes, centres: np.ndarray, radius: float, shape: str, color: str, linewidth: float
) -> PatchCollection:
    """A ring around each of ``centres`` (squidpy's spot ``shape``: circle, square or hex), in ``color``."""
    from matplotlib.collections import PatchCollection
    from matplotlib.patches import Circle, Patch, Rectangle, RegularPolygon

    patches: list[Patch]
    if shape == "square":
        patches = [Rectangle((x - radius, y - radius), 2 * radius, 2 * radius) for x, y in centres]
    elif shape == "hex":
        # squidpy draws a hexagon of circumradius s / (2 sin(π/6)) = s with a vertex pointing up.
        patches = [RegularPolygon((x, y), numVertices=6, radius=radius) for x, y in centres]
    else:
        patches = [Circle((x, y), radius=radius) for x, y in centres]
    outline = PatchCollection(
        patches, facecolor="none", edgecolor=color, linewidth=linewidth, zorder=3, label="_call_outline"
    )
    ax.add_collection(outline)
    return outline
