"""Inputs that used to end in a silently wrong result now end in an error (or a warning) that says why."""

import json
import logging
import warnings

import numpy as np
import pytest
import scvi
from _synthetic import source_of, target_of, tiny_sections
from hypothesis import given, settings
from hypothesis import strategies as st

import spacrd
from spacrd._validation import check_number
from spacrd.model import SpaCRD

NET = {"n_top_genes": 40, "n_embed": 16, "n_heads": 2, "n_latent": 4}
EPOCHS = {"align_epochs": 1, "fuse_epochs": 1, "classify_epochs": 2, "enable_progress_bar": False}
SETUP = {"layer": "counts", "labels_key": "cancer", "batch_key": "section", "image_key": "X_histology"}


@pytest.fixture(scope="module")
def data():
    return tiny_sections()


@pytest.fixture(scope="module")
def trained(data):
    scvi.settings.seed = 0
    source = source_of(data)
    SpaCRD.setup_anndata(source, **SETUP)
    model = SpaCRD(source, **NET)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.train(**EPOCHS)
    return model


def _model(data):
    source = source_of(data)
    SpaCRD.setup_anndata(source, **SETUP)
    return SpaCRD(source, **NET)


# ------------------------------------------------------------------------- untrained passes as trained
def test_a_model_whose_classifier_never_trained_is_refused(data):
    model = _model(data)
    for epochs in ({"classify_epochs": 0}, {"align_epochs": 0, "fuse_epochs": 0, "classify_epochs": 0}):
        with pytest.raises(
            ValueError, match=r"`classify_epochs` must be a positive integer, got 0: the classifier"
        ):
            model.train(**{**EPOCHS, **epochs})
    assert not model.is_trained_
    with pytest.raises(RuntimeError, match="not trained"):
        model.predict(target_of(data))


def test_too_few_training_spots_for_one_batch_is_an_error(data):
    source = source_of(data)[:3].copy()
    source.obs["cancer"] = [True, False, True]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        SpaCRD.setup_anndata(source, **SETUP)
    model = SpaCRD(
        source, genes=list(source.var_names[:10]), **{k: v for k, v in NET.items() if k != "n_top_genes"}
    )
    with pytest.raises(ValueError, match=r"Only 1 training spot\(s\) after holding out 2 for validation"):
        model.train(**EPOCHS, train_size=0.3, validation="random")
    assert not model.is_trained_


# --------------------------------------------------------------------------------- stale registration
def test_labels_are_read_when_training_not_frozen_at_setup(data, caplog):
    source = source_of(data)
    SpaCRD.setup_anndata(source, **SETUP)
    model = SpaCRD(source, **NET)
    source.obs["cancer"] = False  # edited after set-up: training sees the edit
    with pytest.raises(ValueError, match="found 128 non-cancer and 0 cancer spots"):
        model.train(**EPOCHS)
    source.obs["cancer"] = source_of(data).obs["cancer"].to_numpy()
    with caplog.at_level(logging.INFO, logger="spacrd"):
        model.train(**EPOCHS)
    assert any("Training on 35 cancer, 93 non-cancer, 0 unlabelled" in r.message for r in caplog.records)


def test_spots_removed_in_place_after_setup_are_caught(data):
    source = source_of(data)
    SpaCRD.setup_anndata(source, **SETUP)
    model = SpaCRD(source, **NET)
    source._inplace_subset_obs(np.arange(source.n_obs) % 5 != 0)
    for call in (lambda: model.train(**EPOCHS), lambda: SpaCRD.setup_anndata(source, **SETUP)):
        with pytest.raises(
            ValueError, match=r"obsm\['spacrd_neighbors'\] does not belong to this AnnData's spots"
        ):
            call()
    # recomputing the graph is the fix the message names
    spacrd.pp.spatial_neighbors(source, library_key="section")
    SpaCRD.setup_anndata(source, **SETUP)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        SpaCRD(source, **NET).train(**EPOCHS)


