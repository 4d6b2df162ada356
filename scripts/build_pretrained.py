"""Build the pretrained models ``SpaCRD.load_pretrained("her2st")`` and ``"her2st-ranker"`` and their model cards' numbers.

Run from the repository root (a few minutes on 2 CPU cores: seven trainings for ``her2st``, nineteen
for ``her2st-ranker``, whose card scores the pair)::

    python scripts/build_pretrained.py                        # her2st
    python scripts/build_pretrained.py --name her2st-ranker   # its unscaled companion

How the shipped model is trained, exactly:

- data: :func:`spacrd.datasets.her2st_ctr`, all six labelled HER2ST sections (A1, B1, C1, D1, E1, F1;
  one per patient, 2,401 legacy-ST spots), raw counts of its 2,000 genes (gene symbols);
- labels: ``obs["cancer"]`` (invasive cancer or cancer in situ against every other pathologist label);
- ``SpaCRD.setup_anndata(adata, labels_key="cancer", batch_key="section")``: expression only (no
  ``image_key``; only A1 has an H&E image, see the model card), 7 spatial neighbours per spot;
- ``SpaCRD(adata)`` with its defaults (all 2,000 genes as features, per-section z-scores, the
  wide-and-deep head) and ``model.train()`` with its defaults (stage I skipped without images; stage II
  10 epochs, stage III 20 epochs, Adam 1e-3, batch 256, every minibatch thinned at a rate from 3 % to
  100 % of its counts (``depth_augmentation=0.03``), 10% of spots held out in spatial blocks for the
  calibration), seed ``scvi.settings.seed = 0``, on the CPU;
- saved with ``model.save()`` (weights and JSON, no pickle) into
  ``src/spacrd/datasets/data/pretrained/her2st/``, next to ``training.json`` (this recipe, versions).

``her2st-ranker`` is the same recipe with ``SpaCRD(adata, section_scaling="none")`` (log-normalised
expression without per-section z-scores), meant as ``ranking_model=`` of ``her2st``.

The model card's leave-one-section-out numbers come from the same recipe trained six more times, each
time on five sections, and scored on the held-out one with :meth:`~spacrd.model.SpaCRD.predict`'s
defaults (no labels of the held-out section are used). For ``her2st-ranker`` each fold trains both
recipes and scores ``her2st``'s prediction ordered by the ranker (``predict(ranking_model=...)``). They go to ``docs/_static/pretrained_<name>_loso.csv``
and, as the card's table, ``docs/_static/pretrained_<name>_loso.md``. ``--skip-loso`` rebuilds only the
model; ``--loso-only`` only the numbers.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import pandas as pd
import scvi
import torch
from sklearn.metrics import average_precision_score, brier_score_loss, f1_score, roc_auc_score

import spacrd
from spacrd._console import StageProgress, quiet_libraries
from spacrd._constants import CANCER, OBS_KEYS, UNS_KEYS
from spacrd._pretrained_registry import pretrained_path
from spacrd.model import SpaCRD

ROOT = Path(__file__).resolve().parents[1]
STATIC = ROOT / "docs" / "_static"
SETUP = {"labels_key": "cancer", "batch_key": "section"}
#: SpaCRD keyword arguments of each shipped model; a ranker's card scores it with the model it orders
RECIPES = {"her2st": {}, "her2st-ranker": {"section_scaling": "none"}}
RANKS_FOR = {"her2st-ranker": "her2st"}


def train(adata, seed: int, name: str = "her2st") -> SpaCRD:
    """The shipped recipe ``name`` on ``adata`` (which must hold labelled sections only)."""
    adata = adata.copy()
    scvi.settings.seed = seed
    SpaCRD.setup_anndata(adata, **SETUP)
    model = SpaCRD(adata, **RECIPES[name])
    model.train(accelerator="cpu", enable_progress_bar=False, callbacks=[StageProgress()])
    return model


def fold(adata, held_out: str, seed: int, name: str) -> dict:
    """Train on every section but ``held_out``, predict it without its labels, score it."""
    is_target = (adata.obs["section"] == held_out).to_numpy()
    target = adata[is_target].copy()
    truth = target.obs["cancer"].astype(bool).to_numpy()
    target.obs = target.obs.drop(columns=["label", "cancer"])
    start = time.perf_counter()
    if name in RANKS_FOR:
        model = train(adata[~is_target], seed, RANKS_FOR[name])
        prob = model.predict(target, ranking_model=train(adata[~is_target], seed, name))
    else:
        prob = train(adata[~is_target], seed, name).predict(target)
    called = (target.obs[OBS_KEYS.CALL] == CANCER).to_numpy()
    p = float(truth.mean())
    return {
        "held_out": held_out,
        "n_spots": int(target.n_obs),
        "cancer_share": p,
        "estimated_cancer_share": float(
            np.mean(list(target.uns[UNS_KEYS.PREDICTION]["cancer_share"].values()))
        ),
        "roc_auc": roc_auc_score(truth, prob),
        "average_precision": average_precision_score(truth, prob),
        "f1_label_free_call": f1_score(truth, called),
        "brier": brier_score_loss(truth, prob),
        "baseline_average_precision": p,  # a constant score ranks at random: AP = prevalence
        "baseline_f1_all_cancer": 2 * p / (1 + p),  # calling every spot cancer
        "seconds": time.perf_counter() - start,
    }


def loso(adata, seed: int, name: str) -> pd.DataFrame:
    rows = []
    for section in adata.obs["section"].cat.categories:
        print(f"--- held out: {section}", flush=True)
        rows.append(fold(adata, section, seed, name))
        print({k: round(v, 3) if isinstance(v, float) else v for k, v in rows[-1].items()}, flush=True)
    table = pd.DataFrame(rows)
    mean = table.drop(columns=["held_out"]).mean().to_dict()
    mean["n_spots"] = int(table["n_spots"].sum())
    return pd.concat([table, pd.DataFrame([{"held_out": "mean", **mean}])], ignore_index=True)


def markdown(table: pd.DataFrame, seed: int, name: str) -> str:
    head = (
        "| held out | spots | cancer share (estimated) | ROC AUC | average precision (baseline) "
        "| F1 of the call (all-cancer baseline) | Brier |\n|---|---|---|---|---|---|---|\n"
    )
    rows = [
        f"| {r.held_out} | {r.n_spots} | {r.cancer_share:.2f} ({r.estimated_cancer_share:.2f}) | {r.roc_auc:.3f} "
        f"| {r.average_precision:.3f} ({r.baseline_average_precision:.3f}) "
        f"| {r.f1_label_free_call:.3f} ({r.baseline_f1_all_cancer:.3f}) | {r.brier:.3f} |"
        for r in table.itertuples()
    ]
    note = (
        f"\n\nWritten by `python scripts/build_pretrained.py --name {name}` (seed {seed}, spacrd {spacrd.__version__}, "
        f"torch {torch.__version__}, CPU). Baselines: a constant score (average precision = the section's "
        "cancer share p) and calling every spot cancer (F1 = 2p / (1 + p)). The mean row averages the six "
        "sections.\n"
    )
    return head + "\n".join(rows) + note


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", choices=list(RECIPES), default="her2st", help="which shipped model")
    parser.add_argument("--seed", type=int, default=0)
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--skip-loso", action="store_true", help="build the model only")
    group.add_argument("--loso-only", action="store_true", help="compute the model card's numbers only")
    args = parser.parse_args()
    adata = spacrd.datasets.her2st_ctr()
    with quiet_libraries():
        if not args.loso_only:
            out = pretrained_path(args.name)
            model = train(adata, args.seed, args.name)
            model.save(str(out), overwrite=True)
            recipe = {
                "name": args.name,
                "built_by": "scripts/build_pretrained.py",
                "data": "spacrd.datasets.her2st_ctr()",
                "sections": list(adata.obs["section"].cat.categories),
                "n_spots": int(adata.n_obs),
                "n_genes": len(model.gene_names),
                "cancer_share": float(adata.obs["cancer"].astype(bool).mean()),
                "setup_anndata": SETUP,
                "model": RECIPES[args.name] or "defaults (SpaCRD(adata))",
                "train": "defaults (SpaCRD.train(): depth_augmentation=0.03), accelerator='cpu'",
                "modalities": "expression",
                "seed": args.seed,
                "spacrd": spacrd.__version__,
                "scvi-tools": scvi.__version__,
                "torch": torch.__version__,
                "python": platform.python_version(),
            }
            (out / "training.json").write_text(json.dumps(recipe, indent=1) + "\n")
            size = sum(f.stat().st_size for f in out.iterdir()) / 1e6
            print(f"Wrote {out} ({size:.2f} MB)")
        if not args.skip_loso:
            table = loso(adata, args.seed, args.name)
            stem = f"pretrained_{args.name.replace('-', '_')}_loso"
            table.to_csv(STATIC / f"{stem}.csv", index=False, float_format="%.4f")
            (STATIC / f"{stem}.md").write_text(markdown(table, args.seed, args.name))
            print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))


if __name__ == "__main__":
    main()
