from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from anndata import AnnData

from spacrd._constants import OBS_KEYS, UNS_KEYS

from ._call import threshold_from_uns
from ._docs import d
from ._utils import (
    CLASS_COLORS,
    UNLABELLED_COLOR,
    as_class_labels,
    check_obs_key,
    check_prob_key,
    finish_panel,
    new_axes,
)

if TYPE_CHECKING:
    from matplotlib.axes import Axes


@d.dedent
def score_distribution(
    adata: AnnData,
    prob_key: str = OBS_KEYS.PROB,
    labels_key: str | None = None,
    threshold: float | None = None,
    bins: int = 40,
    density: bool = True,
    *,
    uns_key: str = UNS_KEYS.PREDICTION,
    ax: Axes | None = None,
    return_ax: bool = False,
    show: bool | None = None,
    save: str | Path | None = None,
    **kwargs: Any,
) -> Axes | None:
    """Histogram of the cancer probabilities, split by ground-truth class when labels are given.

    A good detector puts the two classes at opposite ends of [0, 1] with the threshold in the gap; the
    overlap between the histograms is where the calls go wrong.

    Parameters
    ----------
    adata
        Annotated data with the probabilities in ``obs[prob_key]``.
    %(prob_key)s
    labels_key
        Column of ``obs`` with ground-truth labels, boolean (True = cancer) or categorical; one
        histogram is drawn per class, and spots with a missing label form an "unlabelled" group.
    threshold
        Where to draw the vertical threshold line. By default the threshold the model stored in
        ``uns[uns_key]["threshold"]``; no line if there is none.
    bins
        Number of equal-width bins over [0, 1], shared by all classes.
    density
        Normalise each class to unit area, so that a small class is as visible as a large one;
        otherwise plot spot counts.
    %(uns_key)s
    %(ax)s
    %(show_save)s
    **kwargs
        Passed on to :meth:`matplotlib.axes.Axes.hist` (e.g. ``histtype``, ``alpha``).

    Returns
    -------
    The axes if ``return_ax``, else `None`. Reads ``obs[prob_key]``, ``obs[labels_key]`` and
    ``uns[uns_key]``; writes nothing.

    """
    prob = check_prob_key(adata.obs, prob_key)
    ax = new_axes(ax, 1, ncols=1, panel_size=(6.5, 3.5))[0]  # room for the legend on the right
    edges = np.linspace(0.0, 1.0, bins + 1)
    kwargs.setdefault("histtype", "stepfilled")
    kwargs.setdefault("alpha", 0.5)
    kwargs.setdefault("edgecolor", "black")
    kwargs.setdefault("linewidth", 0.5)

    groups: dict[str, tuple[np.ndarray, str | None]]
    if labels_key is None:
        groups = {f"all spots (n={np.isfinite(prob).sum()})": (prob.to_numpy(), "#636363")}
    else:
        check_obs_key(adata.obs, labels_key, "ground-truth labels")
        labels = pd.Series(as_class_labels(adata.obs[labels_key], labels_key), index=adata.obs_names)
        groups = {}
        for category in labels.cat.categories:
            values = prob[labels == category].to_numpy()
            if len(values):
                groups[f"{category} (n={len(values)})"] = (values, CLASS_COLORS.get(category))
        unlabelled = prob[labels.isna()].to_numpy()
        if len(unlabelled):
            groups[f"unlabelled (n={len(unlabelled)})"] = (unlabelled, UNLABELLED_COLOR)

    for name, (values, color) in groups.items():
        values = values[np.isfinite(values)]
        ax.hist(values, bins=edges.tolist(), density=density, label=name, color=color, **kwargs)

    method = None
    if threshold is None:
        threshold, method = threshold_from_uns(adata, prob_key, uns_key)
    if threshold is not None:
        how = f" ({method})" if method else ""
        ax.axvline(
            threshold, color="black", linestyle="--", linewidth=1.2, label=f"threshold{how} = {threshold:.2f}"
        )

    ax.set_xlim(0.0, 1.0)
    ax.set_xlabel(f"{prob_key} (cancer probability)")
    ax.set_ylabel("density" if density else "spots")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small", frameon=False)
    return finish_panel(ax, return_ax=return_ax, show=show, save=save)
