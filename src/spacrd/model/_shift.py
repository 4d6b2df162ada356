"""The shift detector: what a model was trained on, and how far a target section is from it.

:meth:`SpaCRD.train <spacrd.model.SpaCRD.train>` keeps a :class:`TrainingProfile` of its source (saved
with the model): the depth and detected genes of every training section and the distribution of the
label-free logits. :meth:`SpaCRD.predict <spacrd.model.SpaCRD.predict>` measures the same of every
target section (:func:`shift_report`), writes the numbers to ``uns["spacrd"]["shift"]`` and warns, with
the numbers, when a section lies outside the training range or when its call is all or nothing.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ._inputs import SpotInputs

#: A section whose median counts or detected genes per spot lie below ``DEPTH_RATIO`` times the lowest
#: training section's (or above ``1 / DEPTH_RATIO`` times the highest) is outside the training range.
DEPTH_RATIO = 0.5
#: Fewer of the model's genes in the target than this share: the gene panel differs from the training's.
MIN_GENE_OVERLAP = 0.9
#: The training logits' quantiles kept in the profile; scores outside the outer two are "outside".
SCORE_QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)
#: More than this share of a section's logits outside the training's 1–99 % range: scores have moved.
MAX_OUTSIDE_SCORES = 0.25
#: A call of at least ``1 - EXTREME_SHARE`` or at most ``EXTREME_SHARE`` cancer in a section is suspect.
EXTREME_SHARE = 0.05


@dataclass(frozen=True)
class TrainingProfile:
    """Summary of the training spots that predictions are compared against.

    Attributes
    ----------
    median_counts
        Per training section, the median total counts per spot over the model's gene universe.
    median_genes
        Per training section, the median number of the model's feature genes detected (count > 0) per spot.
    score_quantiles
        The label-free logits (after propagation and smoothing, before calibration) of all training
        spots at :data:`SCORE_QUANTILES`.

    """

    median_counts: dict[str, float] = field(default_factory=dict)
    median_genes: dict[str, float] = field(default_factory=dict)
    score_quantiles: tuple[float, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "score_quantiles": list(self.score_quantiles)}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None) -> TrainingProfile | None:
        """The profile saved by :meth:`to_dict`; ``None`` for models saved without one."""
        if values is None:
            return None
        try:
            counts = {str(k): float(v) for k, v in values["median_counts"].items()}
            genes = {str(k): float(v) for k, v in values["median_genes"].items()}
            quantiles = tuple(float(q) for q in values["score_quantiles"])
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise ValueError(
                f"The model's training profile is damaged ({type(err).__name__}: {err}); train the model again."
            ) from err
        if quantiles and len(quantiles) != len(SCORE_QUANTILES):
            raise ValueError(
                f"The model's training profile has {len(quantiles)} score quantiles, expected "
                f"{len(SCORE_QUANTILES)}; train the model again."
            )
        return cls(counts, genes, quantiles)


def section_depths(inputs: SpotInputs) -> tuple[dict[str, float], dict[str, float]]:
    """Per section of ``inputs``: median counts per spot and median detected feature genes per spot."""
    library = inputs.library if inputs.library is not None else np.full(inputs.n_obs, np.nan)
    return depth_by_section(library, np.diff(inputs.features.indptr), inputs.sections)


def depth_by_section(
    library: np.ndarray, detected: np.ndarray, sections: np.ndarray
) -> tuple[dict[str, float], dict[str, float]]:
    """Per section, the median of ``library`` ``(n,)`` (counts per spot) and of ``detected`` ``(n,)`` (genes)."""
    sections = np.asarray(sections).astype(str)
    counts, genes = {}, {}
    for name in map(str, dict.fromkeys(sections)):
        rows = sections == name
        counts[name] = float(np.median(library[rows]))
        genes[name] = float(np.median(detected[rows]))
    return counts, genes


def training_profile(inputs: SpotInputs, logits: np.ndarray) -> TrainingProfile:
    """The profile of the training spots ``inputs`` with their label-free logits ``(n,)``."""
    counts, genes = section_depths(inputs)
    quantiles = tuple(float(q) for q in np.quantile(np.asarray(logits, dtype=np.float64), SCORE_QUANTILES))
    return TrainingProfile(counts, genes, quantiles)


def _outside(value: float, low: float, high: float) -> float | None:
    """Ratio to the nearest training bound when ``value`` is outside ``[DEPTH_RATIO·low, high / DEPTH_RATIO]``."""
    if not np.isfinite(value):
        return None
    if value < DEPTH_RATIO * low:
        return value / low if low > 0 else None
    if value > high / DEPTH_RATIO:
        return value / high
    return None


def unlike_training(
    profile: TrainingProfile | None, counts: dict[str, float], genes: dict[str, float], gene_overlap: float
) -> set[str]:
    """Target sections outside the training range.

    ``counts`` and ``genes`` are the target's per-section medians (:func:`section_depths`). A section
    is unlike the training sections when either median lies outside ``[DEPTH_RATIO · lowest, highest /
    DEPTH_RATIO]`` of the training sections'; every section is, for a target with under
    :data:`MIN_GENE_OVERLAP` of the model's genes or a model without a profile.
    """
    if profile is None or not profile.median_counts or gene_overlap < MIN_GENE_OVERLAP:
        return set(counts)
    unlike = set()
    for name in counts:
        for key, value in (("median_counts", counts[name]), ("median_genes", genes[name])):
            train = np.array(list(getattr(profile, key).values()))
            if _outside(value, train.min(), train.max()) is not None:
                unlike.add(name)
    return unlike


def shift_report(
    profile: TrainingProfile | None,
    inputs: SpotInputs,
    logits: np.ndarray,
    called: np.ndarray,
    gene_overlap: float,
    two_populations: Mapping[str, bool] | None = None,
) -> dict[str, Any]:
    """Compare every target section with the training profile.

    Parameters
    ----------
    profile
        The model's :class:`TrainingProfile`; ``None`` (a model saved by an older spacrd): only the call
        shares are checked.
    inputs
        The target's inputs (sections, depth, detected genes).
    logits
        ``(n,)`` the target's label-free logits (same steps as the profile's).
    called
        ``(n,)`` bool, the call.
    gene_overlap
        Share of the model's genes present in the target.
    two_populations
        Per section with a mixture level, whether its scores form two populations
        (of the section's mixture level); ``False`` warns that the level is uncertain.

    Returns
    -------
    ``{"gene_overlap", "training": {...}, "sections": {name: {...}}, "warnings": [str, ...]}``, with per
    section ``median_counts``, ``median_genes``, ``outside_scores`` (share of logits outside the training's
    1–99 % range) and ``called_share``; plain floats, lists and strings (writable to ``.h5ad``).

    """
    counts, genes = section_depths(inputs)
    logits = np.asarray(logits, dtype=np.float64)
    messages: list[str] = []
    if gene_overlap < MIN_GENE_OVERLAP:
        messages.append(
            f"only {gene_overlap:.0%} of the model's genes are in the target (a different gene panel): "
            "train on the panel's genes (`genes=` at set-up) for a reliable model"
        )
    sections: dict[str, dict[str, float]] = {}
    for code, name in enumerate(inputs.section_names):
        rows = inputs.codes == code
        if not rows.any():
            continue
        share = float(np.mean(called[rows]))
        entry = {"median_counts": counts[name], "median_genes": genes[name], "called_share": share}
        if profile is not None and profile.median_counts:
            for key, what in (("median_counts", "counts"), ("median_genes", "detected genes")):
                train = np.array(list(getattr(profile, key).values()))
                ratio = _outside(entry[key], train.min(), train.max())
                if ratio is not None:
                    messages.append(
                        f"section {name!r}: median {entry[key]:,.0f} {what} per spot, {ratio:.2g}× the "
                        f"nearest training section (training {train.min():,.0f}–{train.max():,.0f})"
                    )
        if profile is not None and profile.score_quantiles:
            low, high = profile.score_quantiles[0], profile.score_quantiles[-1]
            outside = float(np.mean((logits[rows] < low) | (logits[rows] > high)))
            entry["outside_scores"] = outside
            if outside > MAX_OUTSIDE_SCORES:
                messages.append(
                    f"section {name!r}: {outside:.0%} of its scores lie outside the training spots' 1–99 % "
                    f"range ({low:.2f} to {high:.2f})"
                )
        if (two_populations or {}).get(name) is False:
            messages.append(
                f"section {name!r}: its scores do not separate into two populations, so the level of its "
                "call is uncertain (see uns['spacrd']['cancer_share_interval'])"
            )
        if share >= 1 - EXTREME_SHARE or share <= EXTREME_SHARE:
            messages.append(
                f"section {name!r}: {share:.0%} of its spots are called cancer; a call of (almost) all or "
                "nothing often means the section is unlike the training data, so check it on the tissue"
            )
        sections[name] = entry
    training = {} if profile is None else profile.to_dict()
    return {
        "gene_overlap": float(gene_overlap),
        "training": training,
        "sections": sections,
        "warnings": messages,
    }


def warn_shift(report: Mapping[str, Any], stacklevel: int = 3) -> None:
    """One warning listing every message of :func:`shift_report`, when there is any."""
    messages = report["warnings"]
    if messages:
        warnings.warn(
            "The target differs from the training data; the probabilities' level (and the call) may not "
            "transfer: " + "; ".join(messages) + ". The numbers are in uns['spacrd']['shift'].",
            UserWarning,
            stacklevel=stacklevel,
        )
