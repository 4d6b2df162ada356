"""The scvi-tools runner of one training stage, and how a stage is run, interrupted and checked."""

from __future__ import annotations

import signal
import tempfile
import threading
from typing import Any

import pandas as pd
from scvi.train import TrainRunner
from scvi.train._trainrunner import _safe_load_logger_history

from spacrd._stages import StageSpec


class StagedTrainRunner(TrainRunner):
    """:class:`scvi.train.TrainRunner` for one of SpaCRD's stages (the model's ``_train_runner_cls``).

    scvi-tools' runner trains a model in one run: it replaces ``model.history_`` with the run's
    curves (or appends them epoch-wise to a trained model's) and marks the model trained. SpaCRD
    trains in stages, so this runner adds the stage's curves to ``model.history_`` under the
    stage's prefix (``stage1_train_loss``...) and marks the model trained only after the last stage
    (``last_stage``) has run optimisation steps.

    Parameters
    ----------
    model, training_plan, data_splitter, max_epochs, accelerator, devices
        As for :class:`scvi.train.TrainRunner`.
    stage
        The stage this run trains (one of ``spacrd.model.STAGES``).
    last_stage
        Whether training is complete after this stage.
    **trainer_kwargs
        Passed to :class:`scvi.train.Trainer`.

    """

    def __init__(
        self,
        model,
        training_plan,
        data_splitter,
        max_epochs: int,
        *,
        stage: StageSpec,
        last_stage: bool,
        accelerator: str = "auto",
        devices: Any = "auto",
        **trainer_kwargs,
    ):
        super().__init__(
            model,
            training_plan=training_plan,
            data_splitter=data_splitter,
            max_epochs=max_epochs,
            accelerator=accelerator,
            devices=devices,
            **trainer_kwargs,
        )
        self.stage = stage
        self.last_stage = last_stage
        #: The stage's own curves, by the names the training plan logged them under.
        self.stage_history: dict[str, pd.DataFrame] = {}

    def _run_training_core(self):
        model = self.model
        model.module.train()  # the previous stage leaves it in eval mode, which Lightning would keep
        try:
            self.trainer.fit(self.training_plan, self.data_splitter, ckpt_path=self.ckpt_path)
        finally:
            self._update_history()
            model.module.eval()
        model.train_indices = getattr(self.data_splitter, "train_idx", None)
        model.test_indices = getattr(self.data_splitter, "test_idx", None)
        model.validation_indices = getattr(self.data_splitter, "val_idx", None)
        model.to_device(self.device)
        model.trainer = self.trainer
        if self.trainer.is_global_zero:
            check_stage_stepped(self.stage_history, self.stage)
        model.is_trained_ = self.last_stage and not self.trainer.interrupted

    def _update_history(self):
        """Add the stage's curves to ``model.history_`` under the stage's prefix (rank 0 holds them)."""
        history = dict(self.model.history_ or {})
        if self.trainer.is_global_zero:
            self.stage_history = _safe_load_logger_history(self.trainer) or {}
        for key, frame in self.stage_history.items():
            name = f"{self.stage.history_prefix}_{key}"
            history[name] = frame.rename(columns={key: name})
        self.model.history_ = history


def distributed_kwargs(trainer_kwargs: dict) -> dict:
    """Trainer arguments for several processes: unused-parameter detection and a private log folder.

    Each stage trains part of the network (stage II leaves the classifier unused), which DDP only allows
    with unused-parameter detection, so ``strategy="ddp"``/``"ddp_spawn"``/``"ddp_notebook"`` get it.
    scvi-tools passes the history of the process of rank 0 through a file; it goes to a temporary
    folder (unless ``log_save_dir`` is given) rather than to ``./lightning_logs``.
    """
    strategy = trainer_kwargs.get("strategy")
    if not (isinstance(strategy, str) and strategy in ("ddp", "ddp_spawn", "ddp_notebook")):
        return trainer_kwargs
    kwargs = {**trainer_kwargs, "strategy": f"{strategy}_find_unused_parameters_true"}
    kwargs.setdefault("log_save_dir", tempfile.mkdtemp(prefix="spacrd_ddp_"))
    return kwargs


def run_interruptible(runner: StagedTrainRunner) -> None:
    """Run one stage; Ctrl+C stops it with a :class:`KeyboardInterrupt` that names it.

    Lightning turns Ctrl+C into ``sys.exit(1)`` with SIGINT ignored from then on, which would end a
    script's caller and leave Ctrl+C dead in a notebook; both are undone here.
    """
    stage = runner.stage
    sigint, interrupted = signal.getsignal(signal.SIGINT), False
    try:
        runner()
    except SystemExit as err:
        if not isinstance(err.__context__, KeyboardInterrupt):
            raise
        interrupted = True
    if interrupted or runner.trainer.interrupted:
        if sigint is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, sigint)
        raise KeyboardInterrupt(
            f"Training interrupted in {stage.history_prefix.replace('stage', 'stage ')} ({stage.name}); the "
            "model is not trained. Call "
            "`model.train()` again: it runs every stage, starting from the current weights."
        )


def check_stage_stepped(stage_history: dict, stage: StageSpec) -> None:
    """A stage that ran no optimisation step leaves random weights: that is an error, not a trained model.

    Every epoch with a training batch logs ``train_loss``; the history is also what reaches the main
    process from the spawned ones of a distributed run.
    """
    losses = stage_history.get("train_loss")
    if losses is None or len(losses) == 0:
        raise RuntimeError(
            f"{stage.title} ran no optimisation step (no training batch: too few training spots for "
            "`batch_size`, or `spots_per_epoch` too small); the model is not trained. Use more training spots, "
            "a smaller `batch_size` or a larger `train_size`."
        )
