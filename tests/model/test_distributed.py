"""Training in several processes: DDP on CPU with the gloo backend, as users who outgrow one machine scale out."""

import numpy as np
import pytest
import scvi
from _synthetic import source_of, synthetic_sections, target_of
from sklearn.metrics import roc_auc_score

from spacrd.model import SpaCRD

NET = {"n_top_genes": 50, "n_embed": 16, "n_heads": 2, "n_latent": 4}
EPOCHS = {"fuse_epochs": 3, "classify_epochs": 10, "enable_progress_bar": False}


def _fit(source, **train_kwargs):
    scvi.settings.seed = 0
    SpaCRD.setup_anndata(source, layer="counts", labels_key="cancer", batch_key="section")
    model = SpaCRD(source, **NET)
    model.train(accelerator="cpu", **EPOCHS, **train_kwargs)
    return model


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_two_processes_train_a_model_as_good_as_one(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing may be written into the working directory
    data = synthetic_sections(n_sections=4, grid=12, n_genes=100)
    target = target_of(data)
    # each process takes its own shard of every epoch: 2 processes x 32 spots = one batch of 64
    ddp = _fit(source_of(data), batch_size=32, devices=2, strategy="ddp_spawn")
    single = _fit(source_of(data), batch_size=64, devices=1)
    assert ddp.is_trained_ and "stage3_train_loss" in ddp.history
    # the weights trained in the spawned processes are the main process's model
    auc_ddp = roc_auc_score(target.obs["cancer"], ddp.predict(target.copy()))
    auc_single = roc_auc_score(target.obs["cancer"], single.predict(target.copy()))
    assert auc_ddp > 0.9 and abs(auc_ddp - auc_single) < 0.05
    assert list(tmp_path.iterdir()) == []
    # the stages ran the same number of epochs, each with half the steps per process
    assert len(ddp.history["stage3_train_loss"]) == len(single.history["stage3_train_loss"]) == 10
    assert np.isfinite(ddp.history["stage3_train_loss"].to_numpy(dtype=float)).all()
