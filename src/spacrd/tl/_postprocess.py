"""From network logits to calibrated probabilities and a label-free call: the one post-processing chain.

``logits → propagation over the expression graph → spatial smoothing → calibration → level → threshold``,
where the level comes from the target's own scores (``call="mixture"``, ``mixture_level``), from the
calibration alone (``"source"``) or from the calibration with the EM prior shift (``"prior"``).
:meth:`spacrd.model.SpaCRD.predict` calls ``postprocess``, its arguments choosing the steps;
:func:`spacrd.tl.call` calls again from a stored prediction.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pandas as pd
from scipy.special import expit

from spacrd._validation import check_bool, check_number

from ._adaptation import adjust_to_prior, propagate_over_neighbors, shift_to_priors
from ._calibration import Calibration
from ._level import mixture_level
from ._neighbors import smooth_over_neighbors
from ._threshold import gmm_threshold

Threshold = float | Literal["gmm"] | None
Call = Literal["mixture", "auto", "source", "prior"]
#: The label-free calls, how each sets the level of the probabilities (see ``PostprocessSettings``).
CALLS = ("mixture", "auto", "source", "prior")

#: Weight of label propagation over each target section's expression graph, by default.
DEFAULT_PROPAGATION = 0.5
#: The call of :meth:`spacrd.model.SpaCRD.predict` by default, chosen by the platform-shift benchmark's
#: nested selection (``benchmarks/platform_shift.py``).
DEFAULT_CALL: Call = "auto"
#: With ``call="auto"``, a section like the training sections takes its own mixture's level when the
#: mixture's components lie at least this far apart (Ashman's ``D``, ``mixture_level``); chosen by
#: the platform-shift benchmark's nested selection.
DEFAULT_MIN_SEPARATION = 3.0


@dataclass(frozen=True)
class PostprocessSettings:
    """The label-free steps between the network's logits and the call.

    Attributes
    ----------
    expression_propagation
        Weight ``alpha`` in ``[0, 1)`` of label propagation over each section's expression neighbour
        graph (``propagate_over_neighbors``); ``0`` turns it off.
    spatial_smoothing
        Average each spot's logit over its spatial neighbourhood (``smooth_over_neighbors``).
    prior_shift
        Re-weight the calibrated probabilities to each section's estimated cancer share
        (``adjust_to_prior``); ``call="prior"`` only. ``None``: on with ``call="prior"``.
    threshold
        ``None``: the Bayes call, probability ≥ 0.5; ``"gmm"``: the crossing of a two-component mixture
        on the logits (``gmm_threshold``); a float in ``[0, 1]``: that threshold.
    call
        Where the level of the probabilities comes from. ``"prior"``: the calibration, then
        ``prior_shift`` and ``threshold`` as above. ``"source"``: the calibration alone, probability
        ≥ 0.5 (``prior_shift`` and ``threshold`` must keep their defaults). ``"mixture"``: each
        section's own label-free logits, cut where a two-component mixture fitted to them crosses
        (``mixture_level``); the calibration's scale is kept and its shift replaced so
        that probability 0.5 falls on that cut; a section where no mixture can be fitted (fewer than
        20 spots, a component of under 3 %) keeps the calibration's level. ``"auto"``: ``"mixture"``
        for the sections named by ``postprocess``'s ``target_level_sections`` (those unlike the
        training sections) and for those whose mixture separates by at least ``min_separation``, the
        calibration's level for the others.
    min_separation
        With ``call="auto"``: the separation (Ashman's ``D``, ``mixture_level``) at which a section
        like the training ones takes its own mixture's level, two populations this far apart placing
        the cut between them better than a calibration fitted on other sections; ``inf``: never.

    """

    expression_propagation: float = DEFAULT_PROPAGATION
    spatial_smoothing: bool = True
    prior_shift: bool | None = None
    threshold: Threshold = None
    call: Call = "prior"
    min_separation: float = DEFAULT_MIN_SEPARATION

    def __post_init__(self):
        check_number("expression_propagation", self.expression_propagation, low=0, high=1, high_open=True)
        if self.min_separation != float("inf"):  # inf: never for sections like the training ones
            check_number("min_separation", self.min_separation, low=0)
        check_bool("spatial_smoothing", self.spatial_smoothing)
        if self.prior_shift is None:  # on for the call it belongs to
            object.__setattr__(self, "prior_shift", self.call == "prior")
        check_bool("prior_shift", self.prior_shift)
        t = self.threshold
        if isinstance(t, str) and t != "gmm":
            raise ValueError(f"`threshold` must be None, 'gmm' or a probability in [0, 1], got {t!r}.")
        if t is not None and not isinstance(t, str):
            try:
                check_number("threshold", t, low=0, high=1)
            except TypeError as err:
                raise TypeError(
                    f"`threshold` must be None, 'gmm' or a probability in [0, 1], got {t!r}."
                ) from err
        if self.call not in CALLS:
            raise ValueError(f"`call` must be one of {list(CALLS)}, got {self.call!r}.")
        if self.call != "prior" and (t is not None or self.prior_shift):
            raise ValueError(
                f"`call={self.call!r}` sets the level itself: `threshold` and `prior_shift` apply to "
                "`call='prior'` only. Leave them out, or pass `call='prior'`."
            )


@dataclass(frozen=True)
class PostprocessResult:
    """What ``postprocess`` returns.

    Attributes
    ----------
    probabilities
        ``(n,)`` float32 cancer probabilities.
    called
        ``(n,)`` bool, the label-free call.
    threshold, threshold_method
        The probability threshold of the call and how it was set (``"bayes"``, ``"gmm"``, ``"fixed"``
        with ``call="prior"``; the call's name, with threshold 0.5, otherwise).
    cancer_share
        Estimated cancer share per section: the prior shift's estimate, or the called share with
        ``call="mixture"``, ``"auto"`` or ``"source"`` (empty for ``"prior"`` without the prior shift).
    uncertainty
        ``(n,)`` float32 standard deviation of the ensemble members' probabilities (each member's
        logits through the same steps), in ``[0, 0.5]``; ``None`` for a model of one member.
    member_probabilities
        ``(n, m)`` float32 probabilities of the members whose spread ``uncertainty`` is; ``None`` for
        a model of one member.
    logits
        ``(n,)`` the label-free logits (after propagation and smoothing, before calibration).
    level
        Per section, where its level came from: ``"mixture"``, ``"source"`` (the calibration;
        also a ``"mixture"`` or ``"auto"`` section where no mixture could be fitted) or ``"prior"``.
    cancer_share_interval
        Per section with a mixture level, the 5–95 % bootstrap interval of ``cancer_share``.
    two_populations
        Per section with a mixture level, whether two components fit its scores better than one (by
        BIC); where they do not, the call's level is uncertain.
    separation
        Per section whose mixture was fitted (``call="mixture"`` or ``"auto"``), Ashman's ``D`` of its
        two components (``nan`` where none could be fitted).

    """

    probabilities: np.ndarray
    called: np.ndarray
    threshold: float
    threshold_method: str
    cancer_share: dict[str, float]
    uncertainty: np.ndarray | None = None
    member_probabilities: np.ndarray | None = None
    logits: np.ndarray | None = None
    level: dict[str, str] = field(default_factory=dict)
    cancer_share_interval: dict[str, tuple[float, float]] = field(default_factory=dict)
    two_populations: dict[str, bool] = field(default_factory=dict)
    separation: dict[str, float] = field(default_factory=dict)


def label_free_logits(
    logits: np.ndarray,
    neighbors: np.ndarray,
    padding: np.ndarray | None,
    settings: PostprocessSettings,
    expression_graph: Callable[[], np.ndarray] | np.ndarray | None = None,
) -> np.ndarray:
    """Logits after propagation over the expression graph and spatial smoothing.

    ``logits`` is ``(n,)``, or ``(n, m)`` with each column treated alone.

    ``expression_graph`` is the ``(n, k)`` graph of ``expression_neighbors``, or a
    function building it (only called when the propagation is on).
    """
    if settings.expression_propagation:
        graph = expression_graph() if callable(expression_graph) else expression_graph
        if graph is None:
            raise ValueError("Propagation over expression neighbours needs `expression_graph`.")
        logits = propagate_over_neighbors(logits, graph, alpha=settings.expression_propagation)
    if settings.spatial_smoothing:
        logits = smooth_over_neighbors(logits, neighbors, padding)
    return logits


def postprocess(
    logits: np.ndarray,
    neighbors: np.ndarray,
    padding: np.ndarray | None,
    sections: np.ndarray,
    settings: PostprocessSettings,
    calibration: Calibration | None,
    source_cancer_share: float | None,
    expression_graph: Callable[[], np.ndarray] | np.ndarray | None = None,
    member_logits: np.ndarray | None = None,
    target_level_sections: Collection[str] = (),
) -> PostprocessResult:
    """Turn network logits into calibrated probabilities and a label-free call.

    Parameters
    ----------
    logits
        ``(n,)`` network logits of the target's spots.
    neighbors, padding
        ``(n, k)`` spatial neighbourhoods (:func:`spacrd.pp.section_neighbors`).
    sections
        ``(n,)`` section of each spot: the prior shift estimates one cancer share per section.
    settings
        Which steps run, with their parameters.
    calibration
        Fitted on held-out source spots for these settings' propagation and smoothing; ``None``:
        uncalibrated (identity).
    source_cancer_share
        Share of cancer among the labelled training spots, the prior the shift starts from.
    expression_graph
        See ``label_free_logits``.
    member_logits
        ``(n, m)`` logits of the ensemble members whose mean ``logits`` is, for the uncertainty: each
        member's logits go through the same propagation, smoothing, calibration and the section's
        estimated cancer share, and the spread of the resulting probabilities is returned.
    target_level_sections
        With ``settings.call="auto"``, the sections whose level comes from their own scores whatever
        their separation (those unlike the training sections).

    Returns
    -------
    A ``PostprocessResult``; raises :class:`ValueError` if any probability is not finite.

    """
    if callable(expression_graph) and settings.expression_propagation:
        expression_graph = expression_graph()  # built once for the ensemble and its members
    with_members = member_logits is not None and np.ndim(member_logits) == 2 and member_logits.shape[1] > 1
    if with_members:  # one pass over the graphs for the ensemble and its members (column 0)
        logits = np.asarray(logits)
        both = np.column_stack([logits, np.asarray(member_logits, dtype=logits.dtype)])
        both = label_free_logits(both, neighbors, padding, settings, expression_graph)
        logits, members = both[:, 0], both[:, 1:]
    else:
        logits = label_free_logits(logits, neighbors, padding, settings, expression_graph)
    calibration = calibration or Calibration()
    sections = np.asarray(sections)
    offsets = _section_offsets(logits, sections, settings, calibration, target_level_sections)
    calibrated = _levelled(logits, calibration, offsets)
    probabilities = expit(calibrated).astype(np.float32)
    cancer_share: dict[str, float] = {}
    if settings.call != "prior":
        labels = sections.astype(str)
        cancer_share = {
            str(name): float(np.mean(probabilities[labels == name] >= 0.5)) for name in pd.unique(labels)
        }
    elif settings.prior_shift:
        if source_cancer_share is None:
            raise ValueError(
                "This model does not know the cancer share of its training spots (it was saved by an "
                "older spacrd); predict with `prior_shift=False`, or train it again."
            )
        probabilities, cancer_share = adjust_to_prior(probabilities, source_cancer_share, sections)
    if not np.isfinite(probabilities).all():
        raise ValueError(
            f"{int((~np.isfinite(probabilities)).sum())} probabilities are NaN or infinite; the network or its "
            "calibration produced non-finite values (a damaged model file, or non-finite inputs)."
        )
    method: str  # the call's name, or how call="prior" set its threshold
    if settings.call != "prior":  # probability 0.5 is the level the call set
        method, threshold = settings.call, 0.5
    elif settings.threshold is None:
        method, threshold = "bayes", 0.5
    elif settings.threshold == "gmm":
        method, threshold = "gmm", gmm_threshold(probabilities)
    else:
        method, threshold = "fixed", float(settings.threshold)
    uncertainty = member_p = None
    if with_members:
        member_p = expit(_levelled(members, calibration, offsets))
        if settings.call == "prior" and settings.prior_shift:
            assert source_cancer_share is not None  # the prior shift above raised without it
            member_p = shift_to_priors(member_p, source_cancer_share, cancer_share, sections)
        member_p = np.asarray(member_p, dtype=np.float32)
        uncertainty = member_p.astype(np.float64).std(axis=1).astype(np.float32)
    return PostprocessResult(
        probabilities,
        probabilities >= threshold,
        float(threshold),
        method,
        cancer_share,
        uncertainty,
        member_p,
        logits,
        offsets.level,
        offsets.interval,
        offsets.two_populations,
        offsets.separation,
    )


@dataclass(frozen=True)
class _Offsets:
    """Per spot, the calibrated logit's shift; per section, where its level came from."""

    shift: np.ndarray | None
    level: dict[str, str]
    interval: dict[str, tuple[float, float]]
    two_populations: dict[str, bool] = field(default_factory=dict)
    separation: dict[str, float] = field(default_factory=dict)


def _section_offsets(
    logits: np.ndarray,
    sections: np.ndarray,
    settings: PostprocessSettings,
    calibration: Calibration,
    target_level_sections: Collection[str],
) -> _Offsets:
    """The shift of each spot's calibrated logit: ``-scale · threshold`` of its section's mixture level."""
    sections = np.asarray(sections).astype(str)
    names = list(pd.unique(sections))
    if settings.call in ("prior", "source"):
        return _Offsets(None, dict.fromkeys(names, settings.call), {})
    unlike = set(names) if settings.call == "mixture" else {str(s) for s in target_level_sections}
    fit_all = settings.call == "mixture" or np.isfinite(settings.min_separation)
    shift = np.full(logits.shape[0], calibration.shift, dtype=np.float64)
    level, interval, two, apart = {}, {}, {}, {}
    for name in names:
        rows = sections == name
        # a section like the training ones needs its mixture's interval only if it takes its level
        needed = 0.0 if name in unlike else settings.min_separation
        found = mixture_level(logits[rows], min_separation=needed) if fit_all or name in unlike else None
        if found is not None:
            apart[name] = found.separation
        if (
            found is None
            or not np.isfinite(found.threshold)
            or (name not in unlike and not found.separation >= settings.min_separation)
        ):
            level[name] = "source"
            continue
        shift[rows] = -calibration.scale * found.threshold
        level[name], interval[name], two[name] = "mixture", found.interval, found.two_populations
    return _Offsets(shift, level, interval, two, apart)


def _levelled(logits: np.ndarray, calibration: Calibration, offsets: _Offsets) -> np.ndarray:
    """``scale · logits + shift``, the shift per spot when the level is the target's."""
    if offsets.shift is None:
        return calibration.apply(logits)
    logits = np.asarray(logits, dtype=np.float64)
    shift = offsets.shift if logits.ndim == 1 else offsets.shift[:, None]
    return calibration.scale * logits + shift
