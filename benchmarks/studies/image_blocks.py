"""What the H&E image adds to SpaCRD, on real labels: A1's spatial blocks held out in turn.

A1 is the only labelled HER2ST section with an image, so the image can only be judged on A1 spots the
model has not trained on. A1 is split into four contiguous blocks, the quadrants cut at the median
pixel x and the median pixel y of its spots. Each block is held out in turn: SpaCRD is trained on
B1–F1 (no image: NaN rows) plus A1's other three blocks (with their image features) and scores the
held-out block, once without the image (``image_key=None``) and once per backbone, over several seeds.

No neighbourhood crosses the block boundary: the held-out block is removed from the training AnnData
before ``setup_anndata`` builds the spatial graph (so no training spot has a held-out neighbour), and it
is predicted as its own target, whose neighbours ``predict`` computes among the block's spots.

Image features are computed once per backbone on the whole of A1 before the folds (the backbones are
fixed, not trained, so this reads no label).

Reproduce (from the repository root, the shared data beside the repository, ``pip install -e ".[cnn]"``)::

    python benchmarks/studies/image_blocks.py --docs-table

It writes ``results/image_blocks/runs.csv`` (one row per block × model × seed),
``results/image_blocks/predictions.csv`` (every held-out spot), ``summary.md`` and, with
``--docs-table``, ``docs/_static/image_blocks_table.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: run_benchmark, _metrics

from _baselines import Timer, labelled
from _baselines import spacrd as fit_spacrd
from _metrics import section_metrics
from run_benchmark import (
    DEFAULT_DATA,
    REPO_ROOT,
    _hardware,
    _provenance,
    load_data,
    metric_table_head,
    write_summary,
)

IMAGE_SECTION = "A1"
BACKBONES = ("histology_stats", "efficientnet_lite0")
NO_IMAGE = "expression only"
DEFAULT_OUT = REPO_ROOT / "results" / "image_blocks"
DOCS_TABLE = REPO_ROOT / "docs" / "_static" / "image_blocks_table.md"
METRICS = {"auc": "ROC AUC", "ap": "Average precision", "f1_free": "F1, label-free call"}
#: block name -> (right of the median x, below the median y); pixel y grows downwards
BLOCKS = {
    "top-left": (False, False),
    "top-right": (True, False),
    "bottom-left": (False, True),
    "bottom-right": (True, True),
}


def quadrant_blocks(coordinates: np.ndarray) -> np.ndarray:
    """Block name of each spot: the quadrants cut at the median x and the median y, shape ``(n,)``.

    ``coordinates`` are ``(n, 2)`` pixel ``(x, y)``; a spot on a median goes to the left / top block.
    """
    xy = np.asarray(coordinates, dtype=float)
    right = xy[:, 0] > np.median(xy[:, 0])
    below = xy[:, 1] > np.median(xy[:, 1])
    names = np.empty(len(xy), dtype=object)
    for name, (r, b) in BLOCKS.items():
        names[(right == r) & (below == b)] = name
    return names.astype(str)


def block_split(
    adata: ad.AnnData, blocks: pd.Series, held_out: str, image_key: str | None
) -> tuple[ad.AnnData, ad.AnnData]:
    """Training AnnData without the held-out block, and the block as a target without labels.

    ``blocks`` is indexed like ``adata`` (block name for spots of the image section, NaN elsewhere).
    Only ``image_key`` (if any) of the image features in ``obsm`` travels with the two, so the model
    sees the backbone asked for or none. Neither carries a spatial graph: ``setup_anndata`` builds the
    training one after the block is gone, and ``predict`` builds the block's own.
    """
    test_mask = (blocks == held_out).to_numpy()
    parts = []
    for mask in (~test_mask, test_mask):
        part = ad.AnnData(
            adata.X[mask].copy(),
            obs=adata.obs.loc[mask, ["section", "cancer"]].copy(),
            var=pd.DataFrame(index=adata.var_names),
        )
        part.layers["counts"] = adata.layers["counts"][mask].copy()
        part.obsm["spatial"] = np.asarray(adata.obsm["spatial"][mask], dtype=float)
        if image_key is not None:
            part.obsm[image_key] = np.asarray(adata.obsm[image_key][mask], dtype=np.float32)
        parts.append(part)
    train, test = parts
    test.obs = test.obs[["section"]].copy()
    return train, test


def image_feature_sets(data: Path, adata: ad.AnnData, backbones: list[str]) -> tuple[dict, dict]:
    """``{backbone: (adata.n_obs, d) features}`` (NaN outside A1) and the seconds each took."""
    from spacrd.datasets import her2st
    from spacrd.pp import image_features

    a1 = her2st([IMAGE_SECTION], path=data)
    rows = adata.obs_names.get_indexer(a1.obs_names)
    if (rows < 0).any():
        raise ValueError("A1 spots of the image loader and of the benchmark data differ")
    features, seconds = {}, {}
    for backbone in backbones:
        t0 = time.perf_counter()
        image_features(a1, backbone=backbone, key_added="features", device="cpu")
        seconds[backbone] = time.perf_counter() - t0
        full = np.full((adata.n_obs, a1.obsm["features"].shape[1]), np.nan, dtype=np.float32)
        full[rows] = a1.obsm["features"]
        features[backbone] = full
        print(f"{backbone}: {full.shape[1]} features for {len(rows)} A1 spots in {seconds[backbone]:.1f} s")
    return features, seconds


def _fmt(values) -> str:
    values = np.asarray(values, dtype=float)
    if values.size > 1:
        return f"{values.mean():.3f} ± {values.std(ddof=1):.3f}"
    return f"{values.mean():.3f}"


def pooled_metrics(pred: pd.DataFrame) -> pd.DataFrame:
    """Metrics over all held-out spots of a model and seed together (each block predicted separately)."""
    rows = []
    for (model, seed), d in pred.groupby(["model", "seed"], sort=False):
        d = d.dropna(subset=["cancer"])
        m = section_metrics(d["cancer"].to_numpy(int), d["prob"].to_numpy(), call=d["call"].to_numpy(bool))
        rows.append({"block": "pooled", "model": model, "seed": seed, **m})
    return pd.DataFrame(rows)


def summarise(runs: pd.DataFrame, pred: pd.DataFrame, notes: dict[str, str]) -> str:
    """Markdown: per metric, blocks × models with mean ± sd over seeds, the block mean, and pooled spots."""
    per_seed = runs.drop_duplicates(["seed", "block", "model"]).groupby("seed").size()
    complete = per_seed.index[per_seed == per_seed.max()]
    if len(complete) < len(per_seed):  # an interrupted run: keep the seeds that have every block and model
        notes = {
            **notes,
            "Incomplete seeds left out": ", ".join(map(str, sorted(set(per_seed.index) - set(complete)))),
        }
        runs, pred = runs[runs["seed"].isin(complete)], pred[pred["seed"].isin(complete)]
    models = [m for m in [NO_IMAGE, *BACKBONES] if m in set(runs["model"])]
    models += [m for m in dict.fromkeys(runs["model"]) if m not in models]
    blocks = [b for b in BLOCKS if b in set(runs["block"])]
    pooled = pooled_metrics(pred)
    seeds = sorted(runs["seed"].unique())
    head = {m: m if m == NO_IMAGE else f"+ image ({m})" for m in models}
    lines = [
        "# What the image adds: A1's spatial blocks held out in turn",
        "",
        f"SpaCRD trained on B1–F1 plus A1's other three blocks; mean ± sd over seeds {', '.join(map(str, seeds))}. "
        "*Mean over blocks* averages each seed over the blocks first; *pooled* scores all held-out "
        "spots of a seed together; *image − expression* is the paired difference of the block means "
        "(same seed), mean ± sd over seeds.",
        "",
    ]
    prevalence = runs.groupby("block")["prevalence"].first()
    for col, title in METRICS.items():
        # F1 of calling every spot cancer, 2p / (1 + p): on blocks this cancer-rich, F1 is high for free
        f1_ref = col.startswith("f1")
        lines += metric_table_head(
            title, ["held-out block", "spots (non-cancer)"], [head[m] for m in models], f1_ref
        )
        for block in [*blocks, "mean over blocks", "pooled", "image − expression"]:
            cells, centres = [], []
            for m in models:
                d = runs[runs["model"] == m]
                if block in BLOCKS:
                    values = d.loc[d["block"] == block, col].to_numpy()
                elif block == "mean over blocks":
                    complete = d.groupby("seed")["block"].nunique() == len(blocks)
                    values = (
                        d[d["seed"].isin(complete.index[complete])].groupby("seed")[col].mean().to_numpy()
                    )
                elif block == "pooled":
                    values = pooled.loc[pooled["model"] == m, col].to_numpy()
                else:
                    if m == NO_IMAGE or NO_IMAGE not in models:
                        cells.append("")
                        centres.append(np.nan)
                        continue
                    base = runs[runs["model"] == NO_IMAGE].groupby("seed")[col].mean()
                    values = (d.groupby("seed")[col].mean() - base).dropna().to_numpy()
                cells.append(_fmt(values) if len(values) else "–")
                centres.append(float(np.mean(values)) if len(values) else np.nan)
            c = np.array(centres)
            if block != "image − expression" and np.isfinite(c).any():
                for best in np.flatnonzero(np.round(c, 3) == np.round(np.nanmax(c), 3)):  # ties: all
                    cells[best] = f"**{cells[best]}**"
            info, ref = "", ""
            if block in BLOCKS or block == "pooled":
                r = runs[runs["block"] == block].iloc[0] if block in BLOCKS else pooled.iloc[0]
                info = f"{int(r['n'])} ({round(r['n'] * (1 - r['prevalence']))})"
                ref = f"{2 * r['prevalence'] / (1 + r['prevalence']):.3f}"
            elif block == "mean over blocks":
                ref = f"{np.mean(2 * prevalence / (1 + prevalence)):.3f}"
            lines.append(
                f"| {block} | {info} | " + (f"{ref} | " if f1_ref else "") + " | ".join(cells) + " |"
            )
        lines.append("")
    lines += [
        "Bold: best mean in the row. Cancer = invasive cancer or cancer in situ; every other label "
        "(undetermined included) is non-cancer. The label-free call is SpaCRD's own `obs['ctr']`; "
        "*all spots called cancer* is the F1 of the trivial call that every spot is cancer, 2p / (1 + p) "
        "for a cancer share p.",
        "",
    ]
    for key, value in notes.items():
        lines += [f"{key}: {value}", ""]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="HER2ST root (holds data/ST-cnts)")
    p.add_argument("--backbones", nargs="+", default=list(BACKBONES), help="backbones of pp.image_features")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--blocks", nargs="+", default=list(BLOCKS), choices=list(BLOCKS))
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--docs-table", action="store_true", help=f"copy the summary to {DOCS_TABLE}")
    p.add_argument("--quick", action="store_true", help="few epochs, one seed (smoke test)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads; 0 = torch's own choice")
    p.add_argument("--resume", action="store_true", help="skip runs already in OUT/runs.csv")
    p.add_argument("--summarise-only", action="store_true", help="rewrite summary.md from OUT/*.csv")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    runs_path, pred_path = args.out / "runs.csv", args.out / "predictions.csv"
    notes = {"Hardware": _hardware(), "Package": _provenance()}
    if args.summarise_only:
        return _write(pd.read_csv(runs_path), pd.read_csv(pred_path), args, notes)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    seeds = args.seeds[:1] if args.quick else args.seeds
    t_start = time.perf_counter()
    adata, _ = load_data(args.data, [], with_image=False)
    features, feature_s = image_feature_sets(args.data, adata, args.backbones)
    is_a1 = (adata.obs["section"].astype(str) == IMAGE_SECTION).to_numpy()
    blocks = pd.Series(np.nan, index=adata.obs_names, dtype=object)
    blocks[is_a1] = quadrant_blocks(adata.obsm["spatial"][is_a1])
    for backbone, values in features.items():
        adata.obsm[backbone] = values
    notes["Blocks"] = (
        "A1 quadrants cut at the median pixel x and y of its spots: "
        + ", ".join(f"{b} {int((blocks == b).sum())}" for b in BLOCKS)
        + " spots"
    )
    notes["Image features"] = (
        "; ".join(f"`{b}` {features[b].shape[1]} features in {feature_s[b]:.0f} s" for b in args.backbones)
        + " (A1 only, once before the folds, CPU)"
    )
    notes["Data"] = (
        f"{adata.n_vars} genes common to the six labelled sections; {int(labelled(adata)[0].sum())} labelled spots"
    )
    if args.quick:
        notes["Quick run"] = "reduced epochs and one seed; not reference numbers"

    (args.out / "notes.json").write_text(json.dumps(notes, indent=1))  # for --summarise-only after a stop
    done = pd.read_csv(runs_path) if args.resume and runs_path.exists() else pd.DataFrame()
    runs = done.to_dict("records")
    preds = [pd.read_csv(pred_path)] if args.resume and pred_path.exists() else []
    models = [(NO_IMAGE, None)] + [(b, b) for b in args.backbones]
    # seed by seed, so that an interrupted run leaves whole seeds (every block) to summarise
    for seed in seeds:
        for block in args.blocks:
            for model, image_key in models:
                if (
                    len(done)
                    and ((done["block"] == block) & (done["model"] == model) & (done["seed"] == seed)).any()
                ):
                    continue
                train, test = block_split(adata, blocks, block, image_key)
                mask, y = labelled(adata[test.obs_names])
                truth = np.full(test.n_obs, np.nan)
                truth[mask] = y
                timer = Timer()
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    prob = fit_spacrd(train, test, seed, timer=timer, quick=args.quick, image_key=image_key)
                call = (test.obs["ctr"].astype(str) == "cancer").to_numpy()
                m = section_metrics(y, prob[mask], call=call[mask], seed=seed)
                runs.append(
                    {
                        "block": block,
                        "model": model,
                        "seed": seed,
                        **m,
                        "n_train_spots": train.n_obs,
                        "n_train_image_spots": int(np.isfinite(train.obsm[image_key]).all(axis=1).sum())
                        if image_key
                        else 0,
                        "train_s": timer.seconds["train"],
                        "predict_s": timer.seconds["predict"],
                        "load_avg": os.getloadavg()[0],
                    }
                )
                pd.DataFrame(runs).to_csv(runs_path, index=False)
                preds.append(
                    pd.DataFrame(
                        {
                            "block": block,
                            "model": model,
                            "seed": seed,
                            "spot": test.obs_names,
                            "cancer": truth,
                            "prob": prob,
                            "call": call,
                        }
                    )
                )
                pd.concat(preds).to_csv(pred_path, index=False)
                print(
                    f"{block} {model} seed={seed}: AUC {m['auc']:.3f} AP {m['ap']:.3f} F1free {m['f1_free']:.3f} "
                    f"| train {timer.seconds['train']:.0f} s",
                    flush=True,
                )
    notes["Wall time"] = f"{time.perf_counter() - t_start:.0f} s for this invocation"
    _write(pd.DataFrame(runs), pd.concat(preds), args, notes)


def _write(runs: pd.DataFrame, pred: pd.DataFrame, args: argparse.Namespace, notes: dict[str, str]) -> None:
    notes_path = args.out / "notes.json"
    if args.summarise_only and notes_path.exists():
        notes = {**notes, **json.loads(notes_path.read_text())}  # the run's own notes win
    else:
        notes_path.write_text(json.dumps(notes, indent=1))
    write_summary(summarise(runs, pred, notes), args.out, DOCS_TABLE if args.docs_table else None)


if __name__ == "__main__":
    main()
