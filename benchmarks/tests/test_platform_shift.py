"""benchmarks/platform_shift.py: the thinning, the jobs and the nested selection of the call."""

import _platform_tables as tables
import numpy as np
import pandas as pd
import platform_shift as ps


def test_thinning_keeps_the_rate_and_is_fixed_by_its_seed(synthetic_sections):
    adata = synthetic_sections(n_sections=1, side=8, n_genes=30)
    thin = ps.thinned(adata, 0.1)
    ratio = thin.layers["counts"].sum() / adata.layers["counts"].sum()
    assert abs(ratio - 0.1) < 0.01 and (thin.X != thin.layers["counts"]).nnz == 0
    assert (ps.thinned(adata, 0.1).layers["counts"] != thin.layers["counts"]).nnz == 0
    assert (ps.thinned(adata, 1.0).layers["counts"] != adata.layers["counts"]).nnz == 0


def test_jobs_hold_each_inner_pair_once_and_never_train_on_what_they_score():
    sections = ["A", "B", "C", "D"]
    jobs = ps.jobs(sections, [0, 1], ["plain", "thinning"], [300], nested=True)
    inner = [j for j in jobs if j["kind"] == "inner"]
    for recipe in ("plain", "thinning"):  # every recipe is selected on the same inner folds
        assert len({j["held"] for j in inner if j["recipe"] == recipe}) == 6
    assert len(inner) == 12
    assert len([j for j in jobs if j["kind"] == "outer"]) == 4 * 2 * 2
    assert len({ps.job_name(j) for j in jobs}) == len(jobs)


def _inner_rows(errors):
    """Inner rows: for every pair (o, j) and target j, the share error of each call."""
    rows = []
    for (a, b), by_call in errors.items():
        for target in (a, b):
            for call, error in by_call.items():
                rows.append(
                    {
                        "kind": "inner",
                        "held": f"{a}-{b}",
                        "section": target,
                        "method": f"spacrd/{call}",
                        "share_error": error,
                        "f1_free": 0.5,
                        "auc": 0.8,
                    }
                )
    return pd.DataFrame(rows)


def test_nested_selection_never_reads_the_outer_section():
    # "mixture" is better everywhere except when A is the *target*: the outer fold A must not see that
    pairs = [("A", "B"), ("A", "C"), ("B", "C")]
    df = _inner_rows({pair: {"mixture": 0.1, "prior": 0.3} for pair in pairs})
    df.loc[(df["section"] == "A") & (df["method"] == "spacrd/mixture"), "share_error"] = 0.9
    selection = tables.nested_selection(df, ["A", "B", "C"]).set_index("outer")
    assert selection.loc["A", "chosen"] == "spacrd/mixture"  # from targets B and C only
    assert selection.loc["B", "chosen"] == "spacrd/prior"  # its inner targets include A
    np.testing.assert_allclose(selection.loc["A", "inner_error[mixture]"], 0.1)


def test_nested_selection_takes_the_better_ranking_recipe_then_its_best_call():
    # the thinning recipe ranks better, though the plain recipe has the lowest share error of all
    pairs = [("A", "B"), ("A", "C"), ("B", "C")]
    plain = _inner_rows({pair: {"mixture": 0.05} for pair in pairs})
    thinning = _inner_rows({pair: {"auto": 0.2, "mixture": 0.1} for pair in pairs})
    thinning["method"] = thinning["method"].str.replace("spacrd/", "spacrd+thinning/")
    thinning["auc"] = 0.9
    selection = tables.nested_selection(pd.concat([plain, thinning]), ["A", "B", "C"]).set_index("outer")
    assert (selection["chosen"] == "spacrd+thinning/mixture").all()
    np.testing.assert_allclose(selection["inner_auc[spacrd+thinning]"], 0.9)


def test_jobs_of_one_recipe_train_only_it():
    jobs = ps.jobs(["A", "B", "C"], [0, 1], ["thinning"], [], nested=True)
    assert {j["recipe"] for j in jobs} == {"thinning"}
    assert len([j for j in jobs if j["kind"] == "inner"]) == 3  # the first seed's pairs
    assert len([j for j in jobs if j["kind"] == "outer"]) == 3 * 2


def test_nested_selection_chooses_the_separation_of_auto_among_its_candidates():
    # "mixture" has the lowest error of all calls, but the separation is chosen among auto's only
    pairs = [("A", "B"), ("A", "C"), ("B", "C")]
    df = _inner_rows(
        {pair: {"mixture": 0.01, "auto_d2": 0.3, "auto_d3": 0.1, "auto_dinf": 0.2} for pair in pairs}
    )
    df.loc[(df["section"] == "A") & (df["method"] == "spacrd/auto_d3"), "share_error"] = 0.9
    selection = tables.nested_selection(df, ["A", "B", "C"]).set_index("outer")
    assert (selection["chosen"] == "spacrd/mixture").all()
    assert selection.loc["A", "chosen_separation"] == "spacrd/auto_d3"  # A's own error is not read
    assert selection.loc["B", "chosen_separation"] == "spacrd/auto_dinf"  # its inner targets hold A
    outer = pd.DataFrame(
        [
            {"kind": "outer", "section": s, "method": f"spacrd/{c}", "share_error": e}
            for s in "ABC"
            for c, e in (("auto_d3", 0.1), ("auto_dinf", 0.2), ("mixture", 0.3))
        ]
    )
    picked = tables.with_selected(outer, selection.reset_index())
    chosen = picked[picked["method"] == "spacrd/auto_selected"].set_index("section")["share_error"]
    assert chosen.to_dict() == {"A": 0.1, "B": 0.2, "C": 0.2}