# ------------------------------------------------------------------------------ sections pooled silently
def test_a_target_whose_sections_the_model_cannot_see_is_refused(data, trained):
    two = data[data.obs["section"].isin(["S1", "S2"])].copy()
    two.obs = two.obs.rename(columns={"section": "slide"})
    with pytest.raises(ValueError, match=r"no obs\['section'\].*looks like several sections.*\['slide'\]"):
        trained.predict(two.copy())
    # named, the sections are kept apart: the same result as predicting each section on its own
    prob = trained.predict(two.copy(), batch_key="slide")
    one = two[two.obs["slide"] == "S2"].copy()
    np.testing.assert_allclose(prob[(two.obs["slide"] == "S2").to_numpy()], trained.predict(one), atol=1e-5)
    # a single section without the column is one section, as documented
    assert trained.predict(one.copy()).shape == (one.n_obs,)


# ----------------------------------------------------------------------------------- unguarded outputs
def test_a_nan_calibration_in_a_model_file_is_refused(trained, tmp_path):
    trained.save(tmp_path / "m")
    meta = json.loads((tmp_path / "m" / "model.json").read_text())
    meta["fitted_state"]["calibrations"][0]["scale"] = float("nan")
    (tmp_path / "m" / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"Calibration scale nan and shift .* must be finite"):
        SpaCRD.load(tmp_path / "m")


def test_output_keys_may_not_overwrite_each_other_or_inputs(data, trained):
    target = target_of(data)
    with pytest.raises(ValueError, match="`prob_key` and `call_key` are both 'x'"):
        trained.predict(target, prob_key="x", call_key="x")
    with pytest.raises(ValueError, match=r"\['section'\] would overwrite columns the model reads"):
        trained.predict(target, prob_key="section")
    target.obs["score"] = 1.0  # the user's own column
    with pytest.warns(UserWarning, match=r"obs\['score'\] exist and were not written by a previous predict"):
        trained.predict(target, prob_key="score")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # writing again where predict wrote before is silent
        # (this barely trained model calls the whole section cancer, which the shift detector reports)
        warnings.filterwarnings("ignore", message="The target differs from the training data")
        trained.predict(target, prob_key="score")


# -------------------------------------------------------------------------------- unchecked arguments
@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"batch_size": 0}, ValueError, r"`batch_size` must be an integer ≥ 2, got 0"),
        ({"fuse_lr": -1e-3}, ValueError, r"`fuse_lr` must be a positive number, got -0.001"),
        ({"align_epochs": True}, TypeError, r"`align_epochs` must be a non-negative integer, got True"),
        ({"train_size": 1.5}, ValueError, r"`train_size` must be a number in \(0, 1\], got 1.5"),
        ({"validation": "blocks"}, ValueError, r"`validation` must be one of 'section', 'block'"),
        ({"max_epochs": 5}, TypeError, r"`max_epochs` is set per stage in SpaCRD"),
        ({"accelerator": "gpu"}, ValueError, r"`accelerator='gpu'` but no CUDA GPU is available"),
    ],
)
def test_train_arguments_are_checked(data, kwargs, error, message):
    if kwargs.get("accelerator") == "gpu":
        pytest.importorskip("torch")
        import torch

        if torch.cuda.is_available():
            pytest.skip("this machine has a GPU")
    with pytest.raises(error, match=message):
        _model(data).train(**{**EPOCHS, **kwargs})


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        (
            {"threshold": True},
            TypeError,
            r"`threshold` must be None, 'gmm' or a probability in \[0, 1\], got True",
        ),
        ({"threshold": 1.5}, ValueError, r"`threshold` must be a number in \[0, 1\], got 1.5"),
        ({"min_gene_overlap": 1.5}, ValueError, r"`min_gene_overlap` must be a number in \[0, 1\], got 1.5"),
        (
            {"expression_propagation": 1.0},
            ValueError,
            r"`expression_propagation` must be a number in \[0, 1\)",
        ),
        ({"spatial_smoothing": "yes"}, TypeError, r"`spatial_smoothing` must be True or False, got 'yes'"),
        ({"batch_size": -5}, ValueError, r"`batch_size` must be a positive integer, got -5"),
    ],
)
def test_predict_arguments_are_checked(data, trained, kwargs, error, message):
    with pytest.raises(error, match=message):
        trained.predict(target_of(data), **kwargs)


