"""Label-free cancer / non-cancer calls from scores."""

from __future__ import annotations

import numpy as np
from scipy.special import expit, logit
from sklearn.mixture import GaussianMixture


def gmm_threshold(scores: np.ndarray, *, on_logit: bool = True, random_state: int = 0) -> float:
    """Threshold separating two score populations, found without labels.

    A two-component Gaussian mixture is fitted to the scores (on the logit scale by default, where
    probabilities from a sigmoid are closer to Gaussian) and the threshold is the point between the two
    means where the weighted component densities cross, as in the SpaCRD paper.

    Parameters
    ----------
    scores
        ``(n,)`` scores; probabilities in ``[0, 1]`` when ``on_logit``.
    on_logit
        Fit the mixture to ``logit(scores)`` and return the threshold on the probability scale.
    random_state
        Seed of the mixture fit.

    Returns
    -------
    The threshold on the scale of ``scores``. When the scores do not form two populations (fewer than
    two distinct values), the midpoint of their range is returned.

    """
    scores = np.asarray(scores, dtype=np.float64).ravel()
    if scores.size == 0 or not np.all(np.isfinite(scores)):
        raise ValueError("`scores` must be a non-empty array of finite values.")
    x = logit(np.clip(scores, 1e-6, 1 - 1e-6)) if on_logit else scores
    if np.unique(x).size < 2:
        return float(scores.mean())
    gmm = GaussianMixture(n_components=2, random_state=random_state).fit(x[:, None])
    means = gmm.means_.ravel()
    lo, hi = np.sort(means)
    grid = np.linspace(lo, hi, 2001)
    posterior = gmm.predict_proba(grid[:, None])
    high = int(np.argmax(means))
    # Weighted densities cross where the posterior of the high component reaches one half.
    crossing = np.flatnonzero(posterior[:, high] >= 0.5)
    t = grid[crossing[0]] if crossing.size else 0.5 * (lo + hi)
    return float(expit(t)) if on_logit else float(t)
