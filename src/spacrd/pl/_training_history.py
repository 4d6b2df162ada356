from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
from matplotlib.ticker import MaxNLocator

from spacrd._stages import STAGES as TRAINING_STAGES

from ._docs import d
from ._utils import finish, new_axes

if TYPE_CHECKING:
    from matplotlib.axes import Axes

#: Panel title of each training stage, by the prefix of its keys in ``model.history``.
STAGES = {stage.history_prefix: stage.title for stage in TRAINING_STAGES}
SPLITS = {"train": ("train", "-"), "validation": ("validation", "--")}


def _as_series(value: Any, key: str) -> pd.Series:
    """One metric as a float series indexed by epoch, from a one-column DataFrame or a Series."""
    if isinstance(value, pd.DataFrame):
        if value.shape[1] == 0:
            return pd.Series(dtype=float)
        column = key if key in value.columns else value.columns[0]
        value = value[column]
    series = pd.Series(value) if not isinstance(value, pd.Series) else value
    return pd.to_numeric(series, errors="coerce").astype(float).dropna()


def _history(model_or_history: Any) -> Mapping[str, Any]:
    history = getattr(model_or_history, "history", model_or_history)
    if history is None:
        raise ValueError("The model has no training history; call `model.train()` first.")
    if not isinstance(history, Mapping):
        raise TypeError(
            "Expected a trained model (with `.history`) or its history, a dict of per-epoch DataFrames; "
            f"got {type(model_or_history).__name__}."
        )
    return history


@d.dedent
def training_history(
    model_or_history: Any,
    metrics: Sequence[str] = (),
    log_scale: bool = False,
    *,
    ax: Axes | Sequence[Axes] | None = None,
    return_ax: bool = False,
    show: bool | None = None,
    save: str | Path | None = None,
    **kwargs: Any,
) -> Axes | list[Axes] | None:
    """Training and validation loss of each stage, one panel per stage.

    Stage I (image–gene alignment), stage II (cross-attention fusion and VAE) and stage III (cancer
    classifier) optimise different losses on different scales, so each gets its own panel. A stage
    with no recorded epochs is left out; a missing validation curve (no validation split) is simply not
    drawn.

    Parameters
    ----------
    model_or_history
        A trained :class:`spacrd.model.SpaCRD`, or its ``history``: a dict mapping keys such as
        ``"stage1_train_loss"`` or ``"stage3_validation_loss"`` to a DataFrame indexed by epoch with a
        single column (the scvi-tools layout).
    metrics
        Other per-stage metrics to draw on a second y-axis, named without the stage prefix, e.g.
        ``["validation_auc"]`` draws ``stage3_validation_auc`` in the stage III panel.
    log_scale
        Use a logarithmic y-axis for the losses (they must then be positive).
    ax
        Axes to draw into, one per stage that has a history.
    return_ax
        Return the axes (a single :class:`~matplotlib.axes.Axes` for a single stage, else a list).
    %(show_save)s
    **kwargs
        Passed on to :meth:`matplotlib.axes.Axes.plot` for the loss curves.

    Returns
    -------
    The axes if ``return_ax``, else `None`.

    """
    history = _history(model_or_history)
    curves: dict[str, dict[str, pd.Series]] = {}
    for stage in STAGES:
        for split in SPLITS:
            # Lightning appends "_epoch" when a metric is also logged per step.
            for key in (f"{stage}_{split}_loss", f"{stage}_{split}_loss_epoch"):
                series = _as_series(history[key], key) if key in history else ()
                if len(series):
                    curves.setdefault(stage, {})[split] = series
                    break
    if not curves:
        raise ValueError(
            f"No loss curves found; expected keys like 'stage1_train_loss', got {sorted(history)[:10]}. "
            "Has the model been trained?"
        )

    axes = new_axes(ax, len(curves), ncols=3, panel_size=(4.2, 3.2))
    for stage_ax, (stage, splits) in zip(axes, curves.items(), strict=True):
        for split, series in splits.items():
            label, style = SPLITS[split]
            stage_ax.plot(series.index.to_numpy(), series.to_numpy(), style, label=f"{label} loss", **kwargs)
        if log_scale:
            stage_ax.set_yscale("log")
        extra = [
            (m, _as_series(history[f"{stage}_{m}"], f"{stage}_{m}"))
            for m in metrics
            if f"{stage}_{m}" in history
        ]
        legend_ax = stage_ax
        if extra:
            twin = stage_ax.twinx()
            colors = iter(["tab:green", "tab:red", "tab:purple", "tab:brown"])
            for name, series in extra:
                twin.plot(
                    series.index.to_numpy(), series.to_numpy(), ":", color=next(colors, None), label=name
                )
            twin.set_ylabel(", ".join(name for name, _ in extra))
            legend_ax = twin  # drawn above the loss axes, so its legend is not hidden by the curves
        handles = [h for a in dict.fromkeys([stage_ax, legend_ax]) for h in a.get_legend_handles_labels()[0]]
        legend_ax.legend(handles=handles, loc="best", fontsize="small", frameon=False)
        stage_ax.set_title(STAGES[stage])
        stage_ax.set_xlabel("epoch")
        stage_ax.set_ylabel("loss")
        if all(pd.api.types.is_integer_dtype(s.index) for s in splits.values()):
            locator = stage_ax.xaxis.get_major_locator()
            if isinstance(locator, MaxNLocator):  # the default AutoLocator is one
                locator.set_params(integer=True)
    return finish(axes[0].figure, axes, return_ax=return_ax, show=show, save=save)
