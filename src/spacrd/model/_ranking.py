"""Ordering one model's probabilities by another's scores: ``SpaCRD.predict(ranking_model=...)``."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np

from spacrd._constants import MODULE_KEYS
from spacrd.tl import PostprocessResult, PostprocessSettings, quantile_match
from spacrd.tl._postprocess import label_free_logits

if TYPE_CHECKING:
    from anndata import AnnData

    from ._model import SpaCRD


def ranked_by(
    ranking_model: SpaCRD,
    target: AnnData,
    sections: np.ndarray,
    result: PostprocessResult,
    settings: PostprocessSettings,
    min_gene_overlap: float,
    batch_key: str | None,
) -> PostprocessResult:
    """``result`` with its probabilities re-assigned, per section, in the order of ``ranking_model``'s logits."""
    from ._prediction import PredictionMixin

    if not isinstance(ranking_model, PredictionMixin) or not getattr(ranking_model, "is_trained_", False):
        raise TypeError(
            f"`ranking_model` must be a trained SpaCRD, got an untrained or other object "
            f"({type(ranking_model).__name__}); train it, or load one with `SpaCRD.load`."
        )
    try:
        inputs = ranking_model._inputs(target, min_gene_overlap, batch_key)
    except (ValueError, KeyError, TypeError) as err:  # the target fits this model, not the ranking one
        text = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
        raise type(err)(f"`ranking_model` does not fit the target: {text}") from err
    if inputs.n_obs != len(sections):
        raise ValueError("`ranking_model` read a different number of spots from the target.")
    outputs = ranking_model._network_outputs(inputs)
    graph = ranking_model._expression_graph(inputs) if settings.expression_propagation else None
    logits = label_free_logits(outputs[MODULE_KEYS.LOGITS], inputs.neighbors, inputs.padding, settings, graph)
    probabilities = quantile_match(logits, result.probabilities, sections)
    # member i of the ranking model orders member i of this model's probabilities (cycling when the
    # two have different numbers of members), so the spread covers both the order and the level
    uncertainty = member_p = None
    rank_members, level_members = outputs[MODULE_KEYS.MEMBER_LOGITS], result.member_probabilities
    if level_members is None:
        level_members = result.probabilities[:, None]
    n_pairs = max(rank_members.shape[1], level_members.shape[1])
    if n_pairs > 1:
        rank_members = label_free_logits(rank_members, inputs.neighbors, inputs.padding, settings, graph)
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
