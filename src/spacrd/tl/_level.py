"""The level of the call from the target itself: a two-component mixture on each section's own scores.

A model's ranking of spots transfers across depth and platform far better than the level of its
logits does: fewer UMIs per spot move every logit, and a calibration fitted on source spots cannot
know by how much. The target's own score distribution is there, without labels. Where it has two
populations, the crossing of a two-component Gaussian mixture fitted to it is a threshold that moves
with the target.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture

#: Sections with more spots fit the mixture on this many randomly drawn spots.
MAX_MIXTURE_SPOTS = 50_000
#: Fewer spots than this in a section: no mixture is fitted.
MIN_MIXTURE_SPOTS = 20
#: A mixture whose smaller component holds less than this share of the spots sets no level.
MIN_COMPONENT_WEIGHT = 0.03
#: Bootstrap resamples of the spots for the interval of the called share, and its coverage.
N_BOOTSTRAP, INTERVAL = 20, (0.05, 0.95)
#: Spots drawn per bootstrap resample (at most; all spots of a smaller section).
MAX_BOOTSTRAP_SPOTS = 5_000


@dataclass(frozen=True)
class SectionLevel:
    """Where one section's call is cut.

    Attributes
    ----------
    threshold
        On the scale of the scores the level was found on (label-free logits); ``nan`` when no mixture
        could be fitted (fewer than 20 spots, one distinct score, a component of under 3 % of the spots).
    share
        Share of the section's spots at or above ``threshold`` (``nan`` without one).
    interval
        5–95 % bootstrap interval of ``share``, the mixture refitted on resampled spots. Spots are
        resampled independently although neighbouring spots are alike, so the interval is a lower
        bound on the uncertainty.
    two_populations
        Whether two components fit the scores better than one (by BIC). When they do not, the cut is
        still the mixture's, but the scores barely separate and the share is uncertain.
    separation
        How far apart the two components are, Ashman's ``D = √2 · |μ₁ − μ₂| / √(σ₁² + σ₂²)``
        (``separation``); above about 2 the two populations are cleanly apart and the cut between them
        is well placed. ``nan`` without a mixture.

    """

    threshold: float
    share: float
    interval: tuple[float, float]
    two_populations: bool
    separation: float = float("nan")


def _fit(scores: np.ndarray, random_state: int, start: GaussianMixture | None = None) -> GaussianMixture:
    """Two-component mixture of ``scores``; from ``start``'s parameters (a resample's refit) when given."""
    kwargs = {}
    if start is not None:  # a few EM steps from the full fit: resamples move it little
        kwargs = {
            "weights_init": start.weights_,
            "means_init": start.means_,
            "precisions_init": start.precisions_,
            "max_iter": 20,
        }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return GaussianMixture(n_components=2, random_state=random_state, **kwargs).fit(scores[:, None])


def _two_populations(gmm: GaussianMixture, scores: np.ndarray, random_state: int) -> bool:
    """Whether two components fit ``scores`` better than one, by the Bayesian information criterion."""
    one = GaussianMixture(n_components=1, random_state=random_state).fit(scores[:, None])
    return bool(gmm.bic(scores[:, None]) < one.bic(scores[:, None]))


def separation(gmm: GaussianMixture) -> float:
    """Ashman's ``D`` of a fitted two-component mixture: the distance of its means in pooled sds, times √2."""
    means, variances = gmm.means_.ravel(), gmm.covariances_.ravel()
    return float(np.sqrt(2.0) * abs(means[0] - means[1]) / np.sqrt(variances.sum()))


def _crossing(gmm: GaussianMixture) -> float:
    """Where the weighted component densities cross, between the two means."""
    means = gmm.means_.ravel()
    lo, hi = np.sort(means)
    grid = np.linspace(lo, hi, 1001)
    high = gmm.predict_proba(grid[:, None])[:, int(np.argmax(means))]
    crossing = np.flatnonzero(high >= 0.5)
    return float(grid[crossing[0]] if crossing.size else 0.5 * (lo + hi))


def mixture_level(
    scores: np.ndarray, *, n_bootstrap: int = N_BOOTSTRAP, random_state: int = 0, min_separation: float = 0.0
) -> SectionLevel:
    """The call's threshold from one section's own scores, with a bootstrap interval of its share.

    Parameters
    ----------
    scores
        ``(n,)`` finite scores of one section's spots, e.g. label-free logits (the
        logits after propagation and smoothing).
    n_bootstrap
        Resamples for the interval of the share; ``0``: the interval is the share itself. A section of
        more than 5,000 spots (``MAX_BOOTSTRAP_SPOTS``) is resampled ``m`` of ``n`` at a time and the
        deviations scaled by ``sqrt(m / n)``.
    random_state
        Seed of the mixtures and the resamples.
    min_separation
        The interval is resampled only for a mixture separating by at least this much (the level a
        caller will use); below it the interval is ``(nan, nan)``.

    Returns
    -------
    A ``SectionLevel``; where no mixture could be fitted its threshold and share are ``nan``, and
    the caller keeps the source's level.

    """
    scores = np.asarray(scores, dtype=np.float64).ravel()
    if not np.isfinite(scores).all():
        raise ValueError("`scores` must be finite.")
    nan = float("nan")
    if scores.size < MIN_MIXTURE_SPOTS or np.unique(scores).size < 2:
        return SectionLevel(nan, nan, (nan, nan), False)
    rng = np.random.default_rng(random_state)
    fit = scores if scores.size <= MAX_MIXTURE_SPOTS else rng.choice(scores, MAX_MIXTURE_SPOTS, replace=False)
    gmm = _fit(fit, random_state)
    two = _two_populations(gmm, fit, random_state)
    if gmm.weights_.min() < MIN_COMPONENT_WEIGHT:
        return SectionLevel(nan, nan, (nan, nan), two)
    apart = separation(gmm)
    threshold = _crossing(gmm)
    share = float(np.mean(scores >= threshold))
    if not apart >= min_separation:
        return SectionLevel(threshold, share, (nan, nan), two, apart)
    size = min(scores.size, MAX_BOOTSTRAP_SPOTS)
    deviations = []
    for _ in range(n_bootstrap):
        sample = rng.choice(scores, size, replace=True)
        cut = _crossing(_fit(sample, random_state, start=gmm))
        deviations.append(np.mean(sample >= cut) - np.mean(sample >= threshold))
    if not deviations:
        return SectionLevel(threshold, share, (share, share), two, apart)
    low, high = np.quantile(deviations, INTERVAL) * np.sqrt(size / scores.size)
    # the resample's sampling noise of the share at a fixed cut, on top of the cut's own
    noise = np.sqrt(share * (1 - share) / scores.size) * 1.645
    interval = (float(np.clip(share + low - noise, 0, 1)), float(np.clip(share + high + noise, 0, 1)))
    return SectionLevel(threshold, share, interval, two, apart)
