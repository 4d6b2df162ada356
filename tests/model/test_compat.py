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


def test_old_model_without_postprocessing_warns_about_its_calibration(old):
    model, target, expected = old
    with pytest.warns(UserWarning, match="calibration was fitted for logits post-processed with"):
        prob = model.predict(
            target.copy(), expression_propagation=0.0, spatial_smoothing=False, prior_shift=False
        )
    np.testing.assert_allclose(prob, expected["ctr_prob_no_postprocessing"], atol=1e-5)


def test_old_model_saves_in_the_current_format_and_reloads(old, tmp_path):
    model, target, _ = old
    model.save(str(tmp_path / "again"))
    back = SpaCRD.load(str(tmp_path / "again"))
    assert back.calibration_ == model.calibration_
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_array_equal(back.predict(target.copy()), model.predict(target.copy()))
