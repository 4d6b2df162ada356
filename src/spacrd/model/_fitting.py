"""The fitted state of a SpaCRD model: built at the end of ``train()``, extended by ``calibrate()``."""

from __future__ import annotations

import functools
import logging
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from spacrd._constants import MODULE_KEYS, UNLABELLED
from spacrd._validation import check_number, check_obs_key
from spacrd.tl._calibration import Calibration, fit_calibration
from spacrd.tl._postprocess import (
    DEFAULT_CALL,
    DEFAULT_MIN_SEPARATION,
    DEFAULT_PROPAGATION,
    PostprocessSettings,
    label_free_logits,
)

from ._adata_inputs import check_target
from ._fitted import FittedState
from ._labels import label_codes
from ._protocols import ModelCore
from ._shift import training_profile
from ._spatialdata import target_batch_key, target_table

if TYPE_CHECKING:
    from anndata import AnnData
    from spatialdata import SpatialData

    from spacrd.tl._postprocess import Call

    from ._inputs import SpotInputs
    from ._shift import TrainingProfile

logger = logging.getLogger(__name__)

#: Fewer labelled validation spots than this: the calibration is fitted on all labelled training spots,
#: and with fewer labelled spots than this in all, the fit warns that it is unreliable.
MIN_CALIBRATION_SPOTS = 20
#: ``Calibration.validation`` of a calibration fitted on labelled spots passed to ``calibrate(adata)``.
GIVEN = "given"
UNTRAINED_MESSAGE = (
    "This SpaCRD model is not trained (an interrupted `train()` leaves it untrained). Call `model.train()`, "
    "or load a trained model with `SpaCRD.load(dir_path)`."
)


