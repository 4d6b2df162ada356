"""Changes to SpaCRD's training data (and one to its calibration) aimed at the level of its probabilities.

On B1 the default model ranks spots well (ROC AUC about 0.96) but calls about half of the section
cancer against a true 21%: connective tissue and breast glands in a low-depth part of the section score
like cancer. Each variant below changes what the model is trained on, in a way that needs no labels of
the held-out section, and is scored leave-one-section-out like ``run_benchmark.py``:

``default``
    The default model.
``thinning``
    Each training section gets a copy whose counts are binomially thinned, at a rate rising along a
    random direction from 5–30% at one edge to 100% at the other, as a section of its own: the network
    sees low- and high-depth parts of a section side by side.
``share_resampling``
    Each training section gets copies resampled to a cancer share of 0.2 and of 0.5 (when its own share
    is more than 0.1 away), scaled with their own statistics: the network sees cancer and non-cancer
    spots under the per-section z-score of sections with few and with many cancer spots.
``depth_feature``
    The log10 library size of every spot is a one-column side feature (through the image branch, scaled
    per section like image features).
``transductive``
    The held-out section joins training as unlabelled spots (stages II and III see its expression).
``unshifted_calibration``
    The default model, predicting with the shift of its calibration set to 0 (the scale kept): is the
    call steadier across seeds when the level is not fitted on the validation spots?

A screen, one model per fold and seed, scored on the evaluated sections; no variant became a default
from it. Run from the repository root (about 4 min per variant and seed on 2 cores)::

    python benchmarks/studies/level_attempts.py                 # every variant, seed 0
    python benchmarks/studies/level_attempts.py --variants default thinning --seeds 1 2

Writes ``results/level_attempts/attempts.csv`` and ``summary.md``. Runs already in that table are kept
and not repeated, so the second command above adds two seeds of two variants to the first one's.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections.abc import Callable
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
from scipy import sparse

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: run_benchmark, _metrics

from _baselines import _trained_spacrd, unshifted_calibration
from _metrics import section_metrics
from run_benchmark import DEFAULT_DATA, HER2ST_LABELLED, REPO_ROOT, load_data, split

DEFAULT_OUT = REPO_ROOT / "results" / "level_attempts"
DEPTH_KEY = "X_log_library"
#: Lowest thinning rate of a thinned copy is drawn from this range.
THINNING_FLOOR = (0.05, 0.3)
#: Cancer shares the share-resampled copies are drawn to.
RESAMPLED_SHARES = (0.2, 0.5)


def _as_training(parts: list[ad.AnnData]) -> ad.AnnData:
    out = ad.concat(parts, merge="same")
    out.obs["section"] = out.obs["section"].astype(str).astype("category")
    out.obs["cancer"] = out.obs["cancer"].astype("boolean")
    return out


def _renamed(part: ad.AnnData, tag: str) -> ad.AnnData:
    part = part.copy()
    part.obs_names = [f"{name}_{tag}" for name in part.obs_names]
    part.obs["section"] = [f"{s}_{tag}" for s in part.obs["section"].astype(str)]
    return part


def _sections(adata: ad.AnnData):
    sections = adata.obs["section"].astype(str).to_numpy()
    for s in pd.unique(sections):
        yield adata[sections == s]


def thinned(part: ad.AnnData, rng: np.random.Generator) -> ad.AnnData:
    """A copy of one section whose counts are thinned at a rate rising linearly across the section."""
    counts = sparse.csr_matrix(part.layers["counts"]).astype(np.int64)
    direction = rng.normal(size=2)
    position = np.asarray(part.obsm["spatial"], dtype=float) @ (direction / np.linalg.norm(direction))
    position = (position - position.min()) / max(np.ptp(position), 1e-9)
    floor = rng.uniform(*THINNING_FLOOR)
    rate = floor + (1.0 - floor) * position
    rows = np.repeat(np.arange(counts.shape[0]), np.diff(counts.indptr))
    data = rng.binomial(counts.data, rate[rows])
    thin = sparse.csr_matrix((data, counts.indices, counts.indptr), shape=counts.shape, dtype=np.float32)
    thin.eliminate_zeros()
    copy = _renamed(part, "thinned")
    copy.X = thin
    copy.layers["counts"] = thin.copy()
    return copy


def share_resampled(part: ad.AnnData, share: float, rng: np.random.Generator) -> ad.AnnData | None:
    """A copy of one section with spots dropped at random until ``share`` of its labelled spots are cancer."""
    y = part.obs["cancer"].to_numpy(dtype=float)
    cancer, other = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    if not (cancer.size and other.size) or abs(cancer.size / (cancer.size + other.size) - share) <= 0.1:
        return None
    if cancer.size / (cancer.size + other.size) > share:
        cancer = rng.choice(cancer, round(share / (1 - share) * other.size), replace=False)
    else:
        other = rng.choice(other, round((1 - share) / share * cancer.size), replace=False)
    rows = np.sort(np.concatenate([cancer, other, np.flatnonzero(np.isnan(y))]))
    return _renamed(part[rows], f"share{round(share * 100)}")


def with_thinning(train, test, seed):
    rng = np.random.default_rng(seed)
    return _as_training([train] + [thinned(p, rng) for p in _sections(train)]), test, None


def with_share_resampling(train, test, seed):
    rng = np.random.default_rng(seed)
    copies = [share_resampled(p, s, rng) for p in _sections(train) for s in RESAMPLED_SHARES]
    return _as_training([train] + [c for c in copies if c is not None]), test, None


def with_depth_feature(train, test, seed):
    for part in (train, test):
        library = np.asarray(part.layers["counts"].sum(axis=1), dtype=float).ravel()
        part.obsm[DEPTH_KEY] = np.log10(library + 1.0)[:, None]
    return train, test, DEPTH_KEY


def with_transductive(train, test, seed):
    unlabelled = test.copy()
    unlabelled.obs["cancer"] = pd.array([pd.NA] * test.n_obs, dtype="boolean")
    return _as_training([train, unlabelled]), test, None


VARIANTS: dict[str, Callable] = {
    "default": lambda train, test, seed: (train, test, None),
    "thinning": with_thinning,
    "share_resampling": with_share_resampling,
    "depth_feature": with_depth_feature,
    "transductive": with_transductive,
    "unshifted_calibration": lambda train, test, seed: (train, test, None),
}


#: Variants whose model predicts with its calibration's shift set to 0 (their data is the default's).
UNSHIFTED_VARIANTS = frozenset({"unshifted_calibration"})


def run(adata: ad.AnnData, variant: str, section: str, seed: int, quick: bool = False) -> dict:
    train, test = split(adata, section, list(HER2ST_LABELLED))
    y = adata.obs["cancer"][(adata.obs["section"].astype(str) == section).to_numpy()].to_numpy(dtype=float)
    train, test, image_key = VARIANTS[variant](train, test, seed)
    start = time.process_time()
    model = _trained_spacrd(train, seed, quick, image_key, {}, {})
    train_cpu = time.process_time() - start
    calibration = model.calibration_  # as fitted
    with unshifted_calibration(model) if variant in UNSHIFTED_VARIANTS else contextlib.nullcontext():
        prob = np.asarray(model.predict(test), dtype=float)
    call = (test.obs["ctr"].astype(str) == "cancer").to_numpy()
    keep = ~np.isnan(y)
    metrics = section_metrics(y[keep].astype(bool), prob[keep], call[keep], seed)
    return {
        "variant": variant,
        "section": section,
        "seed": seed,
        **{k: metrics[k] for k in ("auc", "ap", "f1_prev", "f1_free", "brier")},
        "called_share": float(call[keep].mean()),
        "true_share": float(y[keep].mean()),
        "train_cpu_s": train_cpu,
        # the calibration fitted on the source's validation spots: its shift sets the level of every logit
        "calibration_scale": calibration.scale if calibration else np.nan,
        "calibration_shift": calibration.shift if calibration else np.nan,
    }


METRICS = ["auc", "ap", "f1_prev", "f1_free", "brier", "share_error", "train_cpu_s"]


def _mean_table(df: pd.DataFrame, order: list[str], title: str) -> list[str]:
    """One row per variant: its seeds and the mean over seeds of the mean over sections."""
    means = df.groupby(["variant", "seed"])[METRICS].mean().groupby("variant").mean().reindex(order)
    seeds = df.groupby("variant")["seed"].unique()
    lines = [
        title,
        "",
        "| variant | seeds | ROC AUC | AP | F1, prevalence | F1, label-free | Brier | mean abs. share error "
        "| training CPU (s) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for v, row in means.iterrows():
        lines.append(
            f"| {v} | {', '.join(map(str, sorted(seeds[v])))} | "
            + " | ".join(f"{x:.3f}" for x in row.iloc[:-1])
            + f" | {row.iloc[-1]:.1f} |"
        )
    return lines


def summarise(df: pd.DataFrame) -> str:
    """Markdown: mean metrics per variant (also on the seeds every variant has) and per-section tables."""
    df = df.assign(share_error=(df["called_share"] - df["true_share"]).abs())
    order = [v for v in VARIANTS if v in set(df["variant"])]
    lines = _mean_table(df, order, "## Training-data variants (mean over sections, then over seeds)")
    common = set.intersection(*(set(df.loc[df["variant"] == v, "seed"]) for v in order))
    if common and any(set(df.loc[df["variant"] == v, "seed"]) != common for v in order):
        lines += [
            "",
            *_mean_table(
                df[df["seed"].isin(common)], order, f"### On the seeds every variant has ({sorted(common)})"
            ),
        ]
    sections = sorted(set(df["section"]))
    if "calibration_shift" in df:
        shifts = df.pivot_table(index=["variant", "seed"], values="calibration_shift", aggfunc=["min", "max"])
        lines += ["", "### Calibration shift per fold (logits; min to max over the six folds)", ""]
        lines += ["| variant | seed | shift |", "|---|---|---|"]
        lines += [f"| {v} | {seed} | {lo:+.2f} to {hi:+.2f} |" for (v, seed), (lo, hi) in shifts.iterrows()]
        b1 = df[df["section"] == "B1"]
        if len(b1):
            lines += ["", "### B1: calibration shift and called share, fold by fold", ""]
            truth = b1["true_share"].iloc[0]
            lines += [f"| variant | seed | shift | called share (true {truth:.2f}) |", "|---|---|---|---|"]
            lines += [
                f"| {r.variant} | {r.seed} | {r.calibration_shift:+.2f} | {r.called_share:.2f} |"
                for r in b1.sort_values(["variant", "seed"]).itertuples()
            ]
    for value, title in (("f1_free", "Label-free F1"), ("auc", "ROC AUC"), ("called_share", "Called share")):
        table = df.pivot_table(index="variant", columns="section", values=value).reindex(order)
        lines += [
            "",
            f"### {title} per section (mean over seeds)",
            "",
            "| variant | " + " | ".join(sections) + " |",
        ]
        lines += ["|---|" + "---|" * len(sections)]
        if value == "called_share":
            truth = df.groupby("section")["true_share"].first()
            lines.append("| true share | " + " | ".join(f"{truth[s]:.2f}" for s in sections) + " |")
        lines += [
            f"| {v} | " + " | ".join(f"{row[s]:.3f}" for s in sections) + " |" for v, row in table.iterrows()
        ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    p.add_argument("--sections", nargs="+", default=list(HER2ST_LABELLED))
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument(
        "--quick", action="store_true", help="a few epochs per stage: checks the code, not the model"
    )
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(min(2, torch.get_num_threads()))
    args.out.mkdir(parents=True, exist_ok=True)
    table = args.out / "attempts.csv"
    # runs already in --out are kept and not repeated, so later calls add variants or seeds
    rows = pd.read_csv(table).to_dict("records") if table.exists() and not args.quick else []
    done = {(r["variant"], r["section"], r["seed"]) for r in rows}
    todo = [
        (v, s, seed)
        for v in args.variants
        for seed in args.seeds
        for s in args.sections
        if (v, s, seed) not in done
    ]
    adata = load_data(args.data, [], with_image=False)[0] if todo else None
    for variant, section, seed in todo:
        rows.append(run(adata, variant, section, seed, args.quick))
        r = rows[-1]
        print(
            f"{variant:16s} {section} seed {seed}: AUC {r['auc']:.3f}  F1 free {r['f1_free']:.3f}  "
            f"share {r['called_share']:.2f}/{r['true_share']:.2f}",
            flush=True,
        )
        pd.DataFrame(rows).to_csv(table, index=False)
    text = summarise(pd.DataFrame(rows))
    (args.out / "summary.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
