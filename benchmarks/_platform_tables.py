"""Tables of ``platform_shift.py``: every call applied to the cached network outputs, the nested selection."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pandas as pd
from _metrics import section_metrics

from spacrd.model._shift import depth_by_section, unlike_training
from spacrd.tl._postprocess import CALLS, PostprocessSettings, postprocess

#: The tables shown in ``docs/benchmark.md`` and the model card (the per-section ones stay in ``summary.md``).
DOCS_TABLE = Path(__file__).resolve().parents[1] / "docs" / "_static" / "platform_shift.md"
#: Baselines cached beside the model's outputs; their call is the two-Gaussian cut of their scores.
BASELINES = ("logreg_hvg_knn", "erbb2")
#: The candidate separations of ``call="auto"`` (``PostprocessSettings.min_separation``) the nested
#: selection chooses among; ``inf`` is ``auto`` without the separation test (spacrd 0.5's).
SEPARATIONS = (2.0, 2.5, 3.0, 3.5, 4.0, float("inf"))
#: Every call scored: ``predict``'s calls with their defaults, and ``auto`` at each separation.
CALL_SETTINGS = {call: PostprocessSettings(call=call) for call in CALLS} | {
    f"auto_d{d:g}": PostprocessSettings(call="auto", min_separation=d) for d in SEPARATIONS
}
#: The columns of the summary, with their titles.
METRICS = {
    "auc": "ROC AUC",
    "ap": "AP",
    "f1_free": "label-free F1",
    "share_error": "|called − true share|",
    "called_share": "called share",
    "prevalence": "true share",
    "unc_auroc": "uncertainty AUROC (wrong calls)",
}


def apply_call(record: dict, entry: dict, call: str) -> dict[str, np.ndarray]:
    """Probabilities, call and uncertainty of one cached target under ``call`` (a key of ``CALL_SETTINGS``)."""
    counts, genes = depth_by_section(entry["library"], entry["detected"], entry["sections"])
    result = postprocess(
        entry["logits"],
        entry["neighbors"],
        entry["padding"],
        entry["sections"],
        CALL_SETTINGS[call],
        record["calibration"],
        record["source_share"],
        entry["graph"],
        member_logits=entry["members"],
        target_level_sections=unlike_training(record["profile"], counts, genes, entry["gene_overlap"]),
    )
    separation = next(iter(result.separation.values()), np.nan)  # one section per target
    return {
        "prob": result.probabilities,
        "call": result.called,
        "uncertainty": result.uncertainty,
        "separation": separation,
    }


def _row(job: dict, section: str, rate: float, method: str, truth: np.ndarray, scores: dict) -> dict:
    metrics = section_metrics(
        truth, scores["prob"], scores.get("call"), uncertainty=scores.get("uncertainty")
    )
    called = scores["call"] if scores.get("call") is not None else None
    share = float(np.mean(called)) if called is not None else np.nan
    return {
        "kind": job["kind"],
        "seed": job["seed"],
        "genes": job["genes"] or "all",
        "section": section,
        "held": "-".join(job["held"]),
        "rate": rate,
        "method": method,
        **{k: metrics[k] for k in ("auc", "ap", "f1_free", "unc_auroc", "prevalence")},
        "called_share": share,
        "separation": scores.get("separation", np.nan),
    }


def scores(job_list: list[dict], cache: Path) -> pd.DataFrame:
    """One row per cached model, target section, rate and method (``spacrd/<call>``, baselines).

    The rows of each model are kept beside its outputs (``<job>.scores.csv``) until the outputs change.
    """
    from platform_shift import job_name

    rows = []
    for job in job_list:
        path = cache / f"{job_name(job)}.pkl"
        if not path.exists():
            continue
        scored = path.with_suffix(".scores.csv")
        rows.append(pd.read_csv(scored) if _current(scored, path) else None)
        if rows[-1] is None:
            rows[-1] = pd.DataFrame(_model_rows(job, path))
            rows[-1].to_csv(scored, index=False)
    df = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()
    if len(df):
        df["genes"] = df["genes"].astype(str)
        df["held"] = df["held"].astype(str)
        df["share_error"] = (df["called_share"] - df["prevalence"]).abs()
    return df


def _current(scored: Path, path: Path) -> bool:
    """Whether the kept rows ``scored`` are newer than the model's outputs ``path`` and score every call
    with today's settings (a changed default of ``predict`` changes what ``auto`` means)."""
    if not scored.exists() or scored.stat().st_mtime < path.stat().st_mtime:
        return False
    kept = pd.read_csv(scored)
    if "settings" not in kept or "separation" not in kept:
        return False
    settings = set(kept["settings"].dropna())
    return {repr(s) for s in CALL_SETTINGS.values()} <= settings


