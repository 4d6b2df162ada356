"""What a fit produces besides the weights, in one frozen object saved as one entry of ``model.json``."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

import numpy as np

from spacrd._validation import check_number
from spacrd.tl import Calibration

from ._shift import TrainingProfile

#: How the spots a calibration was fitted on were chosen (``Calibration.validation`` and the split).
VALIDATION_SPLITS = ("section", "block", "random")


@dataclass(frozen=True, eq=False)
class FittedState:
    """The state :meth:`SpaCRD.train <spacrd.model.SpaCRD.train>` fits besides the network's weights.

    Built once at the end of training and replaced as a whole (never edited) when
    :meth:`~spacrd.model.SpaCRD.calibrate` adds a calibration; :meth:`~spacrd.model.SpaCRD.save`
    writes it as the ``fitted_state`` entry of ``model.json``.

    Attributes
    ----------
    calibrations
        The calibrations of the logits (:class:`spacrd.tl.Calibration`), at most one per
        post-processing setting (``expression_propagation``, ``spatial_smoothing``); the first is the
        one fitted in training for :meth:`~spacrd.model.SpaCRD.predict`'s defaults.
    source_cancer_share
        Share of cancer among the labelled training spots, in ``(0, 1)``: the prior that
        ``predict(call="prior")`` adapts from. ``None`` for models saved before it was recorded.
    n_image_training_spots
        Training spots with a histology embedding; under 2, the image branch was not trained.
    validation_split
        How the validation spots were held out (``"section"``, ``"block"``, ``"random"``).
    validation_indices
        ``(n_val,)`` int64 rows of the training AnnData held out for validation (read-only);
        ``None`` for models saved before they were recorded.
    n_source_spots
        Rows of the training AnnData, to recognise it when it is attached again.
    training_profile
        The training sections' depth, detected genes and score distribution that the shift detector
        compares targets with.

    """

    calibrations: tuple[Calibration, ...] = ()
    source_cancer_share: float | None = None
    n_image_training_spots: int = 0
    validation_split: str | None = None
    validation_indices: np.ndarray | None = field(default=None, repr=False)
    n_source_spots: int | None = None
    training_profile: TrainingProfile | None = None

    def __post_init__(self):
        object.__setattr__(self, "calibrations", tuple(self.calibrations))
        if self.validation_indices is not None:
            rows = np.array(self.validation_indices, dtype=np.int64).reshape(-1)
            rows.setflags(write=False)
            object.__setattr__(self, "validation_indices", rows)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, FittedState):
            return NotImplemented
        mine, theirs = self.validation_indices, other.validation_indices
        same_rows = (mine is None and theirs is None) or (
            mine is not None and theirs is not None and np.array_equal(mine, theirs)
        )
        return same_rows and all(
            getattr(self, name) == getattr(other, name)
            for name in self.__dataclass_fields__
            if name != "validation_indices"
        )

    # mutable-looking contents (an array): not hashable, like a dict. typeshed declares object.__hash__ a
    # method; ClassVar[None] with this ignore is how it declares list and dict unhashable.
    __hash__: ClassVar[None] = None  # type: ignore[assignment]

    @property
    def calibration(self) -> Calibration | None:
        """The calibration fitted in training (for :meth:`~spacrd.model.SpaCRD.predict`'s defaults)."""
        return self.calibrations[0] if self.calibrations else None

    def calibration_for(self, expression_propagation: float, spatial_smoothing: bool) -> Calibration | None:
        """The stored calibration fitted for logits post-processed with these settings, or ``None``."""
        for calibration in self.calibrations:
            if calibration.fitted_for(expression_propagation, spatial_smoothing):
                return calibration
        return None

    def with_calibration(self, calibration: Calibration) -> FittedState:
        """A copy holding ``calibration`` in place of the one stored for its settings (or added)."""
        settings = (calibration.expression_propagation, calibration.spatial_smoothing)
        kept = [calibration if c.fitted_for(*settings) else c for c in self.calibrations]
        if not any(c.fitted_for(*settings) for c in self.calibrations):
            kept.append(calibration)
        return replace(self, calibrations=tuple(kept))

    def matches_source(self, n_obs: int) -> bool:
        """Whether an AnnData of ``n_obs`` rows can be the training AnnData its validation rows index."""
        rows = self.validation_indices
        if rows is None:
            return False
        if self.n_source_spots is not None:
            return n_obs == self.n_source_spots
        return n_obs > rows.max(initial=-1)

    # ------------------------------------------------------------------ JSON
    def to_dict(self) -> dict[str, Any]:
        """Plain values (the validation rows as an array) for ``model.json``."""
        return {
            "calibrations": [c.to_dict() for c in self.calibrations],
            "source_cancer_share": self.source_cancer_share,
            "n_image_training_spots": self.n_image_training_spots,
            "validation_split": self.validation_split,
            "validation_indices": self.validation_indices,
            "n_source_spots": self.n_source_spots,
            "training_profile": None if self.training_profile is None else self.training_profile.to_dict(),
        }

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None, where: str = "model.json") -> FittedState | None:
        """The state written by :meth:`to_dict`, checked; ``None`` for an untrained model."""
        if values is None:
            return None
        if not isinstance(values, Mapping):
            raise ValueError(f"{where}: fitted_state must be a mapping (edited or damaged).")
        unknown = sorted(set(values) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"{where}: fitted_state has unknown entries {unknown} (edited or damaged).")
        calibrations = values.get("calibrations") or []
        if not isinstance(calibrations, list):
            raise ValueError(f"{where}: fitted_state.calibrations must be a list (edited or damaged).")
        read = [Calibration.from_dict(c) for c in calibrations]
        stored = tuple(c for c in read if c is not None)
        if len(stored) < len(read):
            raise ValueError(f"{where}: fitted_state.calibrations holds a null entry (edited or damaged).")
        return _checked(
            cls(
                calibrations=stored,
                source_cancer_share=values.get("source_cancer_share"),
                n_image_training_spots=values.get("n_image_training_spots", 0),
                validation_split=values.get("validation_split"),
                validation_indices=_rows(values.get("validation_indices"), where),
                n_source_spots=values.get("n_source_spots"),
                training_profile=TrainingProfile.from_dict(values.get("training_profile")),
            ),
            where,
        )

    @classmethod
    def from_legacy(cls, meta: Mapping[str, Any], where: str = "model.json") -> FittedState | None:
        """The state of a model saved before it was one entry (format 1: loose entries, no validation rows)."""
        if not meta.get("is_trained"):
            return None
        calibration = Calibration.from_dict(meta.get("calibration"))
        return _checked(
            cls(
                calibrations=() if calibration is None else (calibration,),
                source_cancer_share=meta.get("source_cancer_share"),
                n_image_training_spots=meta.get("n_image_training_spots", 0),
                validation_split=meta.get("validation_split"),
                training_profile=TrainingProfile.from_dict(meta.get("training_profile")),
            ),
            where,
        )


