"""Label-free adaptation of scores to a target section: its expression structure and its cancer share."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import sparse
from scipy.stats import rankdata
from sklearn.decomposition import PCA

from spacrd.pp._neighbors import section_neighbors

from ._neighbors import neighbor_mean_operator

#: Sections with more spots fit their principal axes on this many randomly drawn spots (and project
#: all of them): the axes of 10 components are estimated as well from 50,000 spots as from millions.
MAX_PCA_FIT_SPOTS = 50_000


def section_pca(
    features: np.ndarray | sparse.spmatrix,
    codes: np.ndarray,
    n_comps: int,
    *,
    column_weights: np.ndarray | None = None,
    random_state: int = 0,
) -> np.ndarray:
    """Principal components of ``features`` computed separately within each section.

    Parameters
    ----------
    features
        ``(n, d)`` dense or sparse. Sparse input is never densified: PCA centres it implicitly
        (scikit-learn's ARPACK solver), so the cost follows its stored entries.
    codes
        ``(n,)`` integer section code per spot.
    n_comps
        Components per section (fewer if the section has fewer spots or features).
    column_weights
        ``(n_sections, d)`` factors applied to the columns of each section's rows first, e.g. the
        inverse spread of a per-section z-score (a per-column shift is irrelevant: PCA centres).
    random_state
        Seed of the solver's start vector and of the spots drawn to fit large sections.

    Returns
    -------
    ``(n, n_comps)`` float32 embedding, zero-padded where a section has fewer components.

    """
    n, d = features.shape
    embedding = np.zeros((n, n_comps), dtype=np.float32)
    rng = np.random.default_rng(random_state)
    for code in np.unique(codes):
        rows = np.flatnonzero(codes == code)
        block = features[rows]
        if column_weights is not None:
            weights = np.asarray(column_weights[code], dtype=np.float32)
            block = block * weights if isinstance(block, np.ndarray) else block.multiply(weights).tocsr()
        fit = rows.size if rows.size <= MAX_PCA_FIT_SPOTS else MAX_PCA_FIT_SPOTS
        comps = min(n_comps, fit - 1, d)
        if comps < 1 or _constant_columns(block):
            continue  # nothing varies (e.g. none of the model's genes): no components, the embedding stays 0
        # ARPACK (exact, sparse-aware) needs fewer components than min(spots, features); else full SVD
        solver = "arpack" if comps < min(fit, d) else "full"
        if solver == "full" and not isinstance(block, np.ndarray):
            block = block.toarray()  # at most `n_comps` spots or features: small
        pca = PCA(comps, svd_solver=solver, random_state=random_state)
        if fit == rows.size:
            embedding[rows, :comps] = pca.fit_transform(block)
        else:
            pca.fit(block[np.sort(rng.choice(rows.size, fit, replace=False))])
            embedding[rows, :comps] = pca.transform(block)
    return embedding


def _constant_columns(block) -> bool:
    """Whether every column of ``block`` is constant, which leaves PCA (ARPACK) without a starting vector."""
    lo, hi = block.min(axis=0), block.max(axis=0)
    lo, hi = (m.toarray() if sparse.issparse(m) else np.asarray(m) for m in (lo, hi))
    return not (hi > lo).any()


def expression_neighbors(
    features: np.ndarray | sparse.spmatrix,
    sections: np.ndarray | pd.Series | None,
    n_neighbors: int = 10,
    n_comps: int = 10,
    random_state: int = 0,
    *,
    column_weights: np.ndarray | None = None,
) -> np.ndarray:
    """Each spot's nearest spots in expression space, within its own section, the spot itself first.

    Distances are Euclidean on the first ``n_comps`` principal components of ``features``, computed
    per section (``section_pca``), so that the graph follows the section's own transcriptional
    structure (tumour clones, stroma, immune infiltrates) rather than differences between sections.
    The search is exact up to 50,000 spots per section and an inverted-file index above
    (:func:`spacrd.pp.section_neighbors`), so the cost stays near-linear in spots.

    Parameters
    ----------
    features
        ``(n, d)`` preprocessed expression, dense or sparse, e.g. log-normalised counts standardised per
        section (or, sparse, the log-normalised counts with the standardisation's ``column_weights``).
    sections
        ``(n,)`` section label per spot; ``None`` treats all spots as one section.
    n_neighbors
        Neighbourhood size ``k`` including the spot itself.
    n_comps
        Principal components per section (fewer if the section has fewer spots or features).
    random_state
        Seed of the PCA solver and of the approximate search.
    column_weights
        ``(n_sections, d)`` per-section column factors, in the order of first appearance of
        ``sections``; see ``section_pca``.

    Returns
    -------
    ``(n, k)`` int64 row indices into ``features``; a section of fewer than ``k`` spots repeats the
    spot itself in its missing slots.

    """
    n = features.shape[0]
    codes = np.zeros(n, dtype=np.int64) if sections is None else pd.factorize(np.asarray(sections))[0]
    if (codes < 0).any():
        raise ValueError(
            f"`sections` has missing values ({int((codes < 0).sum())} spots); every spot needs one."
        )
    if not sparse.issparse(features):
        features = np.asarray(features, dtype=np.float32)
    embedding = section_pca(
        features, codes, n_comps, column_weights=column_weights, random_state=random_state
    )
    indices, _ = section_neighbors(embedding, codes, n_neighbors, random_state=random_state)
    return indices


def propagate_over_neighbors(
    values: np.ndarray, indices: np.ndarray, alpha: float = 0.5, n_iter: int = 20
) -> np.ndarray:
    """Label propagation of per-spot scores over a neighbour graph.

    Iterates ``v <- (1 - alpha) * values + alpha * mean(v[indices], axis=1)`` (Zhou et al., 2004,
    with a row-normalised kNN graph), so that spots alike in expression pull their scores together
    while every spot stays anchored to its own score.

    Parameters
    ----------
    values
        ``(n,)`` scores, e.g. logits, or ``(n, m)``: ``m`` score columns propagated in one pass.
    indices
        ``(n, k)`` neighbour indices, e.g. from ``expression_neighbors``.
    alpha
        Weight of the neighbours, in ``[0, 1)``; ``0`` returns ``values`` unchanged.
    n_iter
        Iterations; the error after ``t`` of them shrinks as ``alpha ** t``.

    Returns
    -------
    Propagated scores of the shape and dtype of ``values``.

    """
    if not 0.0 <= alpha < 1.0:
        raise ValueError(f"`alpha` must be in [0, 1), got {alpha}.")
    values = np.asarray(values)
    anchor = values.astype(np.float64)
    current = anchor.copy()
    if alpha > 0 and n_iter > 0:
        neighbor_mean = neighbor_mean_operator(indices)
        for _ in range(n_iter):
            current = (1.0 - alpha) * anchor + alpha * (neighbor_mean @ current)
    return current.astype(values.dtype, copy=False)


def adjust_to_prior(
    probabilities: np.ndarray,
    source_prior: float,
    sections: np.ndarray | pd.Series | None = None,
    max_iter: int = 200,
    tol: float = 1e-6,
) -> tuple[np.ndarray, dict[str, float]]:
    """Re-weight cancer probabilities to each target section's own cancer share, estimated without labels.

    A classifier trained where a share ``source_prior`` of spots is cancer gives posteriors that
    assume that share. The EM procedure of Saerens, Latinne and Decaestecker (Neural Computation,
    2002) estimates the target's share ``pi`` and rescales the posteriors to it::

        q = (pi / pi_s) p / ((pi / pi_s) p + ((1 - pi) / (1 - pi_s)) (1 - p)),   pi = mean(q)

    Parameters
    ----------
    probabilities
        ``(n,)`` cancer probabilities in ``[0, 1]``.
    source_prior
        Share of cancer spots among the labelled training spots, in ``(0, 1)``.
    sections
        ``(n,)`` section label per spot: each section gets its own share. ``None``: one share.
    max_iter, tol
        EM stops after ``max_iter`` iterations or when the share moves less than ``tol``.

    Returns
    -------
    adjusted
        ``(n,)`` probabilities under the estimated shares, float32.
    priors
        Estimated cancer share per section (key ``"all"`` when ``sections`` is ``None``).

    """
    if not 0.0 < source_prior < 1.0:
        raise ValueError(f"`source_prior` must be in (0, 1), got {source_prior}.")
    p = np.clip(np.asarray(probabilities, dtype=np.float64), 1e-7, 1.0 - 1e-7)
    labels = (
        np.full(p.shape[0], "all", dtype=object) if sections is None else np.asarray(sections).astype(str)
    )
    adjusted = np.empty_like(p)
    priors: dict[str, float] = {}
    for section in pd.unique(labels):
        rows = labels == section
        prior = source_prior
        q = p[rows]
        for _ in range(max_iter):
            q = _reweighted(p[rows], source_prior, prior)
            updated = float(q.mean())
            converged = abs(updated - prior) < tol
            prior = float(np.clip(updated, 1e-4, 1.0 - 1e-4))
            if converged:
                break
        adjusted[rows] = q
        priors[str(section)] = prior
    return adjusted.astype(np.float32), priors


def _reweighted(p: np.ndarray, source_prior: float, prior: float) -> np.ndarray:
    """Posteriors ``p`` for a class share ``source_prior`` rewritten for the share ``prior`` (Bayes' rule)."""
    up, down = prior / source_prior * p, (1.0 - prior) / (1.0 - source_prior) * (1.0 - p)
    return up / (up + down)


def shift_to_priors(
    probabilities: np.ndarray, source_prior: float, priors: dict[str, float], sections: np.ndarray | None
) -> np.ndarray:
    """Re-weight ``(n,)`` or ``(n, m)`` probabilities to known per-section shares (of ``adjust_to_prior``)."""
    p = np.clip(np.asarray(probabilities, dtype=np.float64), 1e-7, 1.0 - 1e-7)
    labels = (
        np.full(p.shape[0], "all", dtype=object) if sections is None else np.asarray(sections).astype(str)
    )
    out = np.empty_like(p)
    for section in pd.unique(labels):
        rows = labels == section
        out[rows] = _reweighted(p[rows], source_prior, priors.get(str(section), source_prior))
    return out.astype(np.float32)


def quantile_match(
    scores: np.ndarray, reference: np.ndarray, sections: np.ndarray | pd.Series | None = None
) -> np.ndarray:
    """Give ``scores`` the values of ``reference``, section by section, keeping the order of ``scores``.

    Within each section the spot with the ``r``-th smallest score gets the ``r``-th smallest reference
    value (tied scores share the interpolated value at their mean rank). The result ranks spots exactly
    as ``scores`` do, so ROC AUC and average precision are those of ``scores``, while its distribution,
    and so the share of spots at or above any threshold, is that of ``reference``. Use it to pair a
    model that ranks spots well but whose level moves between sections (one trained with
    ``section_scaling="none"``) with one whose probabilities and call are adapted to each section.

    Parameters
    ----------
    scores
        ``(n,)`` or ``(n, m)`` scores (logits or probabilities); each column is matched on its own.
    reference
        ``(n,)`` probabilities (or any values) of the same spots.
    sections
        ``(n,)`` section of each spot; ``None``: one section.

    Returns
    -------
    ``(n,)`` or ``(n, m)`` float32 values drawn from ``reference``.

    """
    scores = np.asarray(scores, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64).ravel()
    if scores.ndim not in (1, 2) or scores.shape[0] != reference.shape[0]:
        raise ValueError(
            f"`scores` must be (n,) or (n, m) and `reference` (n,) for the same spots, got "
            f"{scores.shape} and {reference.shape}."
        )
    if not (np.isfinite(scores).all() and np.isfinite(reference).all()):
        raise ValueError("`scores` and `reference` must be finite.")
    labels = (
        np.zeros(reference.shape[0], dtype=np.int64) if sections is None else np.asarray(sections).astype(str)
    )
    out = np.empty_like(scores)
    for section in pd.unique(labels):
        rows = np.flatnonzero(labels == section)
        levels = np.sort(reference[rows])
        positions = rankdata(scores[rows], method="average", axis=0) - 1.0  # 0 .. n_rows - 1
        out[rows] = np.interp(positions, np.arange(rows.size), levels)
    return out.astype(np.float32)