def _model_rows(job: dict, path: Path) -> list[dict]:
    from _metrics import gmm_threshold

    with path.open("rb") as f:
        record = pickle.load(f)
    prefix = "spacrd" if job["recipe"] == "plain" else f"spacrd+{job['recipe']}"
    rows = []
    for (section, rate), entry in record["targets"].items():
        truth = entry["truth"]
        for call in CALL_SETTINGS:
            row = _row(job, section, rate, f"{prefix}/{call}", truth, apply_call(record, entry, call))
            rows.append({**row, "settings": repr(CALL_SETTINGS[call])})
        for name in BASELINES:
            if name in entry:
                p = np.asarray(entry[name], dtype=float)
                rows.append(_row(job, section, rate, name, truth, {"prob": p, "call": p > gmm_threshold(p)}))
    return rows


def _recipe(method: str) -> str:
    """``spacrd+thinning/auto`` → ``spacrd+thinning``."""
    return method.split("/")[0]


def nested_selection(df: pd.DataFrame, sections: list[str]) -> pd.DataFrame:
    """Per outer section, the recipe and call chosen on inner folds of the training sections only.

    The recipe is the one with the highest mean inner ROC AUC (its representation's ranking across the
    inner targets and rates), then its call with the lowest mean inner share error (``chosen``); and,
    of that recipe's ``auto`` at each candidate separation, the one with the lowest mean inner share
    error (``chosen_separation``). The inner model for
    outer section ``o`` and inner target ``j`` was trained on the four other sections (neither ``o``
    nor ``j``) and scored on ``j`` at every rate; ``o`` plays no part.
    """
    inner = df[(df["kind"] == "inner") & df["method"].str.startswith("spacrd")]
    rows = []
    for outer in sections:
        pairs = inner[
            inner["held"].str.split("-").apply(lambda held, o=outer: o in held) & (inner["section"] != outer)
        ]
        if pairs.empty:
            continue
        ranking = pairs.groupby(pairs["method"].map(_recipe))["auc"].mean()
        recipe = ranking.idxmax()
        means = pairs.groupby("method")["share_error"].mean()
        ours = means[means.index.map(_recipe) == recipe]
        chosen = ours.idxmin()
        separations = ours[ours.index.str.contains("/auto_d")]
        rows.append(
            {
                "outer": outer,
                "chosen": chosen,
                "chosen_separation": separations.idxmin() if len(separations) else None,
                **{f"inner_auc[{r}]": ranking[r] for r in ranking.index},
                **{f"inner_error[{m.removeprefix('spacrd/')}]": means[m] for m in means.index},
            }
        )
    return pd.DataFrame(rows)


def with_selected(df: pd.DataFrame, selection: pd.DataFrame) -> pd.DataFrame:
    """``df`` plus rows ``spacrd/selected`` and ``spacrd/auto_selected``: each outer section scored with
    the recipe and call, and the separation of ``auto``, chosen for it."""
    if selection.empty:
        return df
    # outer folds only: the panels are trained with one recipe, whichever was chosen
    outer = df[(df["kind"] == "outer") & df["method"].str.startswith("spacrd")]
    added = [df]
    for column, name in (("chosen", "spacrd/selected"), ("chosen_separation", "spacrd/auto_selected")):
        chosen = dict(zip(selection["outer"], selection[column], strict=True))
        picked = outer[outer.apply(lambda r, c=chosen: c.get(r["section"]) == r["method"], axis=1)].copy()
        picked["method"] = name
        added.append(picked)
    return pd.concat(added, ignore_index=True)


def _table(df: pd.DataFrame, index: list[str], title: str) -> list[str]:
    """Markdown table of the means over sections and seeds, by ``index`` and rate, one metric per block."""
    lines = [f"### {title}", ""]
    for metric, name in METRICS.items():
        pivot = df.pivot_table(index=index, columns="rate", values=metric, aggfunc="mean")
        if pivot.isna().all().all():
            continue
        pivot = pivot[sorted(pivot.columns, reverse=True)]
        lines += [
            f"{name}:",
            "",
            "| " + " | ".join(index) + " | " + " | ".join(f"{r:.0%}" for r in pivot.columns) + " |",
        ]
        lines.append("|" + "---|" * (len(index) + len(pivot.columns)))
        for key, values in pivot.iterrows():
            key = key if isinstance(key, tuple) else (key,)
            cells = " | ".join("" if np.isnan(v) else f"{v:.3f}" for v in values)
            lines.append("| " + " | ".join(map(str, key)) + " | " + cells + " |")
        lines.append("")
    return lines


