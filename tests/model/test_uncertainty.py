"""Per-spot uncertainty from the bootstrap members of the classifier."""

import warnings

import numpy as np
import pytest
import scvi
from _synthetic import source_of, synthetic_sections, target_of

from spacrd.model import SpaCRD


@pytest.fixture(scope="module")
def fitted():
    scvi.settings.seed = 0
    data = synthetic_sections(n_sections=4, grid=12, n_genes=100, marker_fold=1.6)
    source = source_of(data)
    SpaCRD.setup_anndata(source, layer="counts", labels_key="cancer", batch_key="section")
    model = SpaCRD(source, n_top_genes=50, n_embed=16, n_heads=2, n_latent=4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # without depth augmentation: 11 epochs on this weak-marker toy learn nothing with it (ROC AUC
        # 0.57, every probability 0.52), and the members' spread is the subject here
        model.train(
            fuse_epochs=3,
            classify_epochs=8,
            batch_size=64,
            depth_augmentation=None,
            enable_progress_bar=False,
        )
    return model, target_of(data)


def test_members_spread_is_written_and_bounded(fitted):
    model, target = fitted
    assert model.module.n_members == 5
    target = target.copy()
    prob = model.predict(target)
    spread = target.obs["ctr_uncertainty"].to_numpy()
    assert spread.shape == prob.shape and np.isfinite(spread).all()
    assert (spread >= 0).all() and (spread <= 0.5).all() and spread.max() > 1e-3
    assert target.uns["spacrd"]["uncertainty_key"] == "ctr_uncertainty"
    # the members disagree most where the ensemble is least sure
    middle = np.abs(prob - 0.5) < np.quantile(np.abs(prob - 0.5), 0.25)
    assert spread[middle].mean() > spread[~middle].mean()


def test_the_members_are_different_resamples(fitted):
    model, _ = fitted
    heads = [model.module.classifier, *model.module.member_heads]
    first = [h[0].weight.detach().numpy() for h in heads]
    assert all(not np.allclose(first[0], w) for w in first[1:])


def test_one_member_models_write_no_uncertainty(fitted, tmp_path):
    model, target = fitted
    scvi.settings.seed = 0
    single = SpaCRD(model.adata, n_top_genes=50, n_embed=16, n_heads=2, n_latent=4, n_members=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        single.train(fuse_epochs=1, classify_epochs=2, batch_size=64, enable_progress_bar=False)
    target = target.copy()
    single.predict(target)
    assert "ctr_uncertainty" not in target.obs and target.uns["spacrd"]["uncertainty_key"] is None
    single.save(tmp_path / "one")
    assert SpaCRD.load(tmp_path / "one").module.n_members == 1
