"""Fast checks of the benchmark's metrics and baselines (the full benchmark is not run here)."""

import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import _baselines as bl
import _metrics as mt
import nested_selection as ns
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


# ---------------------------------------------------------------------------- synthetic data
def synthetic(n_sections: int = 3, side: int = 14, n_genes: int = 150, seed: int = 0) -> ad.AnnData:
    """Sections on a grid with a disc of cancer spots whose 15 marker genes (ERBB2 among them) are up."""
    rng = np.random.default_rng(seed)
    genes = ["ERBB2", *[f"G{i}" for i in range(n_genes - 1)]]
    base = rng.gamma(2.0, 2.0, n_genes)
    parts = []
    for s in range(n_sections):
        yy, xx = np.mgrid[0:side, 0:side]
        coords = np.c_[xx.ravel(), yy.ravel()].astype(float) * 100.0
        centre = rng.uniform(0.3, 0.7, 2) * side * 100.0
        cancer = np.linalg.norm(coords - centre, axis=1) < side * 100.0 * (0.25 + 0.1 * s)
        rate = np.tile(base, (coords.shape[0], 1)) * rng.uniform(0.5, 2.0)  # section depth differs
        rate[np.ix_(cancer, np.arange(15))] *= 2.5
        counts = rng.poisson(rate * rng.gamma(5.0, 0.2, rate.shape)).astype(np.float32)
        a = ad.AnnData(sp.csr_matrix(counts), var=pd.DataFrame(index=genes))
        a.obs_names = [f"s{s}_{i}" for i in range(a.n_obs)]
        a.obs["section"] = f"S{s}"
        label = pd.array(cancer, dtype="boolean")
        label[rng.random(a.n_obs) < 0.05] = pd.NA  # a few unlabelled spots, as in HER2ST
        a.obs["cancer"] = label
        a.obsm["spatial"] = coords
        parts.append(a)
    out = ad.concat(parts)
    out.layers["counts"] = out.X.copy()
    out.obs["section"] = out.obs["section"].astype("category")
    return out


@pytest.fixture(scope="module")
def split_data():
    adata = synthetic()
    train, test = rb.split(adata, "S2", ["S0", "S1", "S2"])
    mask, y = bl.labelled(adata[adata.obs["section"] == "S2"])
    return train, test, mask, y


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


# ------------------------------------------------------------------------------ nested selection
def test_nested_selection_picks_ranking_by_auc_then_call_by_f1():
    rows = []
    for section, bump in (("B1", 0.0), ("C1", 0.02)):
        for arch, alpha, call in [
            (a, p, c) for a in ns.ARCHITECTURES for p in ns.PROPAGATION for c in ns.CALLS
        ]:
            auc = 0.8 + bump + (0.05 if arch == "deep" and alpha == 0.0 else 0.0)
            f1 = 0.7 + (0.1 if call == "gmm" else 0.0)
            rows.append(
                {
                    "section": section,
                    "architecture": arch,
                    "propagation": alpha,
                    "call": call,
                    "auc": auc,
                    "f1_free": f1,
                }
            )
    assert ns.select(pd.DataFrame(rows)) == ("deep", 0.0, "gmm")


def test_nested_selection_summary_marks_the_default():
    outer = pd.DataFrame(
        [
            {
                "section": s,
                "architecture": a,
                "propagation": p,
                "call": c,
                "auc": 0.9,
                "ap": 0.9,
                "f1_prev": 0.8,
                "f1_free": 0.8,
                "brier": 0.1,
            }
            for s in ("A1", "B1")
            for a in ns.ARCHITECTURES
            for p in ns.PROPAGATION
            for c in ns.CALLS
        ]
    )
    chosen = pd.DataFrame(
        [{"section": s, "architecture": "wide", "propagation": 0.5, "call": "bayes"} for s in ("A1", "B1")]
    )
    text = ns.summarise(outer, chosen)
    assert "| A1 | wide | 0.5 | bayes |" in text and "wide (default)" in text
    assert text.count("(default)") == 1


