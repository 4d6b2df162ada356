from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from anndata import AnnData

from spacrd._constants import OBS_KEYS
from spacrd._validation import check_number

from ._docs import d
from ._utils import as_class_labels, check_obs_key, check_prob_key, finish_panel, new_axes

if TYPE_CHECKING:
    from matplotlib.axes import Axes


def reliability(prob: np.ndarray, truth: np.ndarray, n_bins: int = 10) -> pd.DataFrame:
    """Per probability bin: spots, mean probability and share of cancer spots; and the ECE.

    Parameters
    ----------
    prob
        ``(n,)`` cancer probabilities in ``[0, 1]``.
    truth
        ``(n,)`` bool, true for cancer spots.
    n_bins
        Equal-width bins over ``[0, 1]``.

    Returns
    -------
    One row per non-empty bin: ``lower``, ``upper``, ``spots``, ``mean_probability``, ``cancer_share``.
    ``attrs["ece"]`` is the expected calibration error, the spot-weighted mean of
    ``|cancer_share - mean_probability|``.

    """
    prob = np.clip(np.asarray(prob, dtype=float), 0.0, 1.0)
    truth = np.asarray(truth, dtype=bool)
    index = np.minimum((prob * n_bins).astype(int), n_bins - 1)
    rows = []
    for b in np.unique(index):
        inside = index == b
        rows.append(
            {
                "lower": b / n_bins,
                "upper": (b + 1) / n_bins,
                "spots": int(inside.sum()),
                "mean_probability": float(prob[inside].mean()),
                "cancer_share": float(truth[inside].mean()),
            }
        )
    table = pd.DataFrame(rows)
    gap = (table["cancer_share"] - table["mean_probability"]).abs()
    table.attrs["ece"] = float((gap * table["spots"]).sum() / table["spots"].sum())
    return table


@d.dedent
def calibration(
    adata: AnnData,
    labels_key: str,
    prob_key: str = OBS_KEYS.PROB,
    n_bins: int = 10,
    library_key: str | None = None,
    *,
    ax: Axes | None = None,
    return_ax: bool = False,
    show: bool | None = None,
    save: str | Path | None = None,
    **kwargs: Any,
) -> Axes | None:
    """Reliability diagram: how often spots given probability ``p`` are cancer, against ``p``.

    Spots are binned by their probability; each bin is drawn at its mean probability (x) and its share
    of cancer spots (y). Calibrated probabilities lie on the diagonal: of the spots given 0.8, four in
    five are cancer. Points below it are over-confident for cancer, above it under-confident. The
    legend gives the expected calibration error (ECE) and the bars at the bottom the number of spots
    per bin.

    Parameters
    ----------
    adata
        Annotated data with probabilities in ``obs[prob_key]`` and ground truth in ``obs[labels_key]``.
    labels_key
        Column of ``obs`` with the ground-truth labels: boolean (True = cancer) or the categories
        ``"cancer"`` / ``"non-cancer"``; spots with a missing label are left out.
    %(prob_key)s
    n_bins
        Equal-width probability bins.
    library_key
        Column of ``obs`` with sections: one curve per section (default: one curve for all spots).
    %(ax)s
    %(show_save)s
    **kwargs
        Passed on to :meth:`matplotlib.axes.Axes.plot` for the curves.

    Returns
    -------
    The axes if ``return_ax``, else `None`. Reads ``obs[prob_key]``, ``obs[labels_key]`` and
    ``obs[library_key]``; writes nothing.

    """
    check_number("n_bins", n_bins, integer=True, low=2, high=100)
    prob = check_prob_key(adata.obs, prob_key)
    check_obs_key(adata.obs, labels_key, "ground-truth labels")
    labels = pd.Series(as_class_labels(adata.obs[labels_key], labels_key), index=adata.obs_names)
    if not set(labels.cat.categories) <= {"cancer", "non-cancer"}:
        raise ValueError(
            f"`adata.obs[{labels_key!r}]` must be boolean or the categories 'cancer'/'non-cancer' for a "
            f"reliability diagram, found {list(labels.cat.categories)}."
        )
    groups: dict[str, np.ndarray] = {"all spots": np.ones(adata.n_obs, dtype=bool)}
    if library_key is not None:
        check_obs_key(adata.obs, library_key, "sections")
        sections = adata.obs[library_key].astype(str)
        groups = {str(s): (sections == s).to_numpy() for s in pd.unique(sections)}
    ax = new_axes(ax, 1, ncols=1, panel_size=(5.0, 5.0))[0]
    ax.plot([0, 1], [0, 1], ":", color="grey", linewidth=1, label="calibrated")
    counts_ax = ax.inset_axes((0.0, 0.0, 1.0, 0.18), sharex=ax)
    known = labels.notna().to_numpy() & np.isfinite(prob.to_numpy())
    for name, rows in groups.items():
        use = rows & known
        if not use.any():
            continue
        table = reliability(prob.to_numpy()[use], (labels[use] == "cancer").to_numpy(), n_bins)
        line = ax.plot(
            table["mean_probability"],
            table["cancer_share"],
            "o-",
            label=f"{name}: ECE {table.attrs['ece']:.3f} ({use.sum()} spots)",
            **kwargs,
        )[0]
        width = 1.0 / n_bins / max(1, len(groups))
        offset = list(groups).index(name) * width
        counts_ax.bar(
            table["lower"] + offset,
            table["spots"],
            width=width,
            align="edge",
            color=line.get_color(),
            alpha=0.5,
        )
    counts_ax.set_yticks([])
    counts_ax.patch.set_alpha(0.0)
    counts_ax.tick_params(labelbottom=False)
    for side in ("top", "right", "left"):
        counts_ax.spines[side].set_visible(False)
    ax.set_xlim(0, 1)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel(f"{prob_key} (predicted cancer probability)")
    ax.set_ylabel(f"share of cancer spots ({labels_key})")
    ax.set_title("Reliability of the cancer probability")
    ax.legend(loc="upper left", fontsize="small", frameon=False)
    return finish_panel(ax, return_ax=return_ax, show=show, save=save)
