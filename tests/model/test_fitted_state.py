"""The fitted state as one object: built by train(), saved as one entry, extended by calibrate().

``tests/data/model_format1`` was saved before the fitted state was one object (see its README): its
outputs pin the numbers of the default path, and its files the loading of format 1.
"""

import ast
import dataclasses
import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scvi
from _synthetic import synthetic_sections
from scvi.train import TrainRunner

from spacrd.model import FittedState, InputSpec, SpaCRD, StagedTrainRunner
from spacrd.tl import Calibration
from spacrd.tl._postprocess import DEFAULT_MIN_SEPARATION

REFERENCE = Path(__file__).resolve().parents[1] / "data" / "model_format1"
#: The same recipe trained by today's code (``tests/data/fresh_training/make.py``).
FRESH_TRAINING = Path(__file__).resolve().parents[1] / "data" / "fresh_training" / "expected.json"
MODEL_DIR = Path(__file__).resolve().parents[2] / "src" / "spacrd" / "model"
NET = {"n_top_genes": 50, "n_embed": 16, "n_heads": 2, "n_latent": 4}
# the reference's recipe: train()'s defaults when it was saved, before depth augmentation was one
EPOCHS = {
    "align_epochs": 4,
    "fuse_epochs": 4,
    "classify_epochs": 10,
    "batch_size": 64,
    "depth_augmentation": None,
}
UNSMOOTHED = {"expression_propagation": 0.0, "spatial_smoothing": False, "call": "source"}


def _data():
    """The reference's training sections and target, rebuilt as README.md says."""
    adata = synthetic_sections(n_sections=4, grid=12, n_genes=100)
    source = adata[adata.obs["section"] != "S3"].copy()
    target = adata[adata.obs["section"] == "S3"].copy()
    SpaCRD.setup_anndata(
        source, layer="counts", labels_key="cancer", batch_key="section", image_key="X_histology"
    )
    return source, target


@pytest.fixture(scope="module")
def reference():
    return (
        pd.read_csv(REFERENCE / "expected_predictions.csv", index_col=0),
        json.loads((REFERENCE / "expected_state.json").read_text()),
    )


def train_fresh() -> tuple[SpaCRD, object]:
    """The reference's recipe trained again: same seed, same data (also ``fresh_training/make.py``)."""
    source, target = _data()
    scvi.settings.seed = 0
    model = SpaCRD(source, **NET)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.train(**EPOCHS, enable_progress_bar=False)
    return model, target


@pytest.fixture(scope="module")
def fresh():
    return train_fresh()


def _assert_close(calibration: Calibration, expected: dict) -> None:
    for key, value in expected.items():
        if isinstance(value, str):
            assert getattr(calibration, key) == value
        else:
            assert getattr(calibration, key) == pytest.approx(value, rel=1e-3)