def test_architecture_arguments_are_checked_before_allocating(data, trained, tmp_path):
    source = source_of(data)
    SpaCRD.setup_anndata(source, **SETUP)
    with pytest.raises(ValueError, match=r"`n_embed` \(15\) must be a multiple of `n_heads` \(2\)"):
        SpaCRD(source, **{**NET, "n_embed": 15})
    with pytest.raises(ValueError, match=r"`dropout` must be a number in \[0, 1\), got 1.0"):
        SpaCRD(source, **NET, dropout=1.0)
    # a model file declaring an absurd width is refused before any weight is allocated
    trained.save(tmp_path / "m")
    meta = json.loads((tmp_path / "m" / "model.json").read_text())
    meta["init_params"]["n_embed"] = 10**9
    (tmp_path / "m" / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"`n_embed` must be an integer in \[1, 65536\], got 1000000000"):
        SpaCRD.load(tmp_path / "m")
    meta["init_params"] = {**meta["init_params"], "n_embed": 16, "n_embedding": 8}
    (tmp_path / "m" / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"model.json has unknown init_params \['n_embedding'\]"):
        SpaCRD.load(tmp_path / "m")


def test_a_crop_size_that_would_allocate_terabytes_is_refused(data):
    adata = target_of(data)
    adata.uns["spatial"] = {
        "S2": {
            "images": {"hires": np.full((100, 100, 3), 200, np.uint8)},
            "scalefactors": {"tissue_hires_scalef": 0.05, "spot_diameter_fullres": 50.0},
        }
    }
    with pytest.raises(ValueError, match=r"would be 50,000 px wide \(at most 4,096\); check `crop_diameter`"):
        spacrd.pp.image_features(adata, crop_diameter=1e6)


# -------------------------------------------------------------------------------------------- saving
def test_save_refuses_a_file_and_clears_stale_files(trained, tmp_path):
    path = tmp_path / "not_a_dir"
    path.write_text("hello")
    with pytest.raises(ValueError, match="is a file, not a directory"):
        trained.save(path)
    trained.save(tmp_path / "m", save_anndata=True)
    assert (tmp_path / "m" / "adata.h5ad").exists()
    trained.save(tmp_path / "m", overwrite=True)  # without the AnnData this time
    assert not (tmp_path / "m" / "adata.h5ad").exists()
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["model.json", "model.pt"]


# ------------------------------------------------------------------------ the argument validator itself
NUMBERS = st.one_of(
    st.integers(-(10**6), 10**6), st.floats(allow_nan=True, allow_infinity=True), st.booleans(), st.none()
)


@settings(max_examples=200, deadline=None)
@given(
    value=NUMBERS, low=st.integers(-5, 5), span=st.integers(0, 10), integer=st.booleans(), open_=st.booleans()
)
def test_check_number_accepts_exactly_the_range(value, low, span, integer, open_):
    high = low + span
    is_number = isinstance(value, int | float) and not isinstance(value, bool)
    valid = (
        is_number
        and np.isfinite(value)
        and (not integer or float(value).is_integer())
        and (low < value if open_ else low <= value)
        and value <= high
    )
    try:
        out = check_number("arg", value, integer=integer, low=low, high=high, low_open=open_)
    except (TypeError, ValueError) as err:
        assert not valid
        assert str(err).startswith("`arg` must be ") and f"got {value!r}" in str(err)
    else:
        assert valid and out == value