class FittedStateMixin:
    """``calibrate`` and the fitted state of :class:`~spacrd.model.SpaCRD`.

    Needs of the model class what :class:`~spacrd.model._protocols.ModelCore` lists, among it
    ``_network_outputs``/``_expression_graph`` of :class:`~spacrd.model._prediction.PredictionMixin`.
    """

    fitted_state: FittedState | None

    # ------------------------------------------------------------------ read-only views of the state
    @property
    def calibration_(self) -> Calibration | None:
        """The calibration fitted in training (``fitted_state.calibration``); read-only."""
        return None if self.fitted_state is None else self.fitted_state.calibration

    @property
    def source_cancer_share_(self) -> float | None:
        """``fitted_state.source_cancer_share``; read-only."""
        return None if self.fitted_state is None else self.fitted_state.source_cancer_share

    @property
    def training_profile_(self) -> TrainingProfile | None:
        """``fitted_state.training_profile``; read-only."""
        return None if self.fitted_state is None else self.fitted_state.training_profile

    @property
    def n_image_training_spots_(self) -> int:
        """``fitted_state.n_image_training_spots``; read-only."""
        return 0 if self.fitted_state is None else self.fitted_state.n_image_training_spots

    @property
    def validation_split_(self) -> str | None:
        """``fitted_state.validation_split``; read-only."""
        return None if self.fitted_state is None else self.fitted_state.validation_split

    # ------------------------------------------------------------------ calibrate
    def calibrate(
        self: ModelCore,
        adata: AnnData | SpatialData | None = None,
        *,
        expression_propagation: float = DEFAULT_PROPAGATION,
        spatial_smoothing: bool = True,
        labels_key: str | None = None,
        cancer_categories: Sequence[str] | None = None,
        batch_key: str | None = None,
        batch_size: int | None = None,
        min_gene_overlap: float = 0.5,
        table_key: str = "table",
        image_key: str | Mapping[str, str] | None = None,
        **settings: Any,
    ) -> Calibration:
        """Fit, or return, the calibration for the post-processing settings ``expression_propagation`` and ``spatial_smoothing``.

        :meth:`predict` applies only a calibration stored in ``model.fitted_state`` for its settings:
        :meth:`train` fits one for the defaults (and for its ``calibrate_for``); this fits one for other
        settings and stores it beside them (one per setting: a new one replaces the one stored for the
        same settings), so that ``model.predict(target, **settings)`` uses it, and :meth:`save` keeps it.

        Parameters
        ----------
        adata
            ``None`` (or the registered AnnData): the training AnnData's held-out validation spots, as in
            :meth:`train` (returns the stored calibration when there is one for these settings). A model
            loaded without its training data has none: pass labelled spots instead, or load it with
            ``SpaCRD.load(dir_path, adata=source)``. Any other AnnData (or SpatialData, through its
            table) is read like a prediction target, and the calibration is fitted on all its labelled
            spots (``Calibration.validation == "given"``); they should be spots the model was not
            trained on.
        expression_propagation, spatial_smoothing
            The post-processing the calibration is for, as in :meth:`predict`.
        labels_key, cancer_categories
            For an ``adata`` other than the registered one: its ``obs`` column of cancer labels and the
            values meaning cancer, as in :meth:`setup_anndata` (default: the set-up ones).
        batch_key, batch_size, min_gene_overlap, table_key, image_key
            As in :meth:`predict`, for an ``adata`` other than the registered one.
        **settings
            :meth:`predict`'s other post-processing arguments (``call``, ``prior_shift``,
            ``threshold``): checked, not used (the calibration comes before them), so that one dict of
            settings can be passed to both.

        Returns
        -------
        The :class:`spacrd.tl.Calibration` now stored for these settings.

        Examples
        --------
        >>> settings = {"expression_propagation": 0.0, "spatial_smoothing": False}
        >>> model.calibrate(labelled, **settings)  # doctest: +SKIP
        >>> model.predict(target, **settings)  # doctest: +SKIP

        """
        state = self._trained_state()
        chosen = self._calibration_settings(expression_propagation, spatial_smoothing, **settings)
        table = None
        if adata is not None and adata is not self.adata:
            check_target(self.adata, adata)
            table = target_table(self.input_spec, self.adata, adata, table_key, image_key)
        if table is None or table is self.adata:  # the training data: its validation spots
            stored = state.calibration_for(chosen.expression_propagation, chosen.spatial_smoothing)
            if stored is not None:
                return stored
            inputs, rows, how = self._source_validation()
            logger.info("Fitting a calibration on the source's validation spots for %s.", _named(chosen))
        else:
            batch_key = target_batch_key(self.setup_args["batch_key"], adata, table, batch_key)
            inputs = _labelled_inputs(self, table, labels_key, cancer_categories, batch_key, min_gene_overlap)
            rows, how = np.flatnonzero(inputs.labels != UNLABELLED), GIVEN
        if batch_size is not None:
            check_number("batch_size", batch_size, integer=True, low=1)
        raw = self._network_outputs(inputs, batch_size)[MODULE_KEYS.LOGITS]
        logits = label_free_logits(
            raw, inputs.neighbors, inputs.padding, chosen, lambda: self._expression_graph(inputs)
        )
        calibration = calibration_on(inputs.labels, logits, rows, how, chosen)
        self.fitted_state = state.with_calibration(calibration)
        return calibration

    def _calibration_settings(
        self,
        expression_propagation: float = DEFAULT_PROPAGATION,
        spatial_smoothing: bool = True,
        *,
        call: Call | None = None,
        prior_shift: bool | None = None,
        threshold: Any = None,
        min_separation: float = DEFAULT_MIN_SEPARATION,
    ) -> PostprocessSettings:
        """:meth:`predict`'s post-processing arguments, checked, as ``PostprocessSettings``."""
        if call is None:  # prior_shift or threshold alone: the call they belong to, as before `call`
            call = "prior" if threshold is not None or prior_shift is not None else DEFAULT_CALL
        return PostprocessSettings(
            expression_propagation, spatial_smoothing, prior_shift, threshold, call, min_separation
        )

    def _trained_state(self: ModelCore) -> FittedState:
        """The fitted state of a trained model; an error saying what to do for an untrained one."""
        self._check_if_trained(warn=False, message=UNTRAINED_MESSAGE)
        if self.fitted_state is None:  # trained, but train() stopped before building its state
            raise RuntimeError(
                "This SpaCRD model has trained weights but no fitted state (its calibration and training "
                "profile): `train()` stopped before the end. Call `model.train()` again, or load a trained "
                "model with `SpaCRD.load(dir_path)`."
            )
        return self.fitted_state

    def _calibration_for(self: ModelCore, settings: PostprocessSettings) -> Calibration | None:
        """The stored calibration for ``settings``; an error saying how to fit one when there is none."""
        state = self.fitted_state
        if state is None or not state.calibrations:
            return None  # saved without a calibration: uncalibrated logits, as before
        found = state.calibration_for(settings.expression_propagation, settings.spatial_smoothing)
        if found is not None:
            return found
        fitted = "; ".join(_named(c) for c in state.calibrations)
        wanted = _named(settings)
        call = f"model.calibrate({wanted})"
        if self.adata is not None and state.matches_source(self.adata.n_obs):
            how = f"`{call}` fits it on the training data's validation spots"
        else:
            how = (
                "this model has no validation spots of its training data at hand (loaded without its "
                "training data, or saved by an older spacrd), so fit it on labelled spots it was not "
                f"trained on, `model.calibrate(labelled_adata, {wanted})`"
            )
            if state.validation_indices is not None and self.adata is None:
                how += f", or load it with `SpaCRD.load(dir_path, adata=source)` and call `{call}`"
        raise ValueError(
            f"No calibration is stored for {wanted} (this model has calibrations for {fitted}); predict "
            f"applies only a stored one. Call `model.calibrate(...)` first: {how}. Then predict with the "
            "same settings."
        )

    def _source_validation(self: ModelCore) -> tuple[SpotInputs, np.ndarray, str]:
        """The registered source's inputs, its validation rows and how they were held out."""
        state = self._trained_state()
        if self.adata is None:
            raise ValueError(
                "This model has no registered AnnData (it was loaded without its training data), so "
                "`model.calibrate()` has no validation spots; pass labelled spots the model was not "
                "trained on, `model.calibrate(labelled_adata, ...)`, or load the model with "
                "`SpaCRD.load(dir_path, adata=source)`."
            )
        if state.validation_indices is None or not state.matches_source(self.adata.n_obs):
            raise ValueError(
                "The registered AnnData is not the one this model was trained on, or the model was saved "
                "without its validation spots (by an older spacrd), so `model.calibrate()` does not know "
                "which spots were held out; pass labelled spots it was not trained on, "
                "`model.calibrate(labelled_adata, ...)`."
            )
        return self._inputs(None), state.validation_indices, state.validation_split or "random"

    def _fitted_state(
        self: ModelCore,
        inputs: SpotInputs,
        val_idx: np.ndarray,
        how: str,
        n_image_spots: int,
        source_cancer_share: float,
        calibrate_for: Sequence[PostprocessSettings] = (),
    ) -> FittedState:
        """The state of a fit of ``inputs`` (the training spots), built once at the end of ``train()``."""
        raw = self._network_outputs(inputs)[MODULE_KEYS.LOGITS]
        graph: Callable[[], np.ndarray] = functools.cache(lambda: self._expression_graph(inputs))
        default = PostprocessSettings()
        default_logits = label_free_logits(raw, inputs.neighbors, inputs.padding, default, graph)
        state = FittedState(
            calibrations=(calibration_on(inputs.labels, default_logits, val_idx, how, default),),
            source_cancer_share=source_cancer_share,
            n_image_training_spots=n_image_spots,
            validation_split=how,
            validation_indices=val_idx,
            n_source_spots=inputs.n_obs,
            training_profile=training_profile(inputs, default_logits),
        )
        for settings in calibrate_for:
            if state.calibration_for(settings.expression_propagation, settings.spatial_smoothing) is None:
                logits = label_free_logits(raw, inputs.neighbors, inputs.padding, settings, graph)
                state = state.with_calibration(calibration_on(inputs.labels, logits, val_idx, how, settings))
        return state