def test_paper_preset_runs_as_a_benchmark_method(split_data, one_thread):
    """The research code's configuration is a benchmark row: model, training and prediction settings."""
    from spacrd.model import PAPER, PAPER_SETTINGS

    assert PAPER_SETTINGS is PAPER.model and PAPER.model["n_hidden"] == (1024, 512)
    assert PAPER.train["classify_lr"] == 1e-5 and PAPER.predict["threshold"] == "gmm"
    train, test, _, _ = split_data
    prob = bl.METHODS["spacrd_paper"](train, test, 0, quick=True)
    assert prob.shape == (test.n_obs,) and np.isfinite(prob).all()
    assert test.uns["spacrd"]["threshold_method"] == "gmm" and not test.uns["spacrd"]["spatial_smoothing"]


# ------------------------------------------------------------------- image blocks protocol
def _grid_sections(n_side=8):
    """A1: an n_side x n_side grid (pixels, 100 apart) with image features; B1: a small grid without."""
    rng = np.random.default_rng(0)
    xy_a = np.array([(100.0 * i, 100.0 * j) for i in range(n_side) for j in range(n_side)])
    xy_b = np.array([(100.0 * i, 100.0 * j) for i in range(4) for j in range(4)])
    n_a, n = len(xy_a), len(xy_a) + len(xy_b)
    counts = sp.csr_matrix(rng.poisson(2.0, size=(n, 30)).astype(np.float32))
    adata = ad.AnnData(
        counts,
        obs=pd.DataFrame(
            {
                "section": ["A1"] * n_a + ["B1"] * (n - n_a),
                "cancer": pd.array(rng.random(n) < 0.5, "boolean"),
            },
            index=[f"s{i}" for i in range(n)],
        ),
        var=pd.DataFrame(index=[f"g{i}" for i in range(30)]),
    )
    adata.layers["counts"] = counts.copy()
    adata.obsm["spatial"] = np.vstack([xy_a, xy_b])
    for key, width in (("histology_stats", 3), ("efficientnet_lite0", 5)):
        features = np.full((n, width), np.nan, dtype=np.float32)
        features[:n_a] = rng.normal(size=(n_a, width))
        adata.obsm[key] = features
    return adata, n_a


