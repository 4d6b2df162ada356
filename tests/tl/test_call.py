import anndata as ad
import numpy as np
import pandas as pd
import pytest

from spacrd.tl import call
from spacrd.tl._level import mixture_level


def _predicted(seed=0):
    """Two sections of stored probabilities: one mostly cancer, one mostly not."""
    rng = np.random.default_rng(seed)
    z = np.r_[
        rng.normal(2, 0.7, 300), rng.normal(-2, 0.7, 100), rng.normal(2, 0.7, 80), rng.normal(-2, 0.7, 320)
    ]
    obs = pd.DataFrame(
        {"section": np.repeat(["A", "B"], 400), "ctr_prob": (1 / (1 + np.exp(-(z + 1)))).astype(np.float32)},
        index=[f"s{i}" for i in range(800)],
    )
    adata = ad.AnnData(obs=obs)
    adata.obs["ctr"] = pd.Categorical(np.where(adata.obs["ctr_prob"] >= 0.5, "cancer", "non-cancer"))
    adata.uns["spacrd"] = {"threshold": 0.5}
    return adata


def test_default_reproduces_the_stored_call_and_changes_nothing_else():
    adata = _predicted()
    before = adata.copy()
    called = call(adata, key_added="again")
    assert (called == before.obs["ctr"]).all() and (adata.obs["again"] == adata.obs["ctr"]).all()
    pd.testing.assert_frame_equal(adata.obs.drop(columns="again"), before.obs)
    assert set(adata.uns) == {"spacrd", "again_call"} and adata.uns["spacrd"] == {"threshold": 0.5}
    assert adata.uns["again_call"]["threshold"] == {"A": 0.5, "B": 0.5}


def test_another_threshold_calls_fewer_spots():
    adata = _predicted()
    call(adata, 0.9)
    high = (adata.obs["ctr"] == "cancer").mean()
    assert high < (adata.obs["ctr_prob"] >= 0.5).mean()
    assert high == pytest.approx((adata.obs["ctr_prob"] >= 0.9).mean())
    assert list(adata.obs["ctr"].cat.categories) == ["non-cancer", "cancer"]


def test_mixture_cuts_each_section_at_its_own_level():
    adata = _predicted()
    call(adata, method="mixture", key_added="mix")
    record = adata.uns["mix_call"]
    share = record["cancer_share"]
    assert share["A"] == pytest.approx(0.75, abs=0.03) and share["B"] == pytest.approx(0.2, abs=0.03)
    p = adata.obs["ctr_prob"].to_numpy(np.float64)[:400]
    level = mixture_level(np.log(p / (1 - p)))
    assert share["A"] == pytest.approx(level.share, abs=1e-3)
    low, high = record["cancer_share_interval"]["A"]
    assert low <= share["A"] <= high and record["two_populations"]["A"]


def test_gmm_and_one_section_without_a_section_column():
    adata = _predicted()
    del adata.obs["section"]
    call(adata, method="gmm")
    assert list(adata.uns["ctr_call"]["threshold"]) == ["0"] and adata.uns["ctr_call"]["section_key"] is None


def test_bad_input_is_named():
    adata = _predicted()
    with pytest.raises(KeyError, match=r"model\.predict"):
        call(adata, prob_key="missing")
    with pytest.raises(ValueError, match="method='threshold' only"):
        call(adata, 0.3, method="mixture")
    with pytest.raises(ValueError, match="method"):
        call(adata, method="otsu")
    with pytest.raises(KeyError, match="section_key"):
        call(adata, section_key="patient")
    adata.obs["ctr_prob"] = adata.obs["ctr_prob"] * 2
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        call(adata)