def _rows(value: Any, where: str) -> np.ndarray | None:
    if value is None:
        return None
    rows = np.asarray(value)
    if rows.ndim != 1 or (rows.size and rows.dtype.kind not in "iu"):
        raise ValueError(f"{where}: fitted_state.validation_indices must be a list of row numbers.")
    return rows.astype(np.int64)


def _checked(state: FittedState, where: str) -> FittedState:
    """Ranges of the values read from a file, with messages naming the entry."""
    check_number(f"n_image_training_spots in {where}", state.n_image_training_spots, integer=True, low=0)
    share = state.source_cancer_share
    if share is not None:
        check_number(f"source_cancer_share in {where}", share, low=0, high=1, low_open=True, high_open=True)
    if state.validation_split not in (None, *VALIDATION_SPLITS):
        raise ValueError(
            f"{where}: validation_split must be one of {list(VALIDATION_SPLITS)} or null, got "
            f"{state.validation_split!r}."
        )
    if state.n_source_spots is not None:
        check_number(f"n_source_spots in {where}", state.n_source_spots, integer=True, low=1)
    rows = state.validation_indices
    if rows is not None and rows.size:
        high = state.n_source_spots if state.n_source_spots is not None else math.inf
        if rows.min() < 0 or rows.max() >= high:
            raise ValueError(f"{where}: fitted_state.validation_indices lie outside the training rows.")
    return state
