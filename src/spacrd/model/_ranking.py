"""Ordering one model's probabilities by another's scores: ``SpaCRD.predict(ranking_model=...)``."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np

from spacrd.tl._adaptation import quantile_match
from spacrd.tl._postprocess import PostprocessResult, PostprocessSettings

from ._protocols import Ranker

if TYPE_CHECKING:
    from anndata import AnnData


def ranked_by(
    ranking_model: Ranker,
    target: AnnData,
    sections: np.ndarray,
    result: PostprocessResult,
    settings: PostprocessSettings,
    min_gene_overlap: float,
    batch_key: str | None,
) -> PostprocessResult:
    """``result`` with its probabilities re-assigned, per section, in the order of ``ranking_model``'s logits.

    The ranking model's label-free logits come from its public
    :meth:`~spacrd.model.SpaCRD.get_logits`, with the propagation and smoothing of ``settings``.
    """
    if not isinstance(ranking_model, Ranker) or not getattr(ranking_model, "is_trained_", False):
        raise TypeError(
            f"`ranking_model` must be a trained SpaCRD, got an untrained or other object "
            f"({type(ranking_model).__name__}); train it, or load one with `SpaCRD.load`."
        )
    try:
        logits, rank_members = ranking_model.get_logits(
            target,
            expression_propagation=settings.expression_propagation,
            spatial_smoothing=settings.spatial_smoothing,
            return_members=True,
            min_gene_overlap=min_gene_overlap,
            batch_key=batch_key,
        )
    except (ValueError, KeyError, TypeError) as err:  # the target fits this model, not the ranking one
        text = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
        raise type(err)(f"`ranking_model` does not fit the target: {text}") from err
    if len(logits) != len(sections):
        raise ValueError("`ranking_model` read a different number of spots from the target.")
    probabilities = quantile_match(logits, result.probabilities, sections)
    # member i of the ranking model orders member i of this model's probabilities (cycling when the
    # two have different numbers of members), so the spread covers both the order and the level
    uncertainty = member_p = None
    level_members = result.member_probabilities
    if level_members is None:
        level_members = result.probabilities[:, None]
    n_pairs = max(rank_members.shape[1], level_members.shape[1])
    if n_pairs > 1:
        member_p = np.stack(
            [
                quantile_match(
                    rank_members[:, i % rank_members.shape[1]],
                    level_members[:, i % level_members.shape[1]],
                    sections,
                )
                for i in range(n_pairs)
            ],
            axis=1,
        )
        uncertainty = member_p.astype(np.float64).std(axis=1).astype(np.float32)
    return replace(
        result,
        probabilities=probabilities,
        called=probabilities >= result.threshold,
        uncertainty=uncertainty,
        member_probabilities=member_p,
    )
