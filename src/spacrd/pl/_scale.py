"""Physical extent of the ``pl.ctr`` panels: the crop to a section's spots, and a scale bar in µm."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
from anndata import AnnData

from spacrd._constants import SCANPY_IMAGE_KEYS, UNS_KEYS
from spacrd._tiles import microns_per_pixel

if TYPE_CHECKING:
    from matplotlib.axes import Axes


def spot_extents(
    adata: AnnData, libraries: list[str], library_key: str | None, spatial_key: str
) -> list[tuple[float, float, float, float]]:
    """Per library, ``(x0, y0, x1, y1)`` in full-resolution pixels: its spots plus two spot diameters."""
    xy = np.asarray(adata.obsm[spatial_key], dtype=float)[:, :2]
    spatial = adata.uns[UNS_KEYS.SPATIAL]
    extents = []
    for lib in libraries:
        rows = np.ones(adata.n_obs, dtype=bool)
        if library_key is not None:
            rows = np.asarray(adata.obs[library_key].astype(str) == lib)
        margin = 2 * float(
            spatial[lib][SCANPY_IMAGE_KEYS.SCALEFACTORS].get(SCANPY_IMAGE_KEYS.SPOT_DIAMETER, 0.0)
        )
        lo, hi = xy[rows].min(axis=0) - margin, xy[rows].max(axis=0) + margin
        extents.append((max(lo[0], 0.0), max(lo[1], 0.0), hi[0], hi[1]))
    return extents


#: Scale bar lengths tried, in µm: the longest that fits in a fifth of the panel's width is drawn.
SCALE_BAR_UM = (10, 20, 50, 100, 200, 500, 1000, 2000, 5000)


def add_scale_bar(ax: Axes, um_per_unit: float) -> None:
    """A scale bar in the lower left of ``ax``, whose data units are ``um_per_unit`` µm each."""
    from mpl_toolkits.axes_grid1.anchored_artists import AnchoredSizeBar

    x0, x1 = ax.get_xlim()
    fitting = [um for um in SCALE_BAR_UM if um / um_per_unit <= abs(x1 - x0) / 5]
    if not fitting:
        return
    um = fitting[-1]
    label = f"{um // 1000} mm" if um >= 1000 else f"{um} µm"
    bar = AnchoredSizeBar(
        ax.transData,
        um / um_per_unit,
        label,
        "lower left",
        pad=0.5,
        color="black",
        frameon=True,
        size_vertical=0,
    )
    bar.patch.set_alpha(0.7)
    ax.add_artist(bar)


def add_scale_bars(
    panels: Sequence[Axes], library: Mapping, drawn_spot_diameter: float, spot_diameter_um: float | None
) -> None:
    """A scale bar on each of one section's ``panels``, if its pixel size is known.

    ``library`` is the section's ``uns["spatial"]`` entry and ``drawn_spot_diameter`` the spot
    diameter in the panels' data units, which fixes their scale against full-resolution pixels.
    """
    um_per_px = microns_per_pixel(library, spot_diameter_um)
    if um_per_px is None:
        return
    fullres_diameter = float(library[SCANPY_IMAGE_KEYS.SCALEFACTORS][SCANPY_IMAGE_KEYS.SPOT_DIAMETER])
    for panel in panels:
        add_scale_bar(panel, um_per_px * fullres_diameter / drawn_spot_diameter)