def test_quadrant_blocks_are_contiguous_and_balanced():
    import image_blocks as ib

    adata, n_a = _grid_sections()
    xy = adata.obsm["spatial"][:n_a]
    blocks = ib.quadrant_blocks(xy)
    assert sorted(set(blocks)) == sorted(ib.BLOCKS)
    assert all((blocks == b).sum() == n_a // 4 for b in ib.BLOCKS)
    left, top = xy[:, 0] < 350, xy[:, 1] < 350  # image y grows downwards
    assert (blocks[left & top] == "top-left").all() and (blocks[~left & ~top] == "bottom-right").all()
    assert (blocks[~left & top] == "top-right").all() and (blocks[left & ~top] == "bottom-left").all()


def test_block_split_keeps_neighbourhoods_inside_their_side():
    import image_blocks as ib

    from spacrd.model import SpaCRD
    from spacrd.pp import spatial_neighbors

    adata, n_a = _grid_sections()
    spatial_neighbors(adata, library_key="section")  # a graph over the whole of A1 must not travel along
    blocks = pd.Series(np.nan, index=adata.obs_names, dtype=object)
    blocks.iloc[:n_a] = ib.quadrant_blocks(adata.obsm["spatial"][:n_a])
    train, test = ib.block_split(adata, blocks, "top-left", "efficientnet_lite0")
    held = blocks.index[blocks == "top-left"]
    assert set(test.obs_names) == set(held) and not set(train.obs_names) & set(held)
    assert list(test.obs.columns) == ["section"]  # no label reaches the model's target
    assert set(train.obsm) == {"spatial", "efficientnet_lite0"} == set(test.obsm)
    assert np.isnan(train.obsm["efficientnet_lite0"][(train.obs["section"] == "B1").to_numpy()]).all()
    _, none = ib.block_split(adata, blocks, "top-left", None)
    assert set(none.obsm) == {"spatial"}

    SpaCRD.setup_anndata(train, layer="counts", labels_key="cancer", batch_key="section", n_neighbors=7)
    graph = train.obsm["spacrd_neighbors"]
    held_xy = {tuple(p) for p in adata[held].obsm["spatial"]}
    train_xy = train.obsm["spatial"]
    a1 = np.flatnonzero((train.obs["section"] == "A1").to_numpy())
    assert not any(tuple(train_xy[j]) in held_xy for i in a1 for j in graph[i])
    # in the graph over the whole section, the spots next to the block did reach into it
    full = adata.obsm["spacrd_neighbors"]
    boundary = [i for i in range(n_a) if blocks.iloc[i] != "top-left"]
    assert any(blocks.iloc[j] == "top-left" for i in boundary for j in full[i])


def test_image_blocks_summary_pairs_seeds_and_drops_incomplete_ones():
    import image_blocks as ib

    rng = np.random.default_rng(1)
    runs, preds = [], []
    for seed in (0, 1, 2):
        for block in ib.BLOCKS:
            if seed == 2 and block != "top-left":
                continue  # an interrupted seed
            for model, lift in ((ib.NO_IMAGE, 0.0), ("histology_stats", 0.02), ("efficientnet_lite0", 0.05)):
                y = np.r_[np.zeros(5), np.ones(15)].astype(int)
                prob = np.clip(0.3 + 0.4 * y + rng.normal(0, 0.3 - lift, 20), 0, 1)
                m = mt.section_metrics(y, prob, call=prob > 0.5)
                runs.append({"block": block, "model": model, "seed": seed, **m})
                preds.append(
                    pd.DataFrame(
                        {"model": model, "seed": seed, "cancer": y, "prob": prob, "call": prob > 0.5}
                    )
                )
    runs, preds = pd.DataFrame(runs), pd.concat(preds)
    text = ib.summarise(runs, preds, {"Note": "x"})
    assert "Incomplete seeds left out: 2" in text and "seeds 0, 1" in text
    auc = text.split("## ROC AUC")[1].split("##")[0]
    kept = runs[runs["seed"] < 2]
    means = kept.groupby(["model", "seed"])["auc"].mean().unstack()
    diff = means.loc["efficientnet_lite0"] - means.loc[ib.NO_IMAGE]
    row = next(line for line in auc.splitlines() if line.startswith("| image − expression"))
    assert row.split("|")[-2].strip() == f"{diff.mean():.3f} ± {diff.std(ddof=1):.3f}"
    pooled = next(line for line in auc.splitlines() if line.startswith("| pooled"))
    assert "| 80 (20) |" in pooled  # 4 blocks x 20 spots, 5 non-cancer each


# ------------------------------------------------------------------- hard sections reading
def test_hard_sections_tables_on_a_constructed_case():
    import hard_sections as hs

    # one 4 x 4 grid per section: left half cancer; the call is right except at two spots
    xy = np.array([(x, y) for x in range(4) for y in range(4)], dtype=float)
    obs = []
    for s in hs.SECTIONS:
        cancer = xy[:, 0] < 2
        labels = np.where(cancer, "invasive cancer", "connective tissue")
        obs.append(
            pd.DataFrame(
                {"section": s, "label": labels, "cancer": cancer, "array_x": xy[:, 0], "array_y": xy[:, 1]},
                index=[f"{s}_{i}" for i in range(len(xy))],
            )
        )
    obs = pd.concat(obs)
    call = obs["cancer"].to_numpy(dtype=float)
    wrong = np.array(
        [obs.index.get_loc("A1_8"), obs.index.get_loc("A1_15")]
    )  # (2, 0) on the boundary; (3, 3) not
    call[wrong] = 1 - call[wrong]
    predictions = pd.DataFrame(
        {"method": "spacrd", "spot": obs.index, "prob": call * 0.8 + 0.1, "call": call}
    )

    class Sections:
        pass

    adata = Sections()
    adata.obs = obs
    table = hs.boundary_errors(adata, predictions)
    a1 = next(line for line in table.splitlines() if line.startswith("| A1 "))
    # 2 wrong calls, one of them at the boundary; 8 of 16 spots touch the other label
    assert a1 == "| A1 | 2 of 16 | 50% | 50% |"
    tissue = hs.by_tissue(obs[["section", "label", "cancer"]], predictions)
    row = next(line for line in tissue.splitlines() if "connective tissue" in line)
    assert row.split("|")[3].strip() == "0.30 / 25% (8)"  # A1: both wrong calls are connective spots
    shares = hs.shares(adata, predictions)
    assert "| A1 | 0.50 | 0.62 |" in shares and "| B1 | 0.50 | 0.50 |" in shares
