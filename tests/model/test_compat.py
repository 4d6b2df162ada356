"""Models saved before the redesign of the input path load and predict the same."""

import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from spacrd.model import SpaCRD
from spacrd.tl import Calibration

OLD = Path(__file__).resolve().parents[1] / "data" / "model_0.1.0"


@pytest.fixture(scope="module")
def old():
    return (
        SpaCRD.load(str(OLD)),
        ad.read_h5ad(OLD / "target.h5ad"),
        pd.read_csv(OLD / "expected_predictions.csv"),
    )


def test_old_model_predicts_as_before(old):
    model, target, expected = old
    assert model.is_trained_ and isinstance(model.calibration_, Calibration)
    # fitted before the settings were recorded: for the defaults, on randomly held-out spots
    assert model.calibration_.fitted_for(0.5, True) and model.calibration_.validation == "random"
    # the default call of the version that saved it (the level from the source, prior-shifted)
    prob = model.predict(target.copy(), call="prior")
    np.testing.assert_allclose(prob, expected["ctr_prob"], atol=1e-5)
    called = target.copy()
    model.predict(called, call="prior")
    np.testing.assert_array_equal(called.obs["ctr"].astype(str), expected["ctr"])
    np.testing.assert_allclose(
        model.get_latent_representation(target), np.load(OLD / "expected_latent.npy"), atol=1e-5
    )


def test_old_model_with_other_postprocessing_needs_calibrate(old, tmp_path):
    model, target, expected = old
    settings = {"expression_propagation": 0.0, "spatial_smoothing": False, "prior_shift": False}
    # its calibration was fitted for the defaults, and a loaded model has no training data to refit on
    with pytest.raises(ValueError, match=r"No calibration is stored for expression_propagation=0\.0, "):
        model.predict(target.copy(), **settings)
    with pytest.raises(ValueError, match=r"model\.calibrate\(labelled_adata, expression_propagation=0\.0"):
        model.predict(target.copy(), **settings)
    with pytest.raises(ValueError, match="has no registered AnnData"):
        model.calibrate(**settings)
    copy = SpaCRD.load(str(OLD))  # calibrate changes the model's state: not the shared fixture's
    calibration = copy.calibrate(target, **settings)  # labelled spots: the target's own labels
    assert calibration.validation == "given" and calibration.n_spots == target.n_obs
    assert copy.fitted_state.calibration == model.calibration_  # the training one is kept, first
    prob = copy.predict(target.copy(), **settings)
    # a calibration is monotone: the spots keep the order of the earlier version's probabilities
    order = np.argsort(expected["ctr_prob_no_postprocessing"].to_numpy(), kind="stable")
    assert (np.diff(prob[order]) >= -1e-6).all()
    copy.save(str(tmp_path / "calibrated"))
    back = SpaCRD.load(str(tmp_path / "calibrated"))
    np.testing.assert_array_equal(back.predict(target.copy(), **settings), prob)


def test_old_model_saves_in_the_current_format_and_reloads(old, tmp_path):
    model, target, _ = old
    model.save(str(tmp_path / "again"))
    back = SpaCRD.load(str(tmp_path / "again"))
    assert back.calibration_ == model.calibration_
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_array_equal(back.predict(target.copy()), model.predict(target.copy()))
