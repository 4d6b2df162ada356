"""Staged training: the table of SpaCRD's three stages, the Lightning training plan and the training mixin."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, cast

import numpy as np
import torch
from scvi import settings
from scvi.module.base import LossOutput
from scvi.train import TrainingPlan
from torchmetrics import Metric
from torchmetrics.classification import BinaryAUROC, BinaryAveragePrecision

from spacrd._constants import UNLABELLED
from spacrd._logging import quiet_third_party, stage_progress_bar
from spacrd._stages import STAGES, Stage
from spacrd.module import SpaCRDModule

from ._adata_inputs import label_summary, source_thinning
from ._datamodule import (
    AUTO_SPOTS_PER_EPOCH,
    NeighbourhoodDataModule,
    Validation,
    validation_split,
)
from ._protocols import ModelCore
from ._runner import distributed_kwargs, run_interruptible
from ._thinning import DEFAULT_DEPTH_AUGMENTATION, check_thinning
from ._training_checks import check_train_arguments, check_trainer_kwargs, check_training_labels

if TYPE_CHECKING:
    import pandas as pd

    from ._fitted import FittedState

logger = logging.getLogger(__name__)


class SpaCRDTrainingPlan(TrainingPlan):
    """scvi-tools training plan for one SpaCRD stage.

    Logs ``train_loss``/``validation_loss`` and the stage's named loss terms (``contrastive_loss``,
    ``fused_loss``, ``classification_loss``) per epoch; in the classifier stage also the ROC AUC and
    average precision of the labelled spots (``auroc_train``, ``auroc_validation``, ``ap_train``,
    ``ap_validation``, :mod:`torchmetrics`, synchronised across processes).

    The losses are summed over the epoch's batches here and logged once at the end of the epoch: the
    same weighted means (by centre spots) that Lightning's ``on_epoch`` logging computes, without its
    per-call bookkeeping, which cost a millisecond for every value of every step. Adam runs its
    multi-tensor (``foreach``) implementation, which computes the same update in fewer kernel calls.

    Parameters
    ----------
    module
        The :class:`~spacrd.module.SpaCRDModule`.
    stage
        ``"align"``, ``"fuse"`` or ``"classify"``.
    **kwargs
        Passed to :class:`scvi.train.TrainingPlan` (``lr``, ``weight_decay``, ``optimizer``...).

    """

    def __init__(self, module: SpaCRDModule, stage: Stage, **kwargs):
        kwargs.setdefault("eps", 1e-8)
        kwargs.setdefault("n_epochs_kl_warmup", None)
        super().__init__(module, stage=stage, **kwargs)
        self.stage = stage
        spec = next(spec for spec in STAGES if spec.name == stage)
        self._inference_kwargs = {"centre_only": not spec.uses_neighbors, "classify": stage == "classify"}
        #: Per mode, the epoch's sums of each logged loss times its batch's centre spots, and those spots.
        self._epoch_sums: dict[str, dict[str, torch.Tensor]] = {"train": {}, "validation": {}}
        self._epoch_spots: dict[str, int] = {"train": 0, "validation": 0}
        #: Ranking metrics that received labelled spots this epoch (only those are logged).
        self._ranked: set[str] = set()
        if stage == "classify":
            self.ranking = torch.nn.ModuleDict(
                {
                    f"{name}_{mode}": metric()
                    for name, metric in (("auroc", BinaryAUROC), ("ap", BinaryAveragePrecision))
                    for mode in ("train", "validation")
                }
            )

    def _optimizer_creator_fn(self, optimizer_cls):
        """scvi-tools' Adam/AdamW creator with ``foreach=True`` (on the CPU too, where it is not the default)."""
        return lambda params: optimizer_cls(
            params, lr=self.lr, eps=self.eps, weight_decay=self.weight_decay, foreach=True
        )

    def forward(self, *args, **kwargs):
        """Run the module: only the centre spots in the alignment stage, no classifier before its stage."""
        return self.module(*args, **kwargs, inference_kwargs=self._inference_kwargs)

    def training_step(self, batch, batch_idx):
        """One optimisation step; losses are averaged over centre spots (a batch's ``B``, not its ``U`` spots)."""
        _, _, loss_output = self.forward(batch, loss_kwargs=self.loss_kwargs)
        self._record("train", loss_output)
        return loss_output.loss

    def validation_step(self, batch, batch_idx):
        """Validation losses and metrics of one batch."""
        _, _, loss_output = self.forward(batch, loss_kwargs=self.loss_kwargs)
        self._record("validation", loss_output)

    def on_train_epoch_start(self) -> None:
        self._start_epoch("train")

    def on_validation_epoch_start(self) -> None:
        self._start_epoch("validation")

    def on_train_epoch_end(self) -> None:
        self._log_epoch("train", prog_bar=True)

    def on_validation_epoch_end(self) -> None:
        self._log_epoch("validation")

    def _start_epoch(self, mode: str) -> None:
        self._epoch_sums[mode], self._epoch_spots[mode] = {}, 0
        self._ranked.difference_update({key for key in self._ranked if key.endswith(f"_{mode}")})

    def _record(self, mode: str, loss_output: LossOutput) -> None:
        """Add a batch's losses to the epoch's sums and its labelled spots to the ranking metrics."""
        n_obs = loss_output.n_obs_minibatch
        values = {f"{mode}_loss": loss_output.loss, **self._named_losses(loss_output, mode)}
        sums = self._epoch_sums[mode]
        for key, value in values.items():
            # as Lightning accumulates an on_epoch mean: a float32 sum of value * batch size
            previous = sums.get(key, torch.zeros((), dtype=torch.get_default_dtype(), device=value.device))
            sums[key] = previous + value.detach() * n_obs
        self._epoch_spots[mode] += n_obs
        self.compute_and_log_metrics(loss_output, None, mode)

    @staticmethod
    def _named_losses(loss_output: LossOutput, mode: str) -> dict[str, torch.Tensor]:
        return {f"{key}_{mode}": value for key, value in loss_output.extra_metrics.items()}

    def _log_epoch(self, mode: str, prog_bar: bool = False) -> None:
        """Log the epoch's weighted mean of every loss (over all processes) and its ranking metrics."""
        spots = self._epoch_spots[mode]
        if not spots:
            return
        for key, total in self._epoch_sums[mode].items():
            count = torch.tensor(spots, device=total.device)
            if self.use_sync_dist:
                total = self.trainer.strategy.reduce(total, reduce_op="sum")
                count = self.trainer.strategy.reduce(count, reduce_op="sum")
            self.log(
                key,
                total / count,
                on_step=False,
                on_epoch=True,
                batch_size=1,
                prog_bar=prog_bar and key == f"{mode}_loss",
            )
        for key in sorted(k for k in self._ranked if k.endswith(f"_{mode}")):
            # a torchmetrics Metric: Lightning computes it (synchronised) and resets it at the epoch's end
            self.log(key, self.ranking[key], on_step=False, on_epoch=True)

    def compute_and_log_metrics(self, loss_output: LossOutput, metrics, mode: str):
        """Feed the labelled spots of a classifier-stage batch to the ranking metrics (logged per epoch).

        The loss terms are summed by the caller; the ELBO bookkeeping of the parent does not apply.
        """
        if self.stage != "classify" or loss_output.logits is None:
            return
        labels = loss_output.true_labels.reshape(-1)
        labelled = labels >= 0
        if not labelled.any():
            return
        for name in ("auroc", "ap"):
            key = f"{name}_{mode}"
            metric = cast(Metric, self.ranking[key])  # a ModuleDict's values are Modules
            metric.update(loss_output.logits.detach()[labelled], labels[labelled].long())
            self._ranked.add(key)


