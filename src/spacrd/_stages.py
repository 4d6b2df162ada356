"""The table of SpaCRD's three training stages, read by the training mixin and the training-history plot."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Stage = Literal["align", "fuse", "classify"]


@dataclass(frozen=True)
class StageSpec:
    """One training stage of SpaCRD.

    Attributes
    ----------
    name
        The module's name of the stage's loss (:meth:`spacrd.module.SpaCRDModule.loss`).
    loss
        The named loss term the stage optimises, as logged in ``model.history``.
    epochs, lr
        Default epochs and Adam learning rate (the ``<name>_epochs``/``<name>_lr`` arguments of
        :meth:`~spacrd.model.SpaCRD.train`).
    uses_neighbors
        Whether the stage reads the spot's neighbourhood (stage I embeds the centre spot alone).
    needs_images
        Whether the stage is skipped when no training spot has a histology embedding.
    history_prefix
        Prefix of the stage's keys in ``model.history`` (e.g. ``stage3_validation_loss``).
    title
        Title of the stage's panel in :func:`spacrd.pl.training_history`.

    """

    name: Stage
    loss: str
    epochs: int
    lr: float
    uses_neighbors: bool
    needs_images: bool
    history_prefix: str
    title: str


#: SpaCRD's training stages, in the order they run.
STAGES: tuple[StageSpec, ...] = (
    StageSpec("align", "contrastive_loss", 10, 1e-3, False, True, "stage1", "Stage I: modality alignment"),
    StageSpec("fuse", "fused_loss", 10, 1e-3, True, False, "stage2", "Stage II: fusion VAE"),
    StageSpec("classify", "classification_loss", 20, 1e-3, True, False, "stage3", "Stage III: classifier"),
)