def calibration_on(
    labels: np.ndarray, logits: np.ndarray, rows: np.ndarray, how: str, settings: PostprocessSettings
) -> Calibration:
    """Logit scale and shift on the labelled spots among ``rows`` for logits post-processed with ``settings``.

    Validation rows (``how`` a split) with fewer than :data:`MIN_CALIBRATION_SPOTS` labelled spots or one
    class fall back to all labelled spots (``"training"``); fewer than that in all warns.
    """
    rows = np.asarray(rows, dtype=np.int64)
    rows = rows[labels[rows] != UNLABELLED]
    if how != GIVEN and (rows.size < MIN_CALIBRATION_SPOTS or np.unique(labels[rows]).size < 2):
        rows, how = np.flatnonzero(labels != UNLABELLED), "training"
    if np.unique(labels[rows]).size < 2:
        counts = np.bincount(labels[rows], minlength=2)
        raise ValueError(
            f"A calibration needs labelled spots of both classes; found {counts[1]} cancer and {counts[0]} "
            "non-cancer. Pass spots of both (`labels_key`, `cancer_categories`)."
        )
    if rows.size < MIN_CALIBRATION_SPOTS:
        message = "its scale and shift are barely constrained: probabilities may be pushed to 0 or 1"
        warnings.warn(
            f"The calibration is fitted on {rows.size} labelled spots, fewer than {MIN_CALIBRATION_SPOTS}; "
            f"{message}. Label more spots.",
            UserWarning,
            stacklevel=3,
        )
    scale, shift = fit_calibration(logits[rows], labels[rows])
    return Calibration(
        scale, shift, int(rows.size), settings.expression_propagation, settings.spatial_smoothing, how
    )


def _labelled_inputs(
    model: ModelCore,
    table: AnnData,
    labels_key: str | None,
    cancer_categories: Sequence[str] | None,
    batch_key: str | None,
    min_gene_overlap: float,
) -> SpotInputs:
    """A labelled AnnData read like a prediction target, with its labels mapped as at set-up."""
    args = model.setup_args
    key = labels_key if labels_key is not None else args["labels_key"]
    if key is None:
        raise ValueError(
            "This model was set up without labels; pass the labels' obs column as `labels_key=`."
        )
    check_obs_key(table, key, "labels_key")
    if cancer_categories is None and key == args["labels_key"]:
        cancer_categories = args["cancer_categories"]
    inputs = model._inputs(table, min_gene_overlap, batch_key)
    inputs.labels = label_codes(table.obs[key], cancer_categories)
    return inputs


def _named(settings: Calibration | PostprocessSettings) -> str:
    return (
        f"expression_propagation={float(settings.expression_propagation)!r}, "
        f"spatial_smoothing={bool(settings.spatial_smoothing)!r}"
    )
