"""Lightning pieces for the three training stages: the data module and the training plan."""

from __future__ import annotations

import lightning.pytorch as pl
import numpy as np
from scvi.module.base import LossOutput
from scvi.train import TrainingPlan

from spacrd.module import SpaCRDModule
from spacrd.module._module import Stage

from ._inputs import NeighbourhoodDataset, make_loader


class NeighbourhoodDataModule(pl.LightningDataModule):
    """Fixed train/validation split of spots, serving neighbourhood minibatches."""

    def __init__(
        self, dataset: NeighbourhoodDataset, train_idx: np.ndarray, val_idx: np.ndarray, batch_size: int
    ):
        super().__init__()
        self.dataset = dataset
        self.train_idx = train_idx
        self.val_idx = val_idx
        self.test_idx = np.array([], dtype=np.int64)
        self.batch_size = batch_size

    @property
    def n_train(self) -> int:
        return len(self.train_idx)

    @property
    def n_val(self) -> int:
        return len(self.val_idx)

    def train_dataloader(self):
        return make_loader(self.dataset, self.train_idx, self.batch_size, shuffle=True)

    def val_dataloader(self):
        if self.n_val == 0:
            return []
        return make_loader(self.dataset, self.val_idx, self.batch_size, shuffle=False)


class SpaCRDTrainingPlan(TrainingPlan):
    """scvi-tools training plan for one SpaCRD stage.

    Logs ``train_loss``/``validation_loss`` and the stage's named loss terms (``contrastive_loss``,
    ``fused_loss``, ``classification_loss``) per epoch.

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

    def forward(self, *args, **kwargs):
        """Run the module, embedding only the centre spots in the alignment stage."""
        return self.module(*args, **kwargs, inference_kwargs={"centre_only": self.stage == "align"})

    def compute_and_log_metrics(self, loss_output: LossOutput, metrics, mode: str):
        """Log the stage's named loss terms; the ELBO bookkeeping of the parent does not apply here."""
        for key, value in loss_output.extra_metrics.items():
            self.log(
                f"{key}_{mode}",
                value.detach(),
                on_step=False,
                on_epoch=True,
                batch_size=loss_output.n_obs_minibatch,
                sync_dist=self.use_sync_dist,
            )
