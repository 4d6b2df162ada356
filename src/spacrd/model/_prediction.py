"""Prediction for SpaCRD: the network over chunks of nearby spots, post-processing, and the documented outputs."""

from __future__ import annotations

import functools
import logging
import warnings
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd
import torch
from anndata import AnnData

from spacrd._constants import CALL_CATEGORIES, MODULE_KEYS, OBS_KEYS, UNS_KEYS
from spacrd._logging import quiet_third_party
from spacrd._validation import check_number
from spacrd.tl._adaptation import expression_neighbors
from spacrd.tl._postprocess import (
    DEFAULT_PROPAGATION,
    Call,
    PostprocessResult,
    PostprocessSettings,
    label_free_logits,
    postprocess,
)

from . import _io
from ._adata_inputs import check_target
from ._datamodule import inference_loader
from ._fitting import UNTRAINED_MESSAGE
from ._inputs import SpotInputs, locality_order
from ._protocols import ModelCore, Ranker
from ._ranking import ranked_by
from ._shift import section_depths, shift_report, unlike_training, warn_shift
from ._spatialdata import target_batch_key, target_table

if TYPE_CHECKING:
    from spatialdata import SpatialData

logger = logging.getLogger(__name__)

#: Spots per chunk at prediction on the CPU (each chunk's distinct neighbourhood spots are encoded once).
PREDICT_BATCH_SIZE = 8192
#: On a GPU, chunks take up to this share of its free memory, between these bounds.
GPU_MEMORY_SHARE, GPU_BATCH_BOUNDS = 0.25, (8192, 262_144)


