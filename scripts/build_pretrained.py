"""Build the pretrained model ``SpaCRD.load_pretrained("her2st")`` and the numbers of its model card.

Run from the repository root (about 25 minutes on 2 CPU cores: seven trainings)::

    python scripts/build_pretrained.py

How the shipped model is trained, exactly:

- data: :func:`spacrd.datasets.her2st_ctr`, all six labelled HER2ST sections (A1, B1, C1, D1, E1, F1;
  one per patient, 2,401 legacy-ST spots), raw counts of its 2,000 genes (gene symbols);
- labels: ``obs["cancer"]`` (invasive cancer or cancer in situ against every other pathologist label);
- ``SpaCRD.setup_anndata(adata, labels_key="cancer", batch_key="section")``: expression only (no
  ``image_key``; only A1 has an H&E image, see the model card), 7 spatial neighbours per spot;
- ``SpaCRD(adata)`` with its defaults (all 2,000 genes as features, per-section z-scores, the
  wide-and-deep head) and ``model.train()`` with its defaults (stage I skipped without images; stage II
  10 epochs, stage III 20 epochs, Adam 1e-3, batch 256, 10% of spots held out in spatial blocks for
  the calibration), seed ``scvi.settings.seed = 0``, on the CPU;
- saved with ``model.save()`` (weights and JSON, no pickle) into
  ``src/spacrd/datasets/data/pretrained/her2st/``, next to ``training.json`` (this recipe, versions).

The model card's leave-one-section-out numbers come from the same recipe trained six more times, each
time on five sections, and scored on the held-out one with :meth:`~spacrd.model.SpaCRD.predict`'s
defaults (no labels of the held-out section are used). They go to ``docs/_static/pretrained_her2st_loso.csv``
and, as the card's table, ``docs/_static/pretrained_her2st_loso.md``. ``--skip-loso`` rebuilds only the
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
NAME = "her2st"
SETUP = {"labels_key": "cancer", "batch_key": "section"}


def train(adata, seed: int) -> SpaCRD:
    """The shipped recipe on ``adata`` (which must hold labelled sections only)."""
    adata = adata.copy()
    scvi.settings.seed = seed
    SpaCRD.setup_anndata(adata, **SETUP)
    model = SpaCRD(adata)
    model.train(accelerator="cpu", enable_progress_bar=False, callbacks=[StageProgress()])
    return model


def fold(adata, held_out: str, seed: int) -> dict:
    """Train on every section but ``held_out``, predict it without its labels, score it."""
    is_target = (adata.obs["section"] == held_out).to_numpy()
    target = adata[is_target].copy()
    truth = target.obs["cancer"].astype(bool).to_numpy()
    target.obs = target.obs.drop(columns=["label", "cancer"])
    start = time.perf_counter()
    model = train(adata[~is_target], seed)
    prob = model.predict(target)
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


def loso(adata, seed: int) -> pd.DataFrame:
    rows = []
    for section in adata.obs["section"].cat.categories:
        print(f"--- held out: {section}", flush=True)
        rows.append(fold(adata, section, seed))
        print({k: round(v, 3) if isinstance(v, float) else v for k, v in rows[-1].items()}, flush=True)
    table = pd.DataFrame(rows)
    mean = table.drop(columns=["held_out"]).mean().to_dict()
    mean["n_spots"] = int(table["n_spots"].sum())
    return pd.concat([table, pd.DataFrame([{"held_out": "mean", **mean}])], ignore_index=True)


def markdown(table: pd.DataFrame, seed: int) -> str:
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
        f"\n\nWritten by `python scripts/build_pretrained.py` (seed {seed}, spacrd {spacrd.__version__}, "
        f"torch {torch.__version__}, CPU). Baselines: a constant score (average precision = the section's "
        "cancer share p) and calling every spot cancer (F1 = 2p / (1 + p)). The mean row averages the six "
        "sections.\n"
    )
    return head + "\n".join(rows) + note


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--skip-loso", action="store_true", help="build the model only")
    group.add_argument("--loso-only", action="store_true", help="compute the model card's numbers only")
    args = parser.parse_args()
    adata = spacrd.datasets.her2st_ctr()
    with quiet_libraries():
        if not args.loso_only:
            out = pretrained_path(NAME)
            model = train(adata, args.seed)
            model.save(str(out), overwrite=True)
            recipe = {
                "name": NAME,
                "built_by": "scripts/build_pretrained.py",
                "data": "spacrd.datasets.her2st_ctr()",
                "sections": list(adata.obs["section"].cat.categories),
                "n_spots": int(adata.n_obs),
                "n_genes": len(model.gene_names),
                "cancer_share": float(adata.obs["cancer"].astype(bool).mean()),
                "setup_anndata": SETUP,
                "train": "defaults (SpaCRD.train()), accelerator='cpu'",
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
            table = loso(adata, args.seed)
            table.to_csv(STATIC / f"pretrained_{NAME}_loso.csv", index=False, float_format="%.4f")
            (STATIC / f"pretrained_{NAME}_loso.md").write_text(markdown(table, args.seed))
            print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))


if __name__ == "__main__":
    main()
