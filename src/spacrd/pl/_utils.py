from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from matplotlib import pyplot as plt

from spacrd._constants import CANCER, NON_CANCER

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure, SubFigure


#: Fixed colours so that "cancer" reads the same in every panel and every figure (red = cancer).
CLASS_COLORS = {NON_CANCER: "#377eb8", CANCER: "#e41a1c"}
UNLABELLED_COLOR = "#bdbdbd"


def check_prob_key(obs: pd.DataFrame, prob_key: str) -> pd.Series:
    """Return ``obs[prob_key]`` as float after checking that it holds probabilities."""
    if prob_key not in obs:
        raise KeyError(
            f"No column {prob_key!r} in `adata.obs`. Run `model.predict(adata)` first, "
            f"or pass the column that holds the cancer probabilities as `prob_key=`."
        )
    if len(obs) == 0:
        raise ValueError("The AnnData has no spots (n_obs == 0); there is nothing to plot.")
    prob = pd.to_numeric(obs[prob_key], errors="coerce").astype(float)
    finite = prob[np.isfinite(prob)]
    if len(finite) == 0:
        raise ValueError(f"`adata.obs[{prob_key!r}]` holds no finite values.")
    if finite.min() < 0 or finite.max() > 1:
        raise ValueError(
            f"`adata.obs[{prob_key!r}]` must hold probabilities in [0, 1], "
            f"found values in [{finite.min():.3g}, {finite.max():.3g}]."
        )
    return prob


def as_class_labels(values: pd.Series, key: str) -> pd.Categorical:
    """Map a boolean (or 0/1) column onto the ``["non-cancer", "cancer"]`` categories.

    Categorical and string columns are returned as categoricals unchanged, so that multi-class
    annotations (e.g. the pathologist's region names) can be shown as they are. Missing values stay
    missing.
    """
    if (
        isinstance(values.dtype, pd.CategoricalDtype)
        or values.dtype == object
        or pd.api.types.is_string_dtype(values)
    ):
        cat = pd.Categorical(values)
        # A categorical of booleans (e.g. from a CSV round-trip) is still a binary label.
        if len(cat.categories) and set(cat.categories) <= {True, False}:
            return as_class_labels(pd.Series(np.asarray(values, dtype=object)).astype("boolean"), key)
        return cat.rename_categories([str(c) for c in cat.categories])
    if pd.api.types.is_bool_dtype(values) or pd.api.types.is_numeric_dtype(values):
        observed = pd.unique(values.dropna())
        if not set(observed.tolist()) <= {0, 1}:  # True == 1 and False == 0
            raise ValueError(
                f"`adata.obs[{key!r}]` must be boolean (True = cancer) or categorical, "
                f"found numeric values {sorted(observed.tolist())[:5]}."
            )
        mapped = values.astype("boolean").map({True: CANCER, False: NON_CANCER})
        return pd.Categorical(mapped, categories=[NON_CANCER, CANCER])
    raise ValueError(f"`adata.obs[{key!r}]` must be boolean or categorical, found dtype {values.dtype}.")


def class_palette(categories: Sequence[str]) -> list[str] | None:
    """Fixed colours for the binary classes, or `None` to let the plotting library choose."""
    if set(categories) <= set(CLASS_COLORS):
        return [CLASS_COLORS[c] for c in categories]
    return None


def as_axes_list(ax: Axes | Sequence[Axes] | np.ndarray) -> list[Axes]:
    """Flatten whatever a plotting call returned into a list of axes."""
    if isinstance(ax, np.ndarray):
        return list(ax.ravel())
    if isinstance(ax, Sequence):
        return list(ax)
    return [ax]


def save_figure(fig: Figure, path: str | Path) -> Path:
    """``fig.savefig(path)`` through a temporary file renamed into place, so no half-written figure is left.

    A ``path`` without a suffix gets matplotlib's default format and its suffix, as ``savefig`` does.
    """
    import matplotlib as mpl

    from spacrd._atomic import write_atomic

    path = Path(path)
    fmt = path.suffix[1:].lower() or mpl.rcParams["savefig.format"]
    if not path.suffix:
        path = path.with_name(f"{path.name}.{fmt}")
    return write_atomic(path, lambda tmp: fig.savefig(tmp, format=fmt, bbox_inches="tight", dpi=fig.dpi))


def finish(
    fig: Figure | SubFigure,
    axes: list[Axes],
    *,
    return_ax: bool,
    show: bool | None,
    save: str | Path | None,
) -> Axes | list[Axes] | None:
    """Save, show and return as scanpy does: ``show=None`` shows unless the axes are returned."""
    if save is not None:
        save_figure(fig.figure, save)  # the whole figure, should the axes be on a subfigure
    if show is None:
        show = not return_ax
    if show:
        plt.show()
    if return_ax:
        return axes[0] if len(axes) == 1 else axes
    return None


def finish_panel(ax: Axes, *, return_ax: bool, show: bool | None, save: str | Path | None) -> Axes | None:
    """:func:`finish` for a plot of one panel: returns that panel (or ``None``)."""
    finish(ax.figure, [ax], return_ax=return_ax, show=show, save=save)
    return ax if return_ax else None


def new_axes(
    ax: Axes | Sequence[Axes] | None,
    n: int,
    ncols: int,
    panel_size: tuple[float, float],
    wspace: float | None = None,
) -> list[Axes]:
    """Use the axes given, checking there are ``n`` of them, or make a figure with ``n`` panels.

    ``wspace`` (a fraction of the panel width) leaves room for colour bars drawn outside the panels, which a
    constrained layout would not know about; without it the layout is constrained.
    """
    if ax is not None:
        axes = as_axes_list(ax)
        if len(axes) != n:
            raise ValueError(f"This figure has {n} panel(s) but {len(axes)} axes were passed as `ax`.")
        return axes
    ncols = max(1, min(ncols, n))
    nrows = int(np.ceil(n / ncols))
    figsize = (panel_size[0] * ncols, panel_size[1] * nrows)
    if wspace is None:
        _, grid = plt.subplots(nrows, ncols, figsize=figsize, squeeze=False, layout="constrained")
    else:
        _, grid = plt.subplots(
            nrows, ncols, figsize=figsize, squeeze=False, gridspec_kw={"wspace": wspace, "hspace": 0.3}
        )
    for extra in grid.ravel()[n:]:
        extra.remove()
    return list(grid.ravel()[:n])


def check_obs_key(obs: pd.DataFrame, key: str, what: str) -> None:
    """Raise a `KeyError` naming the available columns when ``key`` is not in ``obs``."""
    if key not in obs:
        available = ", ".join(map(repr, obs.columns[:20]))
        raise KeyError(f"No column {key!r} ({what}) in `adata.obs`; available columns: {available}.")


def as_list(value: Any) -> list[Any]:
    """``None`` → ``[]``, a scalar or string → ``[value]``, a sequence → a list."""
    if value is None:
        return []
    if isinstance(value, str) or not isinstance(value, Sequence | np.ndarray | pd.Index):
        return [value]
    return list(value)


def per_library(value: Any, i: int, n: int, name: str) -> Any:
    """``value[i]`` of a per-section list (checked to hold ``n`` entries), or ``value`` itself."""
    if isinstance(value, list):
        if len(value) != n:
            raise ValueError(f"`{name}` has {len(value)} entries for {n} sections.")
        return value[i]
    return value
