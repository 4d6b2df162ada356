"""Call cancer again from a stored prediction: another threshold or rule, without the model."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy.special import expit, logit

from spacrd._constants import CALL_CATEGORIES, OBS_KEYS, UNS_KEYS
from spacrd._validation import check_number

from ._level import mixture_level
from ._threshold import gmm_threshold

CallMethod = Literal["threshold", "gmm", "mixture"]
#: The rules of :func:`call`.
CALL_METHODS = ("threshold", "gmm", "mixture")
#: Probabilities are clipped this far from 0 and 1 before their logit.
_EPS = 1e-6


def call(
    adata: AnnData,
    threshold: float | None = None,
    *,
    method: CallMethod = "threshold",
    prob_key: str = OBS_KEYS.PROB,
    section_key: str | None = OBS_KEYS.SECTION,
    key_added: str = OBS_KEYS.CALL,
    random_state: int = 0,
) -> pd.Series:
    """Call every spot cancer or not from stored probabilities, by another threshold or rule.

    :meth:`SpaCRD.predict <spacrd.model.SpaCRD.predict>` writes the cancer probability of every spot
    to ``obs["ctr_prob"]`` and its call to ``obs["ctr"]``; its call is probability ≥ 0.5, the level of
    the probabilities having been set by its ``call=`` rule. This function calls again from those
    probabilities alone, without the model or its inputs: with the defaults it reproduces
    ``predict``'s call.

    Parameters
    ----------
    adata
        AnnData with a prediction in ``obs[prob_key]``.
    threshold
        With ``method="threshold"``: a probability in ``[0, 1]``; spots at or above it are called
        cancer. ``None``: 0.5.
    method
        ``"threshold"``: as above. ``"gmm"``: per section, the crossing of a two-component Gaussian
        mixture on the logits of the probabilities. ``"mixture"``: per section, the level that
        ``predict(call="mixture")`` sets, where a two-component mixture fitted to the logits of the
        probabilities crosses, with the bootstrap interval of its share (a section where no mixture can
        be fitted keeps 0.5).
    prob_key
        ``obs`` column of the probabilities.
    section_key
        ``obs`` column of the sections, each cut on its own for ``"gmm"`` and ``"mixture"``; ``None``
        (or the default ``"section"`` when there is no such column): all spots are one section.
    key_added
        ``obs`` column the call is written to (categorical, ``"non-cancer"``/``"cancer"``); the default
        replaces ``predict``'s own call. How it was made goes to ``uns[key_added + "_call"]``.
    random_state
        Seed of the mixtures.

    Returns
    -------
    The call, also written to ``adata.obs[key_added]``; ``adata.uns[key_added + "_call"]`` gets
    ``method``, ``prob_key``, ``section_key``, and per section ``threshold`` (on the probability
    scale), ``cancer_share`` and, for ``"mixture"``, ``cancer_share_interval``, ``two_populations`` and
    ``separation`` (Ashman's D of the two components). Nothing else in ``adata`` changes.

    """
    if method not in CALL_METHODS:
        raise ValueError(f"`method` must be one of {list(CALL_METHODS)}, got {method!r}.")
    if threshold is not None:
        if method != "threshold":
            raise ValueError(
                f"`threshold` applies to method='threshold' only; method={method!r} sets its own."
            )
        check_number("threshold", threshold, low=0, high=1)
    if prob_key not in adata.obs:
        raise KeyError(
            f"adata.obs has no {prob_key!r} column of cancer probabilities. Run `model.predict(adata)` first, "
            "or pass `prob_key=` the column that holds them."
        )
    prob = adata.obs[prob_key].to_numpy(dtype=np.float64)
    if not np.isfinite(prob).all() or prob.min() < 0 or prob.max() > 1:
        raise ValueError(f"obs[{prob_key!r}] must hold probabilities in [0, 1], without NaN.")
    sections = _sections(adata, section_key)
    called = np.zeros(adata.n_obs, dtype=bool)
    record: dict[str, Any] = {
        "method": method,
        "prob_key": prob_key,
        "section_key": section_key if section_key in adata.obs else None,
        "threshold": {},
        "cancer_share": {},
    }
    if method == "mixture":
        record["cancer_share_interval"], record["two_populations"], record["separation"] = {}, {}, {}
    for name in pd.unique(sections):
        rows = sections == name
        cut = _cut(prob[rows], threshold, method, random_state, record, str(name))
        called[rows] = prob[rows] >= cut
        record["threshold"][str(name)] = cut
        record["cancer_share"][str(name)] = float(called[rows].mean())
    result = pd.Series(
        pd.Categorical.from_codes(called.astype(np.int8), categories=list(CALL_CATEGORIES)),
        index=adata.obs_names,
        name=key_added,
    )
    adata.obs[key_added] = result
    adata.uns[key_added + UNS_KEYS.CALL_SUFFIX] = record
    return result


def _sections(adata: AnnData, section_key: str | None) -> np.ndarray:
    if section_key is None or (section_key == OBS_KEYS.SECTION and section_key not in adata.obs):
        return np.full(adata.n_obs, "0")
    if section_key not in adata.obs:
        raise KeyError(f"adata.obs has no {section_key!r} column of sections; pass `section_key=` or None.")
    return adata.obs[section_key].astype(str).to_numpy()


def _cut(
    prob: np.ndarray, threshold: float | None, method: str, random_state: int, record: dict, name: str
) -> float:
    """The probability threshold of one section."""
    if method == "threshold":
        return 0.5 if threshold is None else float(threshold)
    if method == "gmm":
        return gmm_threshold(prob, random_state=random_state)
    scores = logit(np.clip(prob, _EPS, 1 - _EPS))
    level = mixture_level(scores, random_state=random_state)
    record["cancer_share_interval"][name] = [float(v) for v in level.interval]
    record["two_populations"][name] = level.two_populations
    record["separation"][name] = level.separation
    if not np.isfinite(level.threshold):
        return 0.5
    return float(expit(level.threshold))
