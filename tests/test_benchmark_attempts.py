"""The screens of benchmarks/: training-data variants (level_attempts) and label-free calls."""

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import label_free_calls as lfc
import level_attempts as la
from _synthetic import synthetic_sections

from spacrd.tl import adjust_to_prior


@pytest.fixture
def sections():
    adata = synthetic_sections(n_sections=3, grid=10, n_genes=40)
    adata.obs["section"] = adata.obs["section"].astype(str)
    adata.obs["cancer"] = adata.obs["cancer"].astype("boolean")
    return adata


def test_thinned_copy_loses_counts_along_one_direction(sections):
    part = sections[sections.obs["section"] == "S0"]
    copy = la.thinned(part, np.random.default_rng(0))
    before = np.asarray(part.layers["counts"].sum(axis=1)).ravel()
    after = np.asarray(copy.layers["counts"].sum(axis=1)).ravel()
    assert (part.layers["counts"] - copy.layers["counts"]).min() >= 0  # thinning never adds counts
    kept = after / before
    assert kept.min() < 0.4 and kept.max() > 0.85  # from the floor at one edge to all at the other
    assert set(copy.obs["section"]) == {"S0_thinned"} and not set(copy.obs_names) & set(part.obs_names)
    np.testing.assert_array_equal(copy.obs["cancer"].to_numpy(), part.obs["cancer"].to_numpy())


@pytest.mark.parametrize("share", [0.2, 0.8])
def test_share_resampled_copy_has_the_asked_share(sections, share):
    part = sections[sections.obs["section"] == "S1"]
    copy = la.share_resampled(part, share, np.random.default_rng(0))
    assert abs(copy.obs["cancer"].to_numpy(dtype=float).mean() - share) < 0.02
    assert set(copy.obs_names.str.rsplit("_", n=1).str[0]) <= set(part.obs_names)
    own = part.obs["cancer"].to_numpy(dtype=float).mean()
    assert la.share_resampled(part, own + 0.05, np.random.default_rng(0)) is None  # already close: no copy


def test_transductive_variant_adds_the_target_without_labels(sections):
    train, test = (
        sections[sections.obs["section"] != "S2"].copy(),
        sections[sections.obs["section"] == "S2"].copy(),
    )
    test.obs = test.obs[["section"]]
    both, target, image_key = la.with_transductive(train, test, 0)
    assert image_key is None and target is test
    added = both.obs["section"] == "S2"
    assert added.sum() == test.n_obs and both.obs["cancer"][added.to_numpy()].isna().all()
    assert both.obs["cancer"][~added.to_numpy()].notna().all()


def test_depth_feature_is_log_library_of_train_and_test(sections):
    train, test = (
        sections[sections.obs["section"] != "S2"].copy(),
        sections[sections.obs["section"] == "S2"].copy(),
    )
    train, test, key = la.with_depth_feature(train, test, 0)
    library = np.asarray(test.layers["counts"].sum(axis=1)).ravel()
    np.testing.assert_allclose(test.obsm[key][:, 0], np.log10(library + 1.0), rtol=1e-6)
    assert train.obsm[key].shape == (train.n_obs, 1)


def test_level_summary_lists_variants_in_order_with_the_true_share():
    rows = [
        {
            "variant": v,
            "section": s,
            "seed": 0,
            "auc": 0.9,
            "ap": 0.9,
            "f1_prev": 0.8,
            "f1_free": f1,
            "brier": 0.1,
            "called_share": called,
            "true_share": 0.25 if s == "B1" else 0.75,
            "train_cpu_s": 1.0,
            "calibration_scale": 1.0,
            "calibration_shift": shift if s == "B1" else -shift,
        }
        for v, f1, called, shift in (("thinning", 0.6, 0.5, 0.2), ("default", 0.5, 0.6, 0.7))
        for s in ("A1", "B1")
    ]
    text = la.summarise(pd.DataFrame(rows))
    lines = text.splitlines()
    assert lines.index(next(x for x in lines if x.startswith("| default |"))) < lines.index(
        next(x for x in lines if x.startswith("| thinning |"))
    )
    assert "| true share | 0.75 | 0.25 |" in lines
    # mean absolute share error: |0.6 - 0.75| and |0.6 - 0.25| averaged
    assert "| default | 0 | 0.900 | 0.900 | 0.800 | 0.500 | 0.100 | 0.250 | 1.0 |" in lines
    assert "| default | 0 | -0.70 to +0.70 |" in lines
    assert "| thinning | 0 | +0.20 | 0.50 |" in lines  # B1's shift and called share, fold by fold


def test_undoing_the_prior_shift_recovers_the_unshifted_call():
    rng = np.random.default_rng(0)
    y = rng.random(400) < 0.3
    raw = 1.0 / (1.0 + np.exp(-(rng.normal(0, 1, 400) + 2.5 * y - 0.8)))
    source_share = 0.6
    shifted, _ = adjust_to_prior(raw, source_share)
    rules = lfc.calls(shifted.astype(float), y, source_share)
    agree = (rules["before the prior shift: p ≥ 0.5"] == (raw >= 0.5)).mean()
    assert agree > 0.99  # the EM's fixed point is the mean shifted probability, up to its tolerance
    assert rules["prevalence threshold (uses labels)"].sum() == pytest.approx(y.sum(), abs=1)


def test_unshifted_calibration_drops_the_shift_only_inside_the_block():
    import _baselines as bl
    import nested_selection as ns

    from spacrd.tl import Calibration

    class Model:
        calibration_ = Calibration(scale=0.8, shift=0.9)

        def _calibration_for(self, settings):
            return self.calibration_

    model = Model()
    with bl.unshifted_calibration(model):
        assert model._calibration_for(None) == Calibration(scale=0.8, shift=0.0)  # the scale kept
    assert model._calibration_for(None) == Calibration(scale=0.8, shift=0.9)  # restored
    assert ns.UNSHIFTED_CALLS <= set(ns.CALLS) and set(ns.DEFAULT_CALLS) <= set(ns.CALLS)
    assert la.UNSHIFTED_VARIANTS <= set(la.VARIANTS)
