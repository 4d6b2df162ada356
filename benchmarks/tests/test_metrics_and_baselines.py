"""Fast checks of the benchmark's metrics and baselines (the full benchmark is not run here)."""

import _baselines as bl
import _metrics as mt
import numpy as np
import pandas as pd
import pytest
import run_benchmark as rb


# ------------------------------------------------------------------------------------ metrics
def test_perfect_scores():
    y = np.array([0, 0, 0, 1, 1, 1, 1])
    prob = np.array([0.0, 0.1, 0.2, 0.8, 0.9, 0.95, 1.0])
    m = mt.section_metrics(y, prob)
    assert m["auc"] == 1.0
    assert m["ap"] == 1.0
    assert m["f1_prev"] == 1.0
    assert m["f1_free"] == 1.0
    assert m["brier"] == pytest.approx(np.mean([0, 0.01, 0.04, 0.04, 0.01, 0.0025, 0]))
    assert m["prevalence"] == pytest.approx(4 / 7)
    assert m["n"] == 7


def test_reversed_scores_give_auc_zero_and_uninformative_brier():
    y = np.array([0, 0, 1, 1])
    assert mt.section_metrics(y, np.array([0.9, 0.8, 0.2, 0.1]))["auc"] == 0.0
    assert mt.section_metrics(y, np.full(4, 0.5))["brier"] == pytest.approx(0.25)


def test_prevalence_threshold_f1_on_constructed_case():
    # 4 negatives, 6 positives: the threshold keeps the top 6 scores, which hold 5 positives and 1 negative.
    y = np.array([0, 0, 0, 1, 0, 1, 1, 1, 1, 1])
    score = np.arange(10, dtype=float)
    thr = mt.prevalence_threshold(score, y)
    assert 3.0 < thr < 4.0
    assert mt.f1_at(score, y, thr) == pytest.approx(2 * 5 / (2 * 5 + 1 + 1))


def test_gmm_threshold_between_separated_modes():
    rng = np.random.default_rng(0)
    # equal spreads: the crossing is the midpoint shifted by s^2 log(w1 / w2) / (m2 - m1)
    score = np.concatenate([rng.normal(0.0, 1.0, 3000), rng.normal(10.0, 1.0, 1000)])
    thr = mt.gmm_threshold(score)
    assert thr == pytest.approx(5.0 + np.log(3.0) / 10.0, abs=0.15)
    balanced = np.concatenate([rng.normal(0.2, 0.05, 500), rng.normal(0.8, 0.05, 500)])
    assert mt.gmm_threshold(balanced) == pytest.approx(0.5, abs=0.02)


def test_gmm_threshold_constant_scores():
    assert mt.gmm_threshold(np.full(10, 0.3)) == pytest.approx(0.3)


def test_minmax():
    np.testing.assert_allclose(mt.minmax(np.array([2.0, 4.0, 3.0])), [0.0, 1.0, 0.5])
    np.testing.assert_allclose(mt.minmax(np.ones(3)), 0.5)


# ------------------------------------------------------------------------------ feature helpers
def test_zscore_and_knn_smooth_stay_within_sections():
    x = np.array([[1.0], [3.0], [10.0], [30.0]])
    sections = np.array(["a", "a", "b", "b"])
    np.testing.assert_allclose(bl.zscore_by_section(x, sections).ravel(), [-1, 1, -1, 1])
    coords = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 0.0], [1.0, 0.0]])
    # k = 2: each spot averages itself with its only neighbour in the same section
    np.testing.assert_allclose(bl.knn_smooth(x, coords, sections, k=2).ravel(), [2, 2, 20, 20])


def test_split_hides_test_labels(split_data):
    train, test, _, _ = split_data
    assert list(test.obs.columns) == ["section"]
    assert set(train.obs["section"]) == {"S0", "S1"}
    assert set(test.obs["section"]) == {"S2"}


@pytest.fixture
def one_thread():
    # a shared CI machine slows multi-threaded torch by oversubscription far more than one thread costs
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("method", ["erbb2", "logreg_hvg", "logreg_hvg_knn", "scanvi"])
def test_baselines_beat_chance(split_data, method, one_thread):
    train, test, mask, y = split_data
    timer = bl.Timer()
    prob = bl.METHODS[method](train, test, 0, timer=timer, quick=True)
    assert prob.shape == (test.n_obs,)
    assert np.all((prob >= 0) & (prob <= 1))
    m = mt.section_metrics(y, prob[mask])
    assert m["auc"] > 0.7, m  # chance is 0.5
    assert timer.seconds["predict"] > 0


def test_hvgs_pick_the_marker_genes(split_data):
    train, _, _, _ = split_data
    genes = bl.select_hvgs(train, n_top=20)
    assert len(genes) == 20
    markers = {"ERBB2", *[f"G{i}" for i in range(14)]}  # the genes raised in cancer spots
    assert len(markers & set(genes)) >= 12


def test_summary_has_section_and_mean_rows():
    rows = []
    for sec, prev in (("X1", 0.3), ("X2", 0.6)):
        for method, seeds in (("spacrd", (0, 1)), ("erbb2", (0,))):
            for seed in seeds:
                rows.append(
                    {
                        "section": sec,
                        "method": method,
                        "seed": seed,
                        "auc": 0.8 + 0.01 * seed,
                        "ap": 0.7,
                        "f1_prev": 0.6,
                        "f1_free": 0.5,
                        "brier": 0.2,
                        "prevalence": prev,
                        "n": 100,
                        "train_s": 1.0,
                        "predict_s": 0.1,
                        "train_cpu_s": 2.0,
                        "predict_cpu_s": 0.2,
                        "peak_rss_mb": 900.0,
                        "rss_growth_mb": 50.0,
                        "load_avg": 1.0,
                        "cores": 2,
                        "threads": 1,
                    }
                )
    text = rb.summarise(pd.DataFrame(rows))
    auc_table = text.split("## ROC AUC")[1].split("##")[0]
    assert "| X1 | 100 (0.30) |" in auc_table
    assert "| mean |" in auc_table
    assert "0.805 ± 0.007" in auc_table  # spacrd: seeds 0 and 1


def test_fit_logreg_chooses_strength_on_training_sections(split_data):
    train, _, _, _ = split_data
    mask, y = bl.labelled(train)
    sections = train.obs["section"].astype(str).to_numpy()[mask]
    x = bl.expression_features(train, bl.select_hvgs(train, n_top=50), smooth=False)[mask]
    clf = bl.fit_logreg(x, y, sections, seed=0)
    assert clf.C_[0] in bl.LOGREG_CS
    assert clf.scores_[1].shape == (2, len(bl.LOGREG_CS))  # one fold per training section
    single = bl.fit_logreg(x, y, np.full(y.size, "S0"), seed=0)
    assert single.C == bl.LOGREG_CS[len(bl.LOGREG_CS) // 2]


def test_paper_preset_runs_as_a_benchmark_method(split_data, one_thread):
    """The research code's configuration is a benchmark row: model, training and prediction settings."""
    from spacrd.model import PAPER, PAPER_SETTINGS

    assert PAPER_SETTINGS is PAPER.model and PAPER.model["n_hidden"] == (1024, 512)
    assert PAPER.train["classify_lr"] == 1e-5 and PAPER.predict["threshold"] == "gmm"
    train, test, _, _ = split_data
    prob = bl.METHODS["spacrd_paper"](train, test, 0, quick=True)
    assert prob.shape == (test.n_obs,) and np.isfinite(prob).all()
    assert test.uns["spacrd"]["threshold_method"] == "gmm" and not test.uns["spacrd"]["spatial_smoothing"]
