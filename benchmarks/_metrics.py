"""Per-section metrics for cancer tissue region (CTR) detection.

All functions take 1-d arrays over the *labelled* spots of one section: ``y`` is 0/1 (1 = cancer) and
``score`` is the method's per-spot score, higher meaning more likely cancer.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import average_precision_score, brier_score_loss, f1_score, roc_auc_score
from sklearn.mixture import GaussianMixture


def minmax(x: np.ndarray) -> np.ndarray:
    """Rescale ``x`` to [0, 1]; a constant vector maps to 0.5."""
    x = np.asarray(x, dtype=float)
    lo, hi = np.nanmin(x), np.nanmax(x)
    if hi <= lo:
        return np.full_like(x, 0.5)
    return (x - lo) / (hi - lo)


def prevalence_threshold(score: np.ndarray, y: np.ndarray) -> float:
    """Threshold at the quantile equal to the section's true share of negatives.

    This is the F1 rule of the SpaCRD paper's evaluation code. It reads the target's labels (how many
    spots are cancer), so the F1 it gives is an optimistic, label-informed number.
    """
    y = np.asarray(y).astype(bool)
    return float(np.quantile(np.asarray(score, dtype=float), 1.0 - y.mean()))


def gmm_threshold(score: np.ndarray, seed: int = 0) -> float:
    """Label-free threshold: crossing of the two weighted densities of a 2-component Gaussian mixture.

    Fits :class:`sklearn.mixture.GaussianMixture` with two components to the scores and solves
    ``w1 N(t; m1, s1) = w2 N(t; m2, s2)`` for ``t``. The root between the two means is used; when the
    heavier component dominates everywhere between the means (no root there), the real root nearest
    to the midpoint of the means is used, and with no real root at all, the midpoint itself.
    """
    s = np.asarray(score, dtype=float).reshape(-1, 1)
    if np.ptp(s) == 0:
        return float(s[0, 0])
    gm = GaussianMixture(n_components=2, covariance_type="full", random_state=seed).fit(s)
    m = gm.means_.ravel()
    sd = np.sqrt(gm.covariances_.ravel())
    w = gm.weights_.ravel()
    order = np.argsort(m)
    (m1, m2), (s1, s2), (w1, w2) = m[order], sd[order], w[order]
    # log w1 - log s1 - (t-m1)^2 / (2 s1^2) = log w2 - log s2 - (t-m2)^2 / (2 s2^2), as a t^2 + b t + c = 0
    a = 1.0 / (2 * s2**2) - 1.0 / (2 * s1**2)
    b = m1 / s1**2 - m2 / s2**2
    c = m2**2 / (2 * s2**2) - m1**2 / (2 * s1**2) + np.log((w1 * s2) / (w2 * s1))
    if abs(a) < 1e-12 * (1.0 / s1**2 + 1.0 / s2**2):  # equal variances: the equation is linear
        roots = np.array([-c / b]) if b != 0 else np.array([])
    else:
        disc = b**2 - 4 * a * c
        roots = np.array([]) if disc < 0 else (-b + np.array([-1.0, 1.0]) * np.sqrt(disc)) / (2 * a)
    mid = 0.5 * (m1 + m2)
    if roots.size == 0:
        return float(mid)
    inside = roots[(roots >= m1) & (roots <= m2)]
    if inside.size:
        return float(inside[np.argmin(np.abs(inside - mid))])
    return float(roots[np.argmin(np.abs(roots - mid))])


def f1_at(score: np.ndarray, y: np.ndarray, threshold: float) -> float:
    """F1 of the call ``score > threshold`` against ``y`` (cancer is the positive class)."""
    pred = np.asarray(score, dtype=float) > threshold
    return float(f1_score(np.asarray(y).astype(bool), pred, zero_division=0.0))


def expected_calibration_error(y: np.ndarray, prob: np.ndarray, n_bins: int = 10) -> float:
    """ECE of cancer probabilities: ``sum_b |B_b| / n * |mean(y in B_b) - mean(prob in B_b)|``, 10 equal-width bins."""
    y, prob = np.asarray(y, dtype=float), np.clip(np.asarray(prob, dtype=float), 0.0, 1.0)
    bins = np.minimum((prob * n_bins).astype(int), n_bins - 1)
    total = 0.0
    for b in np.unique(bins):
        inside = bins == b
        total += inside.mean() * abs(y[inside].mean() - prob[inside].mean())
    return float(total)


def section_metrics(
    y: np.ndarray,
    prob: np.ndarray,
    call: np.ndarray | None = None,
    seed: int = 0,
    uncertainty: np.ndarray | None = None,
) -> dict[str, float]:
    """All per-section metrics of one method on one held-out section.

    Parameters
    ----------
    y
        True labels of the labelled spots, 0/1 or bool, shape ``(n,)``.
    prob
        The method's cancer probability (or score mapped to [0, 1]) for the same spots, shape ``(n,)``.
    call
        The method's own label-free cancer call (bool, shape ``(n,)``), if it makes one; otherwise a
        two-component GMM threshold on ``prob`` (:func:`gmm_threshold`) makes the call.
    seed
        Seed of the GMM fit.
    uncertainty
        The method's per-spot uncertainty, if it gives one (shape ``(n,)``).

    Returns
    -------
    ``auc``, ``ap``, ``f1_prev`` (F1 at the prevalence threshold, label-informed), ``f1_free`` (F1 of
    the label-free call), ``brier`` (mean squared error of ``prob``), ``prevalence`` (share of cancer
    spots), ``n`` (labelled spots), ``ece`` (expected calibration error of ``prob``) and, with
    ``uncertainty``, ``unc_auroc``: the ROC AUC of the uncertainty for telling the spots whose
    label-free call is wrong from those whose call is right (0.5: it says nothing).
    """
    y = np.asarray(y).astype(bool)
    prob = np.asarray(prob, dtype=float)
    if y.shape != prob.shape:
        raise ValueError(f"labels {y.shape} and scores {prob.shape} differ in shape")
    if call is None:
        call = prob > gmm_threshold(prob, seed=seed)
    call = np.asarray(call).astype(bool)
    both = 0 < y.sum() < y.size
    return {
        "auc": float(roc_auc_score(y, prob)) if both else float("nan"),
        "ap": float(average_precision_score(y, prob)) if both else float("nan"),
        "f1_prev": f1_at(prob, y, prevalence_threshold(prob, y)),
        "f1_free": float(f1_score(y, call, zero_division=0.0)),
        "brier": float(brier_score_loss(y, np.clip(prob, 0.0, 1.0))),
        "ece": expected_calibration_error(y, prob),
        "unc_auroc": _error_auroc(y, call, uncertainty),
        "prevalence": float(y.mean()),
        "n": int(y.size),
    }


def _error_auroc(y: np.ndarray, call: np.ndarray, uncertainty: np.ndarray | None) -> float:
    if uncertainty is None:
        return float("nan")
    wrong = np.asarray(call).astype(bool) != np.asarray(y).astype(bool)
    if wrong.all() or not wrong.any():
        return float("nan")
    return float(roc_auc_score(wrong, np.asarray(uncertainty, dtype=float)))
