"""What spacrd says while it runs: its own log lines, stage-named progress, and quiet third-party chatter."""

from __future__ import annotations

import logging
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

#: Warnings that Lightning, PyTorch and scvi-tools raise inside spacrd's calls and that say nothing
#: actionable to a spacrd user (spacrd's own warnings, and the user's, are not touched).
QUIET_WARNINGS = (
    r".*isinstance\(treespec, LeafSpec\).*",
    r"The number of training batches .* is smaller than the logging interval",
    r"Trying to infer the `batch_size` from an ambiguous collection",
    r"Sparse CSR tensor support is in beta",
    r"Sparse invariant checks are implicitly disabled",
    r"GPU available but not used",
    r"The '(train|val)_dataloader' does not have many workers",
    r".*does not contain unnormalized count data",
    r"Training will be faster when sparse matrix is formatted as CSR",
    r"Category .* has less than 3 cells",
)
#: Loggers whose INFO lines (GPU/TPU banners, tips, "Trainer.fit stopped", "Generating sequential column
#: names") are held back to WARNING inside spacrd's calls.
QUIET_LOGGERS = ("lightning.pytorch", "lightning.fabric", "lightning_utilities", "scvi.data", "scvi.model")


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a line is logged (notebooks and test runners swap it)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


logger = logging.getLogger("spacrd")
if not logger.handlers:  # as scvi-tools and scanpy do: a library-level handler the user can silence
    _handler = _StderrHandler()
    _handler.setFormatter(logging.Formatter("spacrd: %(message)s"))
    logger.addHandler(_handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


@contextmanager
def quiet_third_party() -> Iterator[None]:
    """Hold back the warnings of :data:`QUIET_WARNINGS` and the INFO lines of :data:`QUIET_LOGGERS`."""
    loggers = [logging.getLogger(name) for name in QUIET_LOGGERS]
    levels = [lg.level for lg in loggers]
    with warnings.catch_warnings():
        for pattern in QUIET_WARNINGS:
            warnings.filterwarnings("ignore", message=pattern)
        try:
            for lg in loggers:
                lg.setLevel(max(logging.WARNING, lg.getEffectiveLevel()))
            yield
        finally:
            for lg, level in zip(loggers, levels, strict=True):
                lg.setLevel(level)


def stage_progress_bar(title: str):
    """scvi-tools' per-epoch progress bar, labelled with the stage it counts the epochs of."""
    from lightning.pytorch.callbacks import ProgressBar as LightningProgressBar
    from scvi.train._progress import ProgressBar
    from scvi.utils import track

    class StageProgressBar(ProgressBar):
        def init_train_tqdm(self, trainer):
            return track(
                None, total=trainer.max_epochs, description=title, style="tqdm", disable=self.is_disabled
            )

        def on_train_epoch_start(self, trainer, pl_module):
            LightningProgressBar.on_train_epoch_start(self, trainer, pl_module)  # not scvi's "Epoch i/n"
            if self.is_enabled:
                self.main_progress_bar.set_description(
                    f"{title}: epoch {trainer.current_epoch + 1}/{trainer.max_epochs}"
                )

    return StageProgressBar()
