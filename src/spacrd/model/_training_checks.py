"""Checks of :meth:`SpaCRD.train <spacrd.model.SpaCRD.train>`'s arguments and of its training split."""

from __future__ import annotations

import numpy as np

from spacrd._constants import UNLABELLED
from spacrd._validation import check_bool, check_choice, check_device, check_number

from ._datamodule import VALIDATIONS


def check_train_arguments(
    epochs, lrs, weight_decay, batch_size, train_size, validation, spots_per_epoch
) -> None:
    """Ranges and types of :meth:`train`'s arguments, checked before anything is built."""
    for name, value in epochs.items():
        check_number(f"{name}_epochs", value, integer=True, low=0)
    if epochs["classify"] == 0:
        raise ValueError(
            "`classify_epochs` must be a positive integer, got 0: the classifier stage gives the probabilities, "
            "so a model that never ran it would predict from random weights."
        )
    for name, value in lrs.items():
        check_number(f"{name}_lr", value, low=0, low_open=True)
    check_number("weight_decay", weight_decay, low=0)
    check_number("batch_size", batch_size, integer=True, low=2)
    check_number("train_size", train_size, low=0, high=1, low_open=True)
    check_choice("validation", validation, VALIDATIONS)
    if spots_per_epoch not in (None, "auto"):
        check_number("spots_per_epoch", spots_per_epoch, integer=True, low=2)


def check_trainer_kwargs(trainer_kwargs: dict, accelerator, early_stopping) -> None:
    if "max_epochs" in trainer_kwargs:
        raise TypeError(
            "`max_epochs` is set per stage in SpaCRD: pass `align_epochs`, `fuse_epochs` and `classify_epochs` "
            "instead."
        )
    for name in ("train_size", "validation_size", "shuffle_set_split", "datasplitter_kwargs"):
        if name in trainer_kwargs:
            raise TypeError(
                f"`{name}` is not an argument of SpaCRD.train (see `train_size` and `validation`)."
            )
    check_bool("early_stopping", early_stopping)
    check_device(accelerator)


def check_training_labels(labels: np.ndarray, n_val: int, how: str) -> None:
    """The labelled spots left for training after the split must hold both classes (not one spot)."""
    counts = np.bincount(labels[labels != UNLABELLED], minlength=2)
    if (counts > 0).sum() < 2:
        raise ValueError(
            f"After holding out {n_val} validation spots (`validation={how!r}`), the training spots hold "
            f"{counts[1]} cancer and {counts[0]} non-cancer labels; the classifier needs both. Label more "
            "spots, or pass `train_size=1.0` to train on all of them."
        )