# ------------------------------------------------------------------------------ numbers unchanged
def test_a_format1_model_predicts_as_before(reference):
    expected, _ = reference
    _, target = _data()
    model = SpaCRD.load(str(REFERENCE / "model"))
    ranker = SpaCRD.load(str(REFERENCE / "ranker"))
    predicted = target.copy()
    # the reference's default call was "auto" without the separation test: for this target, which is
    # like the training sections, the calibration's level, "source"
    model.predict(predicted, call="source")
    np.testing.assert_allclose(predicted.obs["ctr_prob"], expected["ctr_prob"], rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(predicted.obs["ctr"].astype(str), expected["ctr"])
    np.testing.assert_allclose(
        predicted.obs["ctr_uncertainty"], expected["ctr_uncertainty"], rtol=1e-5, atol=1e-7
    )
    for call in ("prior", "mixture"):
        prob = model.predict(target.copy(), call=call)
        np.testing.assert_allclose(prob, expected[f"ctr_prob_{call}"], rtol=1e-5, atol=1e-7)
    # today's default takes the mixture's level where the scores separate by D >= 3, else the source's
    default = target.copy()
    model.predict(default)
    level = "mixture" if default.uns["spacrd"]["separation"]["S3"] >= DEFAULT_MIN_SEPARATION else "source"
    assert default.uns["spacrd"]["level"] == {"S3": level}
    column = "ctr_prob_mixture" if level == "mixture" else "ctr_prob"
    np.testing.assert_allclose(default.obs["ctr_prob"], expected[column], rtol=1e-5, atol=1e-7)
    ranked = target.copy()
    model.predict(ranked, ranking_model=ranker, call="source")
    np.testing.assert_allclose(ranked.obs["ctr_prob"], expected["ctr_prob_ranked"], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(
        ranked.obs["ctr_uncertainty"], expected["ctr_uncertainty_ranked"], rtol=1e-5, atol=1e-7
    )
    np.testing.assert_allclose(
        model.get_latent_representation(target), np.load(REFERENCE / "expected_latent.npy"), atol=1e-5
    )


def test_training_again_builds_the_same_state_and_predictions(fresh, reference):
    """Training is deterministic on one machine; across machines the tolerance absorbs float noise.

    The split and the share come out as the format-1 reference's; the weights, calibrations and
    predictions as ``fresh_training``'s (training draws its dropout masks from another random stream
    than the reference's code).
    """
    model, target = fresh
    _, state = reference
    trained = json.loads(FRESH_TRAINING.read_text())
    fitted = model.fitted_state
    np.testing.assert_array_equal(fitted.validation_indices, state["validation_indices"])
    assert fitted.validation_split == state["validation_split"] == "block"
    assert fitted.n_image_training_spots == state["n_image_training_spots"]
    assert fitted.source_cancer_share == pytest.approx(state["source_cancer_share"])
    assert fitted.n_source_spots == model.adata.n_obs
    _assert_close(fitted.calibration, trained["calibration"])
    np.testing.assert_allclose(
        model.predict(target.copy(), call="source"), trained["ctr_prob_source"], atol=1e-3
    )
    # what predict refitted for other settings before, calibrate fits now, on the same spots
    calibration = model.calibrate(**UNSMOOTHED)
    _assert_close(calibration, trained["calibration_unsmoothed"])
    prob = model.predict(target.copy(), **UNSMOOTHED)
    # unsmoothed, a few spots near the middle move most with training's float noise (summation order)
    np.testing.assert_allclose(prob, trained["ctr_prob_unsmoothed"], atol=5e-3)


# ------------------------------------------------------------------------------ round trip
def test_fitted_state_round_trip_keeps_validation_rows_and_calibrations(fresh, tmp_path):
    model, target = fresh
    model.calibrate(**UNSMOOTHED)
    model.save(str(tmp_path / "m"))
    meta = json.loads((tmp_path / "m" / "model.json").read_text())
    assert "fitted_state" in meta and "calibration" not in meta and meta["format_version"] == 2
    loaded = SpaCRD.load(str(tmp_path / "m"))
    assert loaded.fitted_state == model.fitted_state and len(loaded.fitted_state.calibrations) == 2
    np.testing.assert_array_equal(loaded.validation_indices, model.fitted_state.validation_indices)
    for settings in ({}, UNSMOOTHED):
        np.testing.assert_array_equal(
            loaded.predict(target.copy(), **settings), model.predict(target.copy(), **settings)
        )
    # attached to its training data again, the loaded model calibrates as the fresh one did
    source, _ = _data()
    again = SpaCRD.load(str(tmp_path / "m"), adata=source)
    settings = {"expression_propagation": 0.25, "spatial_smoothing": False}
    assert again.calibrate(**settings) == model.calibrate(**settings)


def test_the_state_is_frozen(fresh):
    model, _ = fresh
    state = model.fitted_state
    with pytest.raises(dataclasses.FrozenInstanceError):
        state.source_cancer_share = 0.5
    with pytest.raises(ValueError, match="read-only"):
        state.validation_indices[0] = 1
    with pytest.raises(AttributeError):
        model.calibration_ = Calibration()  # a view of the state, not an attribute of its own
    assert model.calibration_ is state.calibration and model.training_profile_ is state.training_profile
    assert isinstance(model.input_spec, InputSpec)
    with pytest.raises(dataclasses.FrozenInstanceError):
        model.input_spec.section_scaling = "none"
    with pytest.raises(TypeError):
        model.input_spec.setup_args["layer"] = "X"


# ------------------------------------------------------------------------------ predict and calibrate
def test_predict_with_other_settings_says_how_to_calibrate(fresh):
    model, target = fresh
    settings = {"expression_propagation": 0.1, "spatial_smoothing": True}
    with pytest.raises(
        ValueError,
        match=r"No calibration is stored for expression_propagation=0\.1, spatial_smoothing=True.*"
        r"`model\.calibrate\(expression_propagation=0\.1, spatial_smoothing=True\)` fits it",
    ):
        model.predict(target.copy(), **settings)
    assert "ctr_prob" not in target.obs  # nothing was computed or written


def test_a_loaded_model_without_training_data_calibrates_on_labelled_spots(fresh, tmp_path):
    model, target = fresh
    model.save(str(tmp_path / "m"))
    loaded = SpaCRD.load(str(tmp_path / "m"))
    settings = {"expression_propagation": 0.0, "spatial_smoothing": True, "call": "prior"}
    with pytest.raises(ValueError, match=r"`model\.calibrate\(labelled_adata, expression_propagation=0\.0"):
        loaded.predict(target.copy(), **settings)
    with pytest.raises(ValueError, match=r"SpaCRD\.load\(dir_path, adata=source\)"):
        loaded.predict(target.copy(), **settings)
    with pytest.raises(ValueError, match="has no registered AnnData"):
        loaded.calibrate(**settings)
    labelled = target.copy()
    labelled.obs["truth"] = labelled.obs["cancer"].map({True: "tumour", False: "normal"})
    calibration = loaded.calibrate(labelled, labels_key="truth", cancer_categories=["tumour"], **settings)
    assert calibration.validation == "given" and calibration.n_spots == target.n_obs
    assert calibration.fitted_for(0.0, True) and calibration.scale > 0
    prob = loaded.predict(target.copy(), **settings)
    assert prob.shape == (target.n_obs,) and np.isfinite(prob).all()
    # the default calibration is the training one still, and is used for the defaults
    np.testing.assert_array_equal(loaded.predict(target.copy()), model.predict(target.copy()))
    with pytest.raises(KeyError, match="no_such_column"):
        loaded.calibrate(target, labels_key="no_such_column")


def test_a_format1_model_without_validation_rows_names_the_way_out():
    source, target = _data()
    model = SpaCRD.load(str(REFERENCE / "model"), adata=source)
    assert model.fitted_state.validation_indices is None  # format 1 did not save them
    with pytest.raises(ValueError, match="saved without its validation spots"):
        model.calibrate(expression_propagation=0.0)
    with pytest.raises(ValueError, match=r"model\.calibrate\(labelled_adata"):
        model.predict(target.copy(), expression_propagation=0.0)
    assert model.calibrate(target, expression_propagation=0.0).validation == "given"
    model.predict(target.copy(), expression_propagation=0.0)


def test_train_can_calibrate_for_other_settings_too(fresh):
    _, target = fresh
    source, _ = _data()
    scvi.settings.seed = 0
    other = SpaCRD(source, **NET)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        other.train(
            align_epochs=1,
            fuse_epochs=1,
            classify_epochs=3,
            batch_size=64,
            calibrate_for=[{"expression_propagation": 0.0, "spatial_smoothing": False}],
            enable_progress_bar=False,
        )
    assert [c.fitted_for(0.0, False) for c in other.fitted_state.calibrations] == [False, True]
    other.predict(target.copy(), **UNSMOOTHED)  # no calibrate() needed
    with pytest.raises(TypeError, match="unexpected keyword argument 'smoothing'"):
        other.calibrate(smoothing=False)


def test_get_logits_is_what_predict_calibrates(fresh):
    model, target = fresh
    predicted = target.copy()
    model.predict(predicted, call="source")
    logits, members = model.get_logits(target, return_members=True)
    assert logits.shape == (target.n_obs,) and members.shape == (target.n_obs, model.module.n_members)
    calibration = model.fitted_state.calibration
    expected = 1 / (1 + np.exp(-calibration.apply(logits)))
    np.testing.assert_allclose(predicted.obs["ctr_prob"], expected, rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(model.get_logits(target), logits)


# ------------------------------------------------------------------------------ structure
def test_the_stage_runner_is_an_scvi_tools_runner(fresh):
    model, _ = fresh
    assert SpaCRD._train_runner_cls is StagedTrainRunner and issubclass(StagedTrainRunner, TrainRunner)
    assert model.is_trained_ and {k.split("_", 1)[0] for k in model.history_} == {
        "stage1",
        "stage2",
        "stage3",
    }
    assert len(model.history_["stage3_train_loss"]) == EPOCHS["classify_epochs"]
    np.testing.assert_array_equal(model.validation_indices, model.fitted_state.validation_indices)


def test_no_module_of_the_model_package_imports_the_model_class():
    """``_model.py`` brings the pieces together; none of them imports it, not even for typing."""
    offenders = []
    for path in sorted(MODEL_DIR.glob("*.py")):
        if path.name in ("_model.py", "__init__.py"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""] + [f"{node.module or ''}.{a.name}" for a in node.names]
                if any(name == "_model" or name.endswith("._model") or name == "._model" for name in names):
                    offenders.append(path.name)
                if node.level == 1 and node.module is None and any(a.name == "_model" for a in node.names):
                    offenders.append(path.name)
            elif isinstance(node, ast.Import):
                if any(a.name.endswith("model._model") for a in node.names):
                    offenders.append(path.name)
    assert not offenders, offenders


def test_state_entries_are_checked_when_read(fresh, tmp_path):
    model, _ = fresh
    model.save(str(tmp_path / "m"))
    path = tmp_path / "m" / "model.json"
    meta = json.loads(path.read_text())
    state = meta["fitted_state"]
    for edit, message in (
        ({"validation_split": "diagonal"}, "validation_split must be one of"),
        ({"source_cancer_share": 1.5}, "source_cancer_share"),
        ({"n_source_spots": 3}, "validation_indices lie outside the training rows"),
        ({"surprise": 1}, r"unknown entries \['surprise'\]"),
    ):
        path.write_text(json.dumps({**meta, "fitted_state": {**state, **edit}}))
        with pytest.raises(ValueError, match=message):
            SpaCRD.load(str(tmp_path / "m"))
    path.write_text(json.dumps({**meta, "fitted_state": None}))
    with pytest.raises(ValueError, match="trained model without its fitted_state"):
        SpaCRD.load(str(tmp_path / "m"))
    assert FittedState.from_dict(None) is None
