"""Calibrating logits on held-out labelled spots, and remembering what the calibration was fitted for."""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy.special import expit


@dataclass(frozen=True)
class Calibration:
    """``sigmoid(scale * logit + shift)``, fitted for one post-processing of the logits.

    Attributes
    ----------
    scale, shift
        The affine map of the logits; ``scale > 0``, so the ranking of spots never changes.
    n_spots
        Labelled spots it was fitted on.
    expression_propagation, spatial_smoothing
        The label-free post-processing the logits had been through when it was fitted
        (the arguments of :meth:`spacrd.model.SpaCRD.predict`); a calibration fitted for other
        settings does not apply.
    validation
        How the spots it was fitted on were held out of training (``"section"``, ``"block"``,
        ``"random"``; ``"training"`` when no spots were held out and it had to use the training spots;
        ``"given"`` when :meth:`spacrd.model.SpaCRD.calibrate` was passed the labelled spots to fit on).

    """

    scale: float = 1.0
    shift: float = 0.0
    n_spots: int = 0
    expression_propagation: float = 0.5
    spatial_smoothing: bool = True
    validation: str = "random"

    def __post_init__(self):
        if not (math.isfinite(self.scale) and self.scale > 0 and math.isfinite(self.shift)):
            raise ValueError(
                f"Calibration scale {self.scale} and shift {self.shift} must be finite, with scale > 0; the "
                "model file is damaged or the calibration fit failed. Train the model again."
            )

    def apply(self, logits: np.ndarray) -> np.ndarray:
        """Calibrated logits ``(n,)`` float64."""
        return self.scale * np.asarray(logits, dtype=np.float64) + self.shift

    def fitted_for(self, expression_propagation: float, spatial_smoothing: bool) -> bool:
        """Whether this calibration was fitted for logits post-processed with these settings."""
        return math.isclose(
            self.expression_propagation, float(expression_propagation)
        ) and self.spatial_smoothing == bool(spatial_smoothing)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, value: Mapping[str, Any] | None) -> Calibration | None:
        """Read a stored calibration; one saved before the settings were recorded was fitted for the defaults."""
        if value is None:
            return None
        known = {k: value[k] for k in cls.__dataclass_fields__ if k in value}
        unknown = sorted(set(value) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(
                f"Unknown calibration entries {unknown}; the model file is damaged or from a newer spacrd."
            )
        try:
            return cls(**known)
        except TypeError as err:
            raise ValueError(f"Invalid calibration {dict(value)}: {err}") from err


def warn_if_not_fitted_for(
    calibration: Calibration, expression_propagation: float, spatial_smoothing: bool
) -> None:
    """Warn that a calibration fitted for other post-processing settings is applied anyway."""
    if not calibration.fitted_for(expression_propagation, spatial_smoothing):
        warnings.warn(
            "The calibration was fitted for logits post-processed with "
            f"expression_propagation={calibration.expression_propagation}, "
            f"spatial_smoothing={calibration.spatial_smoothing}, not with expression_propagation="
            f"{expression_propagation}, spatial_smoothing={spatial_smoothing}; the probabilities may be "
            "mis-calibrated. Predict with the model's registered source AnnData attached, so that the "
            "calibration can be refitted, or use the settings it was fitted for.",
            UserWarning,
            stacklevel=3,
        )


def fit_calibration(logits: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """Bias-corrected temperature scaling: ``scale`` and ``shift`` so that ``sigmoid(scale * logit + shift)``
    is calibrated on labelled spots.

    Fitted by maximum likelihood (binary cross-entropy) with ``scale > 0``, so the ranking of spots never
    changes. Calibrated probabilities are what the EM of the prior shift (``adjust_to_prior``) assumes;
    an under- or over-confident network would otherwise drive its estimate of the cancer share towards
    0 or 1 (Alexandari, Kundaje and Shrikumar, ICML 2020).

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
    if not np.isfinite(x).all():
        raise ValueError(f"{int((~np.isfinite(x)).sum())} logits are NaN or infinite; cannot calibrate.")

    def loss(params: np.ndarray) -> tuple[float, np.ndarray]:
        scale, shift = np.exp(params[0]), params[1]
        z = scale * x + shift
        # mean binary cross-entropy of sigmoid(z), written stably, and its gradient
        value = np.mean(np.logaddexp(0.0, z) - y * z)
        residual = (expit(z) - y) / x.size
        return float(value), np.array([np.sum(residual * x) * scale, np.sum(residual)])

    result = minimize(loss, np.zeros(2), jac=True, method="L-BFGS-B", bounds=[(-5.0, 5.0), (-50.0, 50.0)])
    return float(np.exp(result.x[0])), float(result.x[1])