class PredictionMixin:
    """``predict``, ``get_logits`` and ``get_latent_representation`` for :class:`~spacrd.model.SpaCRD`.

    Needs of the model class what :class:`~spacrd.model._protocols.ModelCore` lists, among it
    ``_calibration_for``/``_calibration_settings`` of :class:`~spacrd.model._fitting.FittedStateMixin`.
    """

    def _expression_graph(self, inputs: SpotInputs) -> np.ndarray:
        """Each section's expression kNN graph on the model's standardised genes, without densifying them."""
        return expression_neighbors(
            inputs.features, inputs.codes, column_weights=inputs.gene_stats.inverse_spread
        )

    def _prediction_batch_size(self: ModelCore, inputs: SpotInputs) -> int:
        """Spots per chunk: 8,192 on the CPU; on a GPU as many as a quarter of its free memory holds."""
        device = next(self.module.parameters()).device
        if device.type != "cuda":
            return PREDICT_BATCH_SIZE
        free, _ = torch.cuda.mem_get_info(device)
        # float32 activations per centre: its k tokens through attention (about a dozen (k, e) tensors),
        # the distinct spots' encoder outputs, and the dense part of the first layers per spot
        linear = [
            m
            for m in (self.module.fusion[0], *self.module.gene_encoder.net)
            if isinstance(m, torch.nn.Linear)
        ]
        k, width = inputs.neighbors.shape[1], linear[0].out_features
        hidden = max(m.out_features for m in linear)
        per_centre = 4 * (12 * k * width + 4 * hidden + 2 * self.module.n_genes // 8)
        low, high = GPU_BATCH_BOUNDS
        return int(np.clip(GPU_MEMORY_SHARE * free / per_centre, low, high))

    @torch.inference_mode()
    def _network_outputs(
        self: ModelCore, inputs: SpotInputs, batch_size: int | None = None
    ) -> dict[str, np.ndarray]:
        """Logits ``(n,)``, the members' logits ``(n, n_members)`` and latent means ``(n, n_latent)``, chunk by chunk."""
        self.module.eval()
        order = (
            np.arange(inputs.n_obs)
            if inputs.coordinates is None
            else locality_order(inputs.coordinates, inputs.codes)
        )
        logits = np.empty(inputs.n_obs, dtype=np.float32)
        members = np.empty((inputs.n_obs, self.module.n_members), dtype=np.float32)
        latent = np.empty((inputs.n_obs, self.module.vae_encoder.mean.out_features), dtype=np.float32)
        chunks = inference_loader(
            self._dataset(inputs, sparse_genes=True), order, batch_size or self._prediction_batch_size(inputs)
        )
        with quiet_third_party():  # torch's notice that sparse CSR tensors are in beta
            for centres, batch in chunks:
                outputs = self.module.inference(**self.module._get_inference_input(batch))
                logits[centres] = outputs[MODULE_KEYS.LOGITS].float().cpu().numpy()
                members[centres] = outputs[MODULE_KEYS.MEMBER_LOGITS].float().cpu().numpy()
                latent[centres] = outputs[MODULE_KEYS.QZ_MEAN].float().cpu().numpy()
        return {MODULE_KEYS.LOGITS: logits, MODULE_KEYS.MEMBER_LOGITS: members, MODULE_KEYS.QZ_MEAN: latent}

    def predict(
        self: ModelCore,
        adata: AnnData | SpatialData | None = None,
        batch_size: int | None = None,
        *,
        prob_key: str = OBS_KEYS.PROB,
        call_key: str = OBS_KEYS.CALL,
        uncertainty_key: str = OBS_KEYS.UNCERTAINTY,
        uns_key: str = UNS_KEYS.PREDICTION,
        threshold: float | Literal["gmm"] | None = None,
        min_gene_overlap: float = 0.5,
        spatial_smoothing: bool = True,
        expression_propagation: float = DEFAULT_PROPAGATION,
        prior_shift: bool | None = None,
        call: Call | None = None,
        batch_key: str | None = None,
        table_key: str = "table",
        image_key: str | Mapping[str, str] | None = None,
        ranking_model: Ranker | None = None,
    ) -> np.ndarray:
        """Cancer probability of every spot of ``adata``, with a label-free cancer / non-cancer call.

        The target needs no labels. Its genes are matched to the model's by name (missing genes are
        filled with zeros and counted in a warning); its neighbour sets and per-section statistics are
        computed from the target itself. The logits then go through one post-processing chain:
        propagation over each section's expression graph, spatial smoothing, the calibration stored for
        these propagation and smoothing settings (:meth:`train` fits the one for the defaults; for other
        settings call :meth:`calibrate` first, else this is an error saying so), the prior shift and the
        call. Nothing is fitted or refitted here.

        Parameters
        ----------
        adata
            Target AnnData with raw counts in the set-up ``layer`` (or ``X``) and coordinates in
            ``obsm[spatial_key]``; ``None`` predicts the registered AnnData. A view gets the results
            after becoming a copy (with a warning); the AnnData it was sliced from is not changed. An
            image model predicts a target without ``obsm[image_key]`` from expression alone (with a
            warning), as for spots whose embedding row is NaN. A SpatialData is predicted through its
            table (see ``table_key``).
        batch_size
            Spots per chunk (default 8,192 on the CPU; on a GPU as many as a quarter of its free memory
            holds, up to 262,144). Chunks follow the tissue, so each chunk's distinct neighbourhood spots
            are encoded once.
        prob_key
            ``obs`` column written with the probabilities (float in ``[0, 1]``).
        call_key
            ``obs`` column written with the call (categorical ``"non-cancer"``/``"cancer"``).
        uncertainty_key
            ``obs`` column written with the per-spot uncertainty (float in ``[0, 0.5]``): the standard
            deviation of the probabilities of the model's bootstrap members (``n_members`` classifier heads
            trained on different resamples of the training spots), each through the same
            post-processing. High where the training data do not pin the call down; it does not include
            the noise of a spot's own label. Not written for a model of one member (models saved before
            members existed).
        uns_key
            ``uns`` key written with ``{"threshold", "threshold_method", "call", "level", "cancer_share",
            "cancer_share_interval", "separation", "shift", "prob_key", "call_key", "spatial_smoothing",
            "expression_propagation", "prior_shift", "version"}``; ``cancer_share`` maps each section to
            its estimated share of cancer spots (empty for ``call="prior"`` without ``prior_shift``),
            ``cancer_share_interval`` each section with a mixture level to the 5–95 % bootstrap interval
            of that share, ``separation`` each section whose scores a mixture was fitted to
            (``call="mixture"`` or ``"auto"``) to how far apart its two components lie (Ashman's D),
            ``level`` each section to where its level came from (``"mixture"``,
            ``"source"``, ``"prior"``), and ``shift`` holds the shift detector's numbers: per section
            the median counts and detected genes per spot, the share of scores outside the training
            range and the called share, beside the training sections' (see below). The plots of
            :mod:`spacrd.pl` read it.
        threshold
            With ``call="prior"``: probability threshold of the call. ``None`` calls cancer where the
            probability is at least one half, which is a label-free Bayes call once ``prior_shift`` has
            adapted the probabilities to the section's own cancer share; ``"gmm"`` takes the crossing of
            a two-component Gaussian mixture on the pooled probabilities;
            a float is used as it is. Passing it without ``call`` means ``call="prior"``.
        min_gene_overlap
            Smallest fraction of the model's genes that must be in the target.
        spatial_smoothing
            Average each spot's logit over its neighbourhood in the target (the same ``k`` spatial
            neighbours the model attends to). Cancer regions are spatially contiguous.
        expression_propagation
            Weight ``alpha`` of label propagation of the logits over each section's own expression
            neighbour graph (10 nearest spots on 10 principal components of the model's preprocessed
            genes), applied before the spatial smoothing.
            Spots of one tumour clone resemble each other more than they resemble the training
            patients, so their scores are pulled together. ``0`` turns it off. Settings of propagation
            or smoothing other than the defaults need a calibration fitted for them:
            ``model.calibrate(expression_propagation=..., spatial_smoothing=...)`` first.
        prior_shift
            With ``call="prior"`` (default there): re-weight the probabilities to each target section's
            cancer share, estimated by EM from the calibrated probabilities themselves.
            ``prior_shift=False`` is the calibration alone, as
            ``call="source"``. Passing it without ``call`` means ``call="prior"``.
        call
            Where the level of the probabilities, and so the call (probability ≥ 0.5), comes from.
            ``"auto"`` (the default): from each target section's own scores for the sections unlike the
            training sections (median counts or detected genes per spot outside the training range, or
            a different gene panel: the shift detector's test below) and for those whose scores form
            two populations far apart (the two components of a mixture fitted to them lie at least 3
            apart in Ashman's D, ``uns[uns_key]["separation"]``: the cut between two such populations
            is better placed than a calibration fitted on other sections), from the calibration fitted
            in :meth:`train` for the others. ``"mixture"``: from every section's own scores, cut where a
            two-component mixture fitted to its label-free logits crosses (as :func:`spacrd.tl.call`
            with ``method="mixture"`` does on a stored prediction); a section where no mixture can be
            fitted keeps the calibration's level. Depth and panel move every logit of a target, which a
            calibration fitted on the source cannot know; the target's own distribution moves with them.
            ``"source"``: the calibration alone. ``"prior"``: the calibration with ``prior_shift`` and
            ``threshold`` (the default before ``call`` existed). ``"auto"`` was chosen by nested
            selection on training sections with thinned inner targets (``benchmarks/platform_shift.py``).

            Whatever the call, the target is compared with the training sections (the shift detector):
            a section whose median counts or detected genes per spot lie outside half the lowest to twice
            the highest training section's, more than a quarter of whose scores lie outside the training
            spots' 1–99 % range, or a target with under 90 % of the model's genes, warns with the
            numbers; so does a section called at least 95 % or at most 5 % cancer.
        batch_key
            ``obs`` column with each target spot's section; default: the set-up ``batch_key`` when the
            target has it. A target without it is one section, unless it looks like several (then it
            is an error naming the candidate columns); a SpatialData table without it has one section
            per shapes element it annotates (its ``region_key``), as in :meth:`setup_spatialdata`.
        table_key, image_key
            For a SpatialData ``adata``: the results go into ``sdata.tables[table_key]``, which gets
            spot centres. A model with histology reads the table's embeddings (computed beforehand by
            :func:`spacrd.pp.image_features`); for a table without them, ``image_key`` names the H&E
            image(s) to compute the ``histology_stats`` embeddings of, as in :meth:`setup_spatialdata`.
            Without either the spots are predicted from expression alone, with a warning.
        ranking_model
            A second trained SpaCRD whose scores order the spots, typically one trained with
            ``section_scaling="none"``: unscaled expression ranks spots better across patients (see
            the benchmark's ``spacrd_ranked`` row), but its level moves from section to section, so
            its own probabilities and call are unreliable. Within each section the spots
            keep this model's probabilities, call share and threshold, re-assigned in the order of the
            ranking model's label-free logits (its :meth:`get_logits`, with this call's
            propagation and smoothing: a quantile match); the uncertainty is
            the spread over member pairs, member ``i`` of this model's probabilities ordered by member
            ``i`` of the ranking model. ``None``: this model ranks.

        Returns
        -------
        ``(n_spots,)`` float array of cancer probabilities.

        """
        state = self._trained_state()
        settings = self._calibration_settings(
            expression_propagation, spatial_smoothing, call=call, prior_shift=prior_shift, threshold=threshold
        )
        calibration = self._calibration_for(settings)  # before any work: an error says how to fit it
        if batch_size is not None:
            check_number("batch_size", batch_size, integer=True, low=1)
        check_number("min_gene_overlap", min_gene_overlap, low=0, high=1)
        table, target, batch_key = self._target(adata, batch_key, table_key, image_key)
        _check_output_keys(self.setup_args, target, prob_key, call_key, uncertainty_key, uns_key, batch_key)
        inputs = self._inputs(table, min_gene_overlap, batch_key)
        profile = state.training_profile
        outputs = self._network_outputs(inputs, batch_size)
        result = postprocess(
            outputs[MODULE_KEYS.LOGITS],
            inputs.neighbors,
            inputs.padding,
            inputs.sections,
            settings,
            calibration,
            state.source_cancer_share,
            lambda: self._expression_graph(inputs),
            member_logits=outputs[MODULE_KEYS.MEMBER_LOGITS],
            target_level_sections=unlike_training(profile, *section_depths(inputs), inputs.gene_overlap),
        )
        assert result.logits is not None  # postprocess always returns the label-free logits
        report = shift_report(
            profile, inputs, result.logits, result.called, inputs.gene_overlap, result.two_populations
        )
        warn_shift(report)
        if ranking_model is not None:
            result = ranked_by(
                ranking_model, target, inputs.sections, result, settings, min_gene_overlap, batch_key
            )
        _write_prediction(target, result, settings, prob_key, call_key, uns_key, uncertainty_key, report)
        return result.probabilities

    def get_logits(
        self: ModelCore,
        adata: AnnData | SpatialData | None = None,
        batch_size: int | None = None,
        *,
        expression_propagation: float = DEFAULT_PROPAGATION,
        spatial_smoothing: bool = True,
        return_members: bool = False,
        min_gene_overlap: float = 0.5,
        batch_key: str | None = None,
        table_key: str = "table",
        image_key: str | Mapping[str, str] | None = None,
    ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """Label-free logits of every spot: the network's, after propagation and smoothing, before calibration.

        These are the scores :meth:`predict` calibrates and calls, and the ones by which
        ``predict(ranking_model=...)`` orders another model's probabilities; their ranking within a
        section does not depend on any calibration. Arguments as in :meth:`predict`.

        Returns
        -------
        ``(n_spots,)`` float logits; with ``return_members=True`` also the ``(n_spots, n_members)``
        logits of the bootstrap members, through the same steps.

        """
        self._check_if_trained(warn=False, message=UNTRAINED_MESSAGE)
        settings = PostprocessSettings(expression_propagation, spatial_smoothing, call="source")
        if batch_size is not None:
            check_number("batch_size", batch_size, integer=True, low=1)
        check_number("min_gene_overlap", min_gene_overlap, low=0, high=1)
        table, _, batch_key = self._target(adata, batch_key, table_key, image_key)
        inputs = self._inputs(table, min_gene_overlap, batch_key)
        outputs = self._network_outputs(inputs, batch_size)
        graph = functools.cache(lambda: self._expression_graph(inputs))
        logits = label_free_logits(
            outputs[MODULE_KEYS.LOGITS], inputs.neighbors, inputs.padding, settings, graph
        )
        if not return_members:
            return logits
        members = outputs[MODULE_KEYS.MEMBER_LOGITS]
        return logits, label_free_logits(members, inputs.neighbors, inputs.padding, settings, graph)

    def get_latent_representation(
        self: ModelCore,
        adata: AnnData | SpatialData | None = None,
        batch_size: int | None = None,
        *,
        batch_key: str | None = None,
        table_key: str = "table",
        image_key: str | Mapping[str, str] | None = None,
    ) -> np.ndarray:
        """Posterior mean of the fused VAE latent, ``(n_spots, n_latent)``; arguments as in :meth:`~spacrd.model.SpaCRD.predict`."""
        self._check_if_trained(warn=False, message=UNTRAINED_MESSAGE)
        table, _, batch_key = self._target(adata, batch_key, table_key, image_key)
        inputs = self._inputs(table, batch_key=batch_key)
        return self._network_outputs(inputs, batch_size)[MODULE_KEYS.QZ_MEAN]

    def _target(
        self: ModelCore,
        adata: Any,
        batch_key: str | None,
        table_key: str,
        image_key: str | Mapping[str, str] | None,
    ) -> tuple[AnnData | None, AnnData, str | None]:
        """A prediction's target resolved: the AnnData to read (``None``: the registered one), the one to write and the section column."""
        check_target(self.adata, adata)
        data, adata = adata, target_table(self.input_spec, self.adata, adata, table_key, image_key)
        batch_key = target_batch_key(self.setup_args["batch_key"], data, adata, batch_key)
        if adata is not None and not isinstance(adata, AnnData):
            raise TypeError(f"Expected an AnnData or a SpatialData, got {type(adata).__name__}.")
        return adata, (self.adata if adata is None else adata), batch_key


def _check_output_keys(
    setup_args: Mapping[str, Any],
    target: AnnData,
    prob_key: str,
    call_key: str,
    uncertainty_key: str,
    uns_key: str,
    batch_key: str | None,
) -> None:
    """Output columns must differ from each other and from the columns the model reads; overwriting warns."""
    named = (("prob_key", prob_key), ("call_key", call_key), ("uncertainty_key", uncertainty_key))
    for name, key in (*named, ("uns_key", uns_key)):
        if not isinstance(key, str) or not key:
            raise ValueError(f"`{name}` must be a non-empty string, got {key!r}.")
    for i, (name, key) in enumerate(named):
        for other, other_key in named[i + 1 :]:
            if key == other_key:
                raise ValueError(
                    f"`{name}` and `{other}` are both {key!r}; they must name different columns."
                )
    args = setup_args
    used = {args["batch_key"], args["labels_key"], batch_key} - {None}
    clash = sorted({prob_key, call_key, uncertainty_key} & used)
    if clash:
        raise ValueError(
            f"Output column(s) {clash} would overwrite columns the model reads (sections, labels)."
        )
    previous = target.uns.get(uns_key, {})
    ours = (
        {previous.get("prob_key"), previous.get("call_key"), previous.get("uncertainty_key")}
        if isinstance(previous, Mapping)
        else set()
    )
    theirs = [k for k in (prob_key, call_key, uncertainty_key) if k in target.obs and k not in ours]
    if theirs:
        warnings.warn(
            f"obs{theirs} exist and were not written by a previous predict; they are overwritten.",
            UserWarning,
            stacklevel=3,
        )


def _write_prediction(
    target: AnnData,
    result: PostprocessResult,
    settings: PostprocessSettings,
    prob_key: str,
    call_key: str,
    uns_key: str,
    uncertainty_key: str,
    shift: dict,
) -> None:
    """Write the documented outputs of :meth:`SpaCRD.predict` into ``target``."""
    if target.is_view:
        warnings.warn(
            "adata is a view (e.g. `adata[mask]`): the results are written into it, which makes it a copy; "
            "the AnnData it was sliced from is not changed. Predict on the full AnnData, or write the "
            "returned probabilities into it yourself.",
            UserWarning,
            stacklevel=3,
        )
        target._init_as_actual(target.copy())  # as scvi-tools' copy_if_view; avoids anndata's own warning
    target.obs[prob_key] = result.probabilities
    if result.uncertainty is not None:
        target.obs[uncertainty_key] = result.uncertainty
    target.obs[call_key] = pd.Categorical.from_codes(
        result.called.astype(np.int8), categories=list(CALL_CATEGORIES)
    )
    target.uns[uns_key] = {
        "threshold": result.threshold,
        "threshold_method": result.threshold_method,
        "call": settings.call,
        "level": result.level,
        "cancer_share": result.cancer_share,
        "cancer_share_interval": {k: list(v) for k, v in result.cancer_share_interval.items()},
        "separation": dict(result.separation),
        "shift": shift,
        "spatial_smoothing": settings.spatial_smoothing,
        "expression_propagation": float(settings.expression_propagation),
        "prior_shift": settings.prior_shift,
        "prob_key": prob_key,
        "call_key": call_key,
        "uncertainty_key": uncertainty_key if result.uncertainty is not None else None,
        "version": _io.package_version(),
    }
