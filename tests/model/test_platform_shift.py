"""Depth augmentation, the call's level from the target, and the shift detector, end to end."""

import warnings

import numpy as np
import pytest
import scvi
from _synthetic import synthetic_sections
from scipy import sparse

from spacrd._atomic import write_h5ad
from spacrd.model import SpaCRD
from spacrd.model._shift import TrainingProfile
from spacrd.model._thinning import _thinned, check_thinning
from spacrd.tl._postprocess import DEFAULT_MIN_SEPARATION

FAST = {"align_epochs": 2, "fuse_epochs": 4, "classify_epochs": 8, "enable_progress_bar": False}
SMALL = {"n_hidden": (64,), "n_embed": 32, "n_heads": 2, "n_latent": 8}


def _thin(adata, rate, seed=0):
    out = adata.copy()
    counts = sparse.csr_matrix(out.layers["counts"])
    counts.data = np.random.default_rng(seed).binomial(counts.data.astype(np.int64), rate).astype(np.float32)
    counts.eliminate_zeros()
    out.layers["counts"] = counts
    out.X = counts.copy()
    return out


@pytest.fixture(scope="module")
def trained():
    data = synthetic_sections(n_sections=4)
    source = data[data.obs["section"] != "S3"].copy()
    target = data[data.obs["section"] == "S3"].copy()
    scvi.settings.seed = 0
    SpaCRD.setup_anndata(source, layer="counts", labels_key="cancer", batch_key="section")
    model = SpaCRD(source, n_top_genes=100, **SMALL)
    model.train(**FAST)
    return model, target


def test_depth_augmentation_trains_and_is_checked(trained):
    model, _ = trained
    scvi.settings.seed = 0
    augmented = SpaCRD(model.adata, n_top_genes=100, **SMALL)
    augmented.train(depth_augmentation=0.1, **{**FAST, "fuse_epochs": 1, "classify_epochs": 2})
    assert augmented.is_trained_ and augmented.training_profile_ is not None
    with pytest.raises(ValueError, match="depth_augmentation"):
        SpaCRD(model.adata, n_top_genes=100, **SMALL).train(depth_augmentation=1.0, **FAST)


def test_training_profile_is_kept_and_saved(trained, tmp_path):
    model, _ = trained
    profile = model.training_profile_
    assert set(profile.median_counts) == {"S0", "S1", "S2"} and len(profile.score_quantiles) == 7
    assert all(v > 0 for v in profile.median_counts.values())
    model.save(tmp_path / "m")
    loaded = SpaCRD.load(tmp_path / "m")
    assert loaded.training_profile_ == profile
    assert TrainingProfile.from_dict(None) is None
    with pytest.raises(ValueError, match="training profile is damaged"):
        TrainingProfile.from_dict({"median_counts": 3})


def test_a_thinned_target_warns_with_numbers_and_records_them(trained, tmp_path):
    model, target = trained
    sparse_target = _thin(target, 0.05)
    with pytest.warns(
        UserWarning, match=r"section 'S3': median [\d,]+ counts per spot, 0\.\d+× the nearest training"
    ) as record:
        model.predict(sparse_target)
    assert "uns['spacrd']['shift']" in str(record[0].message)
    meta = sparse_target.uns["spacrd"]
    shift = meta["shift"]["sections"]["S3"]
    assert shift["median_counts"] < 0.5 * min(meta["shift"]["training"]["median_counts"].values())
    assert meta["call"] == "auto" and meta["level"] == {"S3": "mixture"}  # unlike the training
    assert 0 <= shift["called_share"] <= 1 and meta["shift"]["warnings"]
    write_h5ad(sparse_target, tmp_path / "t.h5ad")  # every entry is writable


def test_a_target_like_the_training_sections_does_not_warn(trained):
    model, target = trained
    target = target.copy()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.predict(target)
    meta = target.uns["spacrd"]
    assert meta["shift"]["warnings"] == [] and meta["shift"]["gene_overlap"] == 1.0
    # like the training sections: the calibration's level, unless its scores separate cleanly
    separation = meta["separation"].get("S3", np.nan)  # none fitted when the test is off (inf)
    assert meta["level"] == {"S3": "mixture" if separation >= DEFAULT_MIN_SEPARATION else "source"}
    source = target.copy()
    model.predict(source, call="source")
    if meta["level"]["S3"] == "source":
        np.testing.assert_array_equal(source.obs["ctr"], target.obs["ctr"])
    model.predict(target, call="mixture")
    meta = target.uns["spacrd"]
    truth = target.obs["cancer"].mean()
    assert meta["level"] == {"S3": "mixture"} and abs(meta["cancer_share"]["S3"] - truth) < 0.15
    low, high = meta["cancer_share_interval"]["S3"]
    assert low <= meta["cancer_share"]["S3"] <= high


def test_calls_and_their_arguments(trained):
    model, target = trained
    prior = target.copy()
    model.predict(prior, call="prior")
    assert prior.uns["spacrd"]["call"] == "prior" and prior.uns["spacrd"]["prior_shift"]
    legacy = target.copy()
    model.predict(legacy, prior_shift=False)  # without `call`: the call prior_shift belongs to
    assert legacy.uns["spacrd"]["call"] == "prior" and not legacy.uns["spacrd"]["prior_shift"]
    source = target.copy()
    model.predict(source, call="source")
    np.testing.assert_allclose(source.obs["ctr_prob"], legacy.obs["ctr_prob"], rtol=1e-5)
    with pytest.raises(ValueError, match="call='prior'"):
        model.predict(target.copy(), call="mixture", threshold=0.4)
    with pytest.raises(ValueError, match="`call` must be one of"):
        model.predict(target.copy(), call="gmm")


def test_thinning_keeps_the_rate_of_counts():
    rng = np.random.default_rng(0)
    counts = sparse.random(300, 50, density=0.4, format="csr", random_state=0, dtype=np.float32)
    counts.data = np.ceil(counts.data * 4)
    rest = np.full(300, 200)
    kept, library = _thinned(counts, rest, 0.2, rng)
    assert kept.sum() / counts.sum() == pytest.approx(0.2, abs=0.02)
    assert library.mean() == pytest.approx(0.2 * (counts.sum(axis=1).mean() + 200), rel=0.05)
    assert (kept.data > 0).all() and (kept.toarray() <= counts.toarray()).all()
    full, full_library = _thinned(counts, rest, 1.0, rng)
    assert full is counts and (full_library == np.asarray(counts.sum(axis=1)).ravel() + 200).all()
    assert check_thinning(None) is None and check_thinning(0.05) == 0.05
    for bad in (0, 1, 1.5, -0.1):
        with pytest.raises(ValueError, match="depth_augmentation"):
            check_thinning(bad)