def _markdown(frame: pd.DataFrame) -> list[str]:
    """``frame`` as a Markdown table (floats to 3 decimals), without optional dependencies."""
    cells = [
        [f"{v:.3f}" if isinstance(v, float) else str(v) for v in row] for row in frame.itertuples(index=False)
    ]
    return ["| " + " | ".join(frame.columns) + " |", "|" + "---|" * frame.shape[1]] + [
        "| " + " | ".join(row) + " |" for row in cells
    ]


def _separation_table(df: pd.DataFrame) -> list[str]:
    """Share error and label-free F1 of ``call="auto"`` at each candidate separation, by recipe and rate."""
    if df.empty:
        return []
    df = df.assign(
        recipe=df["method"].map(_recipe),
        min_separation=df["method"].str.split("_d").str[-1],
    )
    lines = [
        '### `call="auto"` by its separation test',
        "",
        "A section like the training ones takes its own mixture's level when the mixture's components "
        "separate by at least `min_separation` (Ashman's D); `inf`: never.",
        "",
    ]
    for metric in ("share_error", "f1_free"):
        pivot = df.pivot_table(index=["recipe", "min_separation"], columns="rate", values=metric)
        pivot = pivot[sorted(pivot.columns, reverse=True)]
        lines += [
            f"{METRICS[metric]}:",
            "",
            "| recipe | min_separation | " + " | ".join(f"{r:.0%}" for r in pivot.columns) + " |",
            "|" + "---|" * (2 + len(pivot.columns)),
        ]
        for (recipe, d), values in pivot.iterrows():
            lines.append(f"| {recipe} | {d} | " + " | ".join(f"{v:.3f}" for v in values) + " |")
        lines.append("")
    return lines


def write_tables(
    job_list: list[dict],
    cache: Path,
    out: Path,
    sections: list[str],
    docs: Path | None = DOCS_TABLE,
    command: str = "python benchmarks/platform_shift.py",
) -> None:
    """``scores.csv``, ``selection.csv`` and ``summary.md`` under ``out``; the docs' tables to ``docs``."""
    df = scores(job_list, cache)
    if df.empty:
        print("nothing cached yet")
        return
    selection = nested_selection(df, sections)
    df = with_selected(df, selection)
    out.mkdir(parents=True, exist_ok=True)
    df.to_csv(out / "scores.csv", index=False)
    selection.to_csv(out / "selection.csv", index=False)
    outer = df[df["kind"] == "outer"]
    seeds = sorted(int(s) for s in outer["seed"].unique())
    lines = [
        "## Platform shift: leave-one-section-out on the six labelled HER2ST sections",
        "",
        f"Held-out sections thinned to each rate (seed 0); means over sections and seeds {seeds} "
        f"(`erbb2`: seed 0 only). Produced by `{command}`.",
        "",
    ]
    by_separation = outer["method"].str.contains("/auto_d")
    lines += _table(outer[~by_separation], ["method"], "All genes, by depth")
    lines += _separation_table(outer[by_separation])
    panels = df[
        (df["kind"] == "panel")
        | ((df["kind"] == "outer") & (df["seed"] == seeds[0]) & (df["rate"].isin([1.0, 0.1])))
    ]
    panels = panels[panels["method"].str.startswith("spacrd/") | (panels["method"] == "logreg_hvg_knn")]
    panels = panels[~panels["method"].str.startswith("spacrd+")]
    lines += _table(panels, ["genes", "method"], f"Gene panels (seed {seeds[0]})")
    if not selection.empty:
        lines += [
            "### Nested selection of the recipe and the call",
            "",
            "Mean inner ROC AUC of each recipe and |called − true share| of each call over the inner "
            "targets (the training sections) and rates: the recipe with the highest AUC, then its call "
            "with the lowest error, is chosen for the held-out section (`chosen`), and of its `auto` "
            "at each separation the one with the lowest error (`chosen_separation`); the columns are "
            "the inner errors of `auto` at each separation (the others are in `selection.csv`).",
            "",
            *_markdown(selection[[c for c in selection.columns if "[" not in c or "auto_d" in c]]),
            "",
        ]
    defaults = [m for m in ("spacrd+thinning/auto", "spacrd/auto") if m in set(outer["method"])][:1]
    per_section = outer[outer["method"].isin([*defaults, "spacrd/auto_selected", "logreg_hvg_knn"])]
    lines += _table(per_section, ["section", "method"], "Per section")
    docs_lines = list(lines)
    (out / "summary.md").write_text("\n".join(lines))
    if docs is not None:
        docs.write_text("\n".join(docs_lines))
    print("\n".join(lines))
