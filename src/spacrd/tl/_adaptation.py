"""Label-free adaptation of scores to a target section: its expression structure and its cancer share."""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.decomposition import PCA

from ._neighbors import section_neighbors


def expression_neighbors(
    features: np.ndarray,
    sections: np.ndarray | pd.Series | None,
    n_neighbors: int = 10,
    n_comps: int = 10,
    random_state: int = 0,
) -> np.ndarray:
    """Each spot's nearest spots in expression space, within its own section, the spot itself first.

    Distances are Euclidean on the first ``n_comps`` principal components of ``features``, computed
    per section, so that the graph follows the section's own transcriptional structure (tumour clones,
    stroma, immune infiltrates) rather than differences between sections.

    Parameters
    ----------
    features
        ``(n, d)`` preprocessed expression, e.g. log-normalised counts standardised per section.
    sections
        ``(n,)`` section label per spot; ``None`` treats all spots as one section.
    n_neighbors
        Neighbourhood size ``k`` including the spot itself.
    n_comps
        Principal components per section (fewer if the section has fewer spots or features).
    random_state
        Seed of the randomised PCA solver.

    Returns
    -------
    ``(n, k)`` int64 row indices into ``features``; a section of fewer than ``k`` spots repeats the
    spot itself in its missing slots.

    """
    features = np.asarray(features, dtype=np.float32)
    n = features.shape[0]
    # Per-section PCA embedding, zero-padded to n_comps columns; the search is section_neighbors'.
    embedding = np.zeros((n, n_comps), dtype=np.float32)
    codes = np.zeros(n, dtype=np.int64) if sections is None else pd.factorize(np.asarray(sections))[0]
    for code in np.unique(codes):
        rows = np.flatnonzero(codes == code)
        comps = min(n_comps, rows.size - 1, features.shape[1])
        if comps >= 1:
            embedding[rows, :comps] = PCA(comps, random_state=random_state).fit_transform(features[rows])
    indices, _ = section_neighbors(embedding, codes, n_neighbors)
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
        ``(n,)`` scores, e.g. logits.
    indices
        ``(n, k)`` neighbour indices, e.g. from :func:`expression_neighbors`.
    alpha
        Weight of the neighbours, in ``[0, 1)``; ``0`` returns ``values`` unchanged.
    n_iter
        Iterations; the error after ``t`` of them shrinks as ``alpha ** t``.

    Returns
    -------
    ``(n,)`` propagated scores, of the dtype of ``values``.

    """
    if not 0.0 <= alpha < 1.0:
        raise ValueError(f"`alpha` must be in [0, 1), got {alpha}.")
    values = np.asarray(values)
    anchor = values.astype(np.float64)
    current = anchor.copy()
    for _ in range(n_iter if alpha > 0 else 0):
        current = (1.0 - alpha) * anchor + alpha * current[indices].mean(axis=1)
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
            up, down = prior / source_prior * p[rows], (1.0 - prior) / (1.0 - source_prior) * (1.0 - p[rows])
            q = up / (up + down)
            updated = float(q.mean())
            converged = abs(updated - prior) < tol
            prior = float(np.clip(updated, 1e-4, 1.0 - 1e-4))
            if converged:
                break
        adjusted[rows] = q
        priors[str(section)] = prior
    return adjusted.astype(np.float32), priors


def fit_calibration(logits: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """Bias-corrected temperature scaling: ``scale`` and ``shift`` so that ``sigmoid(scale * logit + shift)``
    is calibrated on labelled spots.

    Fitted by maximum likelihood (binary cross-entropy) with ``scale > 0``, so the ranking of spots never
    changes. Calibrated probabilities are what the EM of :func:`adjust_to_prior` assumes; an under- or
    over-confident network would otherwise drive its estimate of the cancer share towards 0 or 1
    (Alexandari, Kundaje and Shrikumar, ICML 2020).

    Parameters
    ----------
    logits
        ``(n,)`` logits of held-out labelled spots, e.g. the source's validation spots.
    labels
        ``(n,)`` 0/1 labels of the same spots; both classes must occur.

    Returns
    -------
    ``(scale, shift)``.

    """
    from scipy.optimize import minimize

    x = np.asarray(logits, dtype=np.float64).ravel()
    y = np.asarray(labels, dtype=np.float64).ravel()
    if x.shape != y.shape or x.size == 0:
        raise ValueError(f"`logits` {x.shape} and `labels` {y.shape} must be non-empty and of one shape.")
    if not 0 < y.sum() < y.size:
        raise ValueError("Calibration needs labelled spots of both classes.")

    def loss(params: np.ndarray) -> tuple[float, np.ndarray]:
        scale, shift = np.exp(params[0]), params[1]
        z = scale * x + shift
        # mean binary cross-entropy of sigmoid(z), written stably, and its gradient
        value = np.mean(np.logaddexp(0.0, z) - y * z)
        residual = (1.0 / (1.0 + np.exp(-z)) - y) / x.size
        return float(value), np.array([np.sum(residual * x) * scale, np.sum(residual)])

    result = minimize(loss, np.zeros(2), jac=True, method="L-BFGS-B", bounds=[(-5.0, 5.0), (-50.0, 50.0)])
    return float(np.exp(result.x[0])), float(result.x[1])