class StagedTrainingMixin:
    """``train`` for :class:`~spacrd.model.SpaCRD`: the stages of ``STAGES``, one Lightning run each.

    Needs of the model class what :class:`~spacrd.model._protocols.ModelCore` lists, among it
    ``_fitted_state`` and ``_calibration_settings`` of :class:`~spacrd.model._fitting.FittedStateMixin`.
    """

    is_trained_: bool
    history_: dict[str, pd.DataFrame] | None
    fitted_state: FittedState | None

    def train(
        self: ModelCore,
        align_epochs: int = STAGES[0].epochs,
        fuse_epochs: int = STAGES[1].epochs,
        classify_epochs: int = STAGES[2].epochs,
        align_lr: float = STAGES[0].lr,
        fuse_lr: float = STAGES[1].lr,
        classify_lr: float = STAGES[2].lr,
        weight_decay: float = 1e-3,
        batch_size: int = 256,
        train_size: float = 0.9,
        validation: Validation = "block",
        spots_per_epoch: int | Literal["auto"] | None = "auto",
        accelerator: str = "auto",
        devices: int | list[int] | str = "auto",
        early_stopping: bool = False,
        depth_augmentation: float | None = DEFAULT_DEPTH_AUGMENTATION,
        calibrate_for: Sequence[Mapping[str, Any]] = (),
        plan_kwargs: dict | None = None,
        **trainer_kwargs,
    ):
        """Train the three stages in turn, each through scvi-tools' Lightning trainer.

        Parameters
        ----------
        align_epochs, fuse_epochs, classify_epochs
            Epochs of stage I (contrastive alignment; skipped without images), stage II (fusion VAE)
            and stage III (classifier). ``0`` skips a stage.
        align_lr, fuse_lr, classify_lr
            Adam learning rates of the three stages.
        weight_decay
            Adam weight decay.
        batch_size
            Spots per minibatch (each with its ``k`` neighbours).
        train_size
            Share of spots used for training; the rest is the validation set whose losses are logged,
            on which the calibration is fitted and which ``early_stopping`` monitors. ``1.0``: none.
        validation
            How validation spots are held out so that the network is not trained on them through the
            neighbourhoods of training spots: ``"block"`` (default: square blocks within each section,
            hidden from the training neighbourhoods), ``"section"`` (whole labelled sections),
            ``"random"`` (spots at random and not hidden, as spacrd 0.1 did: validation scores are
            optimistic) or ``"auto"`` (``"section"`` with at least three sections holding both
            classes, else ``"block"``).
        spots_per_epoch
            Centre spots drawn per epoch (stratified by section and label, a new draw every epoch).
            ``"auto"``: all training spots up to 100,000, else 100,000; ``None``: all.
        accelerator, devices
            Passed to :class:`scvi.train.Trainer`, as in scvi-tools (``accelerator="gpu"``,
            ``devices=2, strategy="ddp_spawn"`` for several processes; each gets its shard of every
            epoch).
        early_stopping
            Stop each stage when ``validation_loss`` stops improving (``early_stopping_patience`` and
            friends go through ``trainer_kwargs``).
        depth_augmentation
            Lowest rate of binomial thinning of the training minibatches, in ``(0, 1)``; ``None``: off
            (every minibatch at the source's depth, the default of spacrd 0.1). Default 0.03.
            Each minibatch keeps every UMI of its spots with one probability drawn from 7 rates
            log-spaced from this one to 1 (full depth), is log-normalised with its thinned library sizes
            and scaled with the statistics of the sections thinned at that rate, so the network learns
            expression at the depths of sparser platforms (a Visium HD bin or a Xenium cell has about a
            tenth of a legacy-ST spot's UMIs) without copies of the source. Validation spots, and so
            the calibration, stay at full depth.
        calibrate_for
            Post-processing settings, besides :meth:`predict`'s defaults, to fit a calibration for at
            the end of training (each a dict of :meth:`predict`'s ``expression_propagation`` and
            ``spatial_smoothing``, e.g. ``[{"expression_propagation": 0.0, "spatial_smoothing":
            False}]``), as :meth:`calibrate` would; ``spacrd.model.PAPER.train`` has the paper's.
        plan_kwargs
            Extra arguments of :class:`~spacrd.model.SpaCRDTrainingPlan`.
        **trainer_kwargs
            Passed to :class:`scvi.train.Trainer`.

        Notes
        -----
        ``model.history`` holds each stage's epoch losses under ``stage1_*``, ``stage2_*`` and
        ``stage3_*`` keys (``spacrd.model.STAGES``). A stage that runs no optimisation step is an
        error: the model is then not trained.

        After the last stage, ``model.fitted_state`` (:class:`~spacrd.model.FittedState`) is built, once:
        its calibration (:class:`spacrd.tl.Calibration`) is fitted on the labelled validation spots (on
        all labelled spots when there are fewer than 20 or only one class among them, e.g. with
        ``train_size=1.0``) for :meth:`predict`'s default post-processing (and for ``calibrate_for``);
        ``source_cancer_share`` is the share of cancer among the labelled training spots, the prior
        that ``predict(call="prior")`` adapts from; the split and the validation rows are kept for
        :meth:`calibrate`; and ``training_profile`` records the training sections' depth, detected
        genes and score distribution, which :meth:`predict` compares every target with. A calibration
        fitted on fewer than 20 labelled spots in all warns (its scale is barely constrained); a split
        that leaves the training spots without labels of both classes is an error.

        Interrupting training (Ctrl+C, or :class:`KeyboardInterrupt` raised in a callback passed as
        ``callbacks=[...]``) stops the running stage and raises :class:`KeyboardInterrupt` naming it;
        the Python session and Ctrl+C keep working, ``history`` keeps the epochs logged so far and the
        model counts as untrained until ``train()`` runs again.

        """
        if self.adata is None:
            raise ValueError("This model has no registered AnnData to train on.")
        extra_settings = [self._calibration_settings(**dict(settings)) for settings in calibrate_for]
        epochs = {"align": align_epochs, "fuse": fuse_epochs, "classify": classify_epochs}
        lrs = {"align": align_lr, "fuse": fuse_lr, "classify": classify_lr}
        check_train_arguments(epochs, lrs, weight_decay, batch_size, train_size, validation, spots_per_epoch)
        check_trainer_kwargs(trainer_kwargs, accelerator, early_stopping)
        depth_augmentation = check_thinning(depth_augmentation)
        inputs = self._inputs(None)
        labelled = inputs.labels[inputs.labels != UNLABELLED]
        if np.unique(labelled).size < 2:
            counts = np.bincount(labelled, minlength=2)
            raise ValueError(
                f"Training needs labelled spots of both classes; found {counts[0]} non-cancer and {counts[1]} "
                "cancer spots. Check `labels_key`/`cancer_categories` in setup_anndata."
            )
        logger.info("Training on %s.", label_summary(inputs.labels))
        n_image_spots = 0 if inputs.has_image is None else int(inputs.has_image.sum())
        if self.module.image_encoder is not None and n_image_spots < 2:
            warnings.warn(
                "No training spot has a histology embedding, so the image branch cannot be learnt; the model "
                "predicts from expression alone, also on targets with images.",
                UserWarning,
                stacklevel=2,
            )
        for stage in STAGES:
            if stage.needs_images and n_image_spots < 2 and epochs[stage.name]:
                logger.info("No histology embeddings in the training spots: skipping %s.", stage.title)
                epochs[stage.name] = 0

        seed = default_seed()
        assert inputs.coordinates is not None  # source_inputs reads the coordinates checked at set-up
        train_idx, val_idx, how = validation_split(inputs, inputs.coordinates, validation, train_size, seed)
        if spots_per_epoch == "auto":
            spots_per_epoch = AUTO_SPOTS_PER_EPOCH if len(train_idx) > AUTO_SPOTS_PER_EPOCH else None
        datamodule = NeighbourhoodDataModule(
            self._dataset(inputs),
            train_idx,
            val_idx,
            batch_size,
            spots_per_epoch=spots_per_epoch,
            seed=seed,
            hide_validation=how != "random",  # "random" keeps the behaviour of spacrd 0.1
            thinning=None
            if depth_augmentation is None
            else source_thinning(self.input_spec, self.adata_manager, inputs, depth_augmentation, seed),
        )
        trainer_kwargs.setdefault("early_stopping_monitor", "validation_loss")
        if datamodule.n_train < 2:
            raise ValueError(
                f"Only {datamodule.n_train} training spot(s) after holding out {datamodule.n_val} for validation; "
                "training needs at least 2 (one minibatch). Use more spots or `train_size=1.0`."
            )
        check_training_labels(inputs.labels[train_idx], len(val_idx), how)
        self._run_stages(
            datamodule,
            epochs,
            lrs,
            weight_decay=weight_decay,
            accelerator=accelerator,
            devices=devices,
            early_stopping=early_stopping and datamodule.n_val > 0,
            plan_kwargs=plan_kwargs,
            trainer_kwargs=trainer_kwargs,
        )
        self.fitted_state = self._fitted_state(
            inputs, val_idx, how, n_image_spots, float(labelled.mean()), extra_settings
        )

    def _run_stages(
        self: ModelCore,
        datamodule: NeighbourhoodDataModule,
        epochs: dict[str, int],
        lrs: dict[str, float],
        *,
        weight_decay: float,
        accelerator: str,
        devices: int | list[int] | str,
        early_stopping: bool,
        plan_kwargs: dict | None,
        trainer_kwargs: dict,
    ) -> None:
        """Run every stage with ``epochs[name] > 0``, each through a ``_train_runner_cls`` of its own.

        The model is untrained from here until the last stage's runner has run; ``model.history_``
        collects each stage's curves under its prefix (:class:`~spacrd.model._runner.StagedTrainRunner`).
        """
        self.is_trained_, self.history_, self.fitted_state = False, {}, None
        trainer_kwargs = distributed_kwargs(trainer_kwargs)
        stages = [stage for stage in STAGES if epochs[stage.name] > 0]
        for stage in stages:
            stage_kwargs = dict(trainer_kwargs)
            if stage_kwargs.pop("enable_progress_bar", True):
                # one bar per stage, named after it, through scvi-tools' per-epoch progress bar
                stage_kwargs["callbacks"] = [
                    *stage_kwargs.get("callbacks", []),
                    stage_progress_bar(stage.title),
                ]
                stage_kwargs["simple_progress_bar"] = False
                stage_kwargs["enable_progress_bar"] = True
            else:
                stage_kwargs["enable_progress_bar"] = False
            plan = self._training_plan_cls(
                self.module,
                stage=stage.name,
                lr=lrs[stage.name],
                weight_decay=weight_decay,
                **(plan_kwargs or {}),
            )
            with quiet_third_party():  # Lightning prints its banners when the trainer is built
                runner = self._train_runner_cls(
                    self,
                    training_plan=plan,
                    data_splitter=datamodule,
                    max_epochs=epochs[stage.name],
                    stage=stage,
                    last_stage=stage is stages[-1],
                    accelerator=accelerator,
                    devices=devices,
                    early_stopping=early_stopping,
                    check_val_every_n_epoch=1,
                    use_distributed_sampler=False,
                    **stage_kwargs,
                )
            with quiet_third_party():
                run_interruptible(runner)


def default_seed() -> int:
    """The seed of the epoch samplers and the validation split: :attr:`scvi.settings.seed`."""
    seed = settings.seed
    if seed is not None:
        return int(seed)
    entropy = cast(int, np.random.SeedSequence().entropy)  # an int drawn from the OS when none is given
    return int(entropy % (2**31))
