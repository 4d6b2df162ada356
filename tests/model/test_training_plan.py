import lightning.pytorch as pl
import numpy as np
import scvi
from _synthetic import source_of, tiny_sections

from spacrd._constants import TENSOR_KEYS
from spacrd.model import SpaCRD


class _StepLosses(pl.Callback):
    """Every training step's loss and centre spots, by stage and epoch."""

    def __init__(self):
        self.steps: list[tuple[str, int, float, int]] = []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        n_obs = batch[TENSOR_KEYS.NEIGHBORS].shape[0]
        self.steps.append((module.stage, trainer.current_epoch, float(outputs["loss"]), n_obs))


def test_epoch_losses_are_the_spot_weighted_means_of_the_steps_and_ranking_is_logged_per_epoch():
    scvi.settings.seed = 0
    source = source_of(tiny_sections())
    SpaCRD.setup_anndata(source, layer="counts", labels_key="cancer", batch_key="section")
    model = SpaCRD(source, n_top_genes=40, n_embed=16, n_heads=4, n_latent=4)
    steps = _StepLosses()
    # batches of 40 spots: several per epoch, the last one smaller
    model.train(fuse_epochs=2, classify_epochs=3, batch_size=40, enable_progress_bar=False, callbacks=[steps])
    for stage, prefix, n_epochs in (("fuse", "stage2", 2), ("classify", "stage3", 3)):
        logged = model.history[f"{prefix}_train_loss"].to_numpy(dtype=float).ravel()
        assert len(logged) == n_epochs
        for epoch in range(n_epochs):
            rows = [(loss, n) for s, e, loss, n in steps.steps if s == stage and e == epoch]
            assert len(rows) > 1 and len({n for _, n in rows}) > 1
            losses, spots = np.array(rows).T
            np.testing.assert_allclose(logged[epoch], (losses * spots).sum() / spots.sum(), rtol=1e-5)
        assert len(model.history[f"{prefix}_validation_loss"]) == n_epochs
    for key in ("auroc_train", "auroc_validation", "ap_train", "ap_validation"):
        values = model.history[f"stage3_{key}"].to_numpy(dtype=float).ravel()
        assert len(values) == 3 and ((values >= 0) & (values <= 1)).all()
        assert f"stage2_{key}" not in model.history
