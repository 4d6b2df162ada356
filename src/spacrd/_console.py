"""Terminal output of spacrd's commands (``spacrd``, ``spacrd-demo``): stage progress, and quiet otherwise.

Only the commands use this; the library itself logs as scvi-tools and Lightning do.
"""

from __future__ import annotations

import logging
import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO

from lightning.pytorch.callbacks import Callback

from spacrd._logging import quiet_third_party
from spacrd._stages import STAGES

#: Beyond what the library holds back in its own calls (:func:`spacrd._logging.quiet_third_party`),
#: a command also hides scvi-tools' INFO lines ("Seed set to 0") and every Lightning warning.
COMMAND_LOGGERS = ("scvi",)
#: Modules (regular expressions) whose warnings a command hides.
COMMAND_WARNINGS = (r"lightning(\.|$)", r"docrep(\.|$)")


@contextmanager
def quiet_libraries() -> Iterator[None]:
    """For a command: the library's quiet mode, scvi-tools' INFO lines too, other warnings on one line each.

    The loggers' levels and the warning filters are restored on exit, so a notebook that runs a
    command's function keeps its own settings.
    """
    levels = {name: logging.getLogger(name).level for name in COMMAND_LOGGERS}
    show = warnings.showwarning
    try:
        for name in COMMAND_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)
        with quiet_third_party(), warnings.catch_warnings():
            for module in COMMAND_WARNINGS:
                warnings.filterwarnings("ignore", module=module)
            warnings.showwarning = _one_line_warning
            yield
    finally:
        warnings.showwarning = show
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """``warning: <message>`` on stderr, without the file, line and source of the default format."""
    print(f"warning: {message}", file=file or sys.stderr)


class StageProgress(Callback):
    """Print each training stage's name, its epochs as they run, and its final losses.

    On a terminal the epoch line is rewritten in place; in a log file (not a terminal) every
    ``max(1, epochs // 4)``-th epoch gets a line, so a pipeline's log shows progress without flooding.
    Pass it as ``model.train(callbacks=[StageProgress()], enable_progress_bar=False)``.

    Parameters
    ----------
    stream
        Where to print (default: standard error, so that standard output keeps the results).

    """

    def __init__(self, stream: TextIO | None = None):
        super().__init__()
        self.stream = stream
        self._start = 0.0

    @property
    def _out(self) -> TextIO:
        return self.stream if self.stream is not None else sys.stderr

    def _print(self, text: str, end: str = "\n") -> None:
        print(text, end=end, file=self._out, flush=True)

    def on_train_start(self, trainer, pl_module) -> None:
        """Name the stage and its number of epochs."""
        spec = next((s for s in STAGES if s.name == getattr(pl_module, "stage", None)), None)
        title = spec.title if spec is not None else "Training"
        self._start = time.perf_counter()
        self._print(f"{title} ({trainer.max_epochs} epochs)")

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        """One epoch line with the training loss."""
        epoch, total = trainer.current_epoch + 1, trainer.max_epochs
        line = f"  epoch {epoch:>3}/{total}  train loss {_metric(trainer, 'train_loss')}"
        if self._out.isatty():
            self._print(f"\r{line}", end="")
        elif epoch % max(1, total // 4) == 0 and epoch < total:
            self._print(line)

    def on_train_end(self, trainer, pl_module) -> None:
        """The stage's final training and validation losses and how long it took."""
        elapsed = time.perf_counter() - self._start
        line = (
            f"  done: {trainer.current_epoch} epochs in {elapsed:.0f} s, train loss "
            f"{_metric(trainer, 'train_loss')}, validation loss {_metric(trainer, 'validation_loss')}"
        )
        self._print(f"\r{line}" if self._out.isatty() else line)


def _metric(trainer, key: str) -> str:
    value = trainer.callback_metrics.get(key)
    return "n/a" if value is None else f"{float(value):.3f}"
