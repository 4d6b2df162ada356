"""Why some held-out sections transfer badly: errors by tissue class, tumour signatures, spatial errors.

Reads the per-spot predictions that ``run_benchmark.py`` stored (``results/benchmark/predictions.csv.gz``)
and the HER2ST labelled sections, and writes ``results/hard_sections/summary.md`` with four tables:

1. **Score by tissue class**: per held-out section and pathologist label, the mean probability and the
   share of spots called cancer, for SpaCRD (mean over its seeds) and the smoothed logistic regression.
   It shows which non-cancer tissue is called cancer and which cancer is missed.
2. **Tumour signature agreement**: per held-out section, the Pearson correlation, over the genes, of its
   own cancer-vs-rest log fold change with that of the other five sections pooled (the signature a
   model trained on them can learn), and the fold changes of a few marker genes (ERBB2 and GRB7 of the
   HER2 amplicon, epithelial KRT19 and EPCAM, immune PTPRC, stromal COL1A1).
3. **Where the label-free call errs**: per section, the share of SpaCRD's wrong calls at spots with a
   neighbour of the other label (the boundary of a labelled region) against all spots' share there.
4. **Cancer share**: the true share, the share SpaCRD's call gives and the share the prevalence
   threshold would give, to separate a wrong ranking from a wrong share.

Nothing here feeds back into a model: it is a reading of held-out results, run after the benchmark::

    python benchmarks/studies/hard_sections.py [--predictions results/benchmark/predictions.csv.gz]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scanpy as sc
from scipy import sparse
from scipy.spatial import cKDTree

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: run_benchmark, _metrics

from run_benchmark import read_predictions

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_DATA = REPO_ROOT.parent / "shared" / "data" / "her2st"
DEFAULT_PREDICTIONS = REPO_ROOT / "results" / "benchmark" / "predictions.csv.gz"
DEFAULT_OUT = REPO_ROOT / "results" / "hard_sections"
SECTIONS = ("A1", "B1", "C1", "D1", "E1", "F1")
METHODS = {"spacrd": "SpaCRD", "logreg_hvg_knn": "LR+7NN"}
MARKERS = ("ERBB2", "GRB7", "KRT19", "EPCAM", "PTPRC", "COL1A1")
#: Spots on the legacy-ST grid sit 1 array unit apart (row) or 1 unit (column); 6 neighbours within 1.5.
NEIGHBOUR_RADIUS = 1.5


def load_sections(data: Path):
    """The six labelled HER2ST sections: obs with ``label``/``cancer``, log-normalised expression."""
    from spacrd.datasets import her2st

    adata = her2st(sections=list(SECTIONS), path=data)
    expression = ad.AnnData(sparse.csr_matrix(adata.layers["counts"], dtype=np.float64))
    sc.pp.normalize_total(expression, target_sum=1e4)
    sc.pp.log1p(expression)
    return adata, sparse.csr_matrix(expression.X)


def mean_predictions(predictions: pd.DataFrame, method: str) -> pd.DataFrame:
    """Per spot: the method's probability and call (1.0/0.0, see ``read_predictions``), averaged over its seeds."""
    rows = predictions[predictions["method"] == method]
    return rows.groupby("spot")[["prob", "call"]].mean()


def by_tissue(obs: pd.DataFrame, predictions: pd.DataFrame) -> str:
    lines = [
        "| method | label | " + " | ".join(SECTIONS) + " |",
        "|---|---|" + "---|" * len(SECTIONS),
    ]
    counts = obs.groupby(["label", "section"], observed=True).size().unstack(fill_value=0)
    for method, name in METHODS.items():
        pred = obs.join(mean_predictions(predictions, method), how="inner")
        if pred.empty:
            continue
        prob = pred.groupby(["label", "section"], observed=True)["prob"].mean().unstack()
        called = pred.groupby(["label", "section"], observed=True)["call"].mean().unstack()
        for label in counts.index:
            cells = []
            for s in SECTIONS:
                n = counts.loc[label].get(s, 0)
                if n == 0 or s not in prob.columns or pd.isna(prob.loc[label].get(s, np.nan)):
                    cells.append("")
                elif pd.isna(called.loc[label].get(s, np.nan)):  # a method without a call of its own
                    cells.append(f"{prob.loc[label, s]:.2f} ({n})")
                else:
                    cells.append(f"{prob.loc[label, s]:.2f} / {called.loc[label, s]:.0%} ({n})")
            lines.append(f"| {name} | {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def log_fold_change(logn: sparse.csr_matrix, cancer: np.ndarray) -> np.ndarray:
    """Mean log-normalised expression of cancer spots minus that of the other spots, per gene."""
    a = np.asarray(logn[cancer].mean(axis=0)).ravel()
    b = np.asarray(logn[~cancer].mean(axis=0)).ravel()
    return a - b


def signatures(adata, logn: sparse.csr_matrix) -> str:
    section = adata.obs["section"].astype(str).to_numpy()
    cancer = adata.obs["cancer"].to_numpy(dtype=bool)
    expressed = np.asarray((logn > 0).mean(axis=0)).ravel() >= 0.1  # genes seen in ≥ 10% of spots
    genes = adata.var_names.to_numpy()
    markers = [g for g in MARKERS if g in set(genes)]
    head = "| held-out | signature r with the other five | " + " | ".join(f"{g} LFC" for g in markers) + " |"
    lines = [head, "|---|---|" + "---|" * len(markers)]
    for s in SECTIONS:
        own, rest = section == s, section != s
        lfc_own = log_fold_change(logn[own], cancer[own])
        lfc_rest = log_fold_change(logn[rest], cancer[rest])
        r = np.corrcoef(lfc_own[expressed], lfc_rest[expressed])[0, 1]
        marker_cells = [f"{lfc_own[genes == g][0]:+.2f} ({lfc_rest[genes == g][0]:+.2f})" for g in markers]
        lines.append(f"| {s} | {r:.2f} | " + " | ".join(marker_cells) + " |")
    return "\n".join(lines)


def boundary_errors(adata, predictions: pd.DataFrame) -> str:
    pred = mean_predictions(predictions, "spacrd")
    lines = [
        "| held-out | wrong calls | of them at a label boundary | all spots at a boundary |",
        "|---|---|---|---|",
    ]
    for s in SECTIONS:
        obs = adata.obs[adata.obs["section"].astype(str) == s].join(pred, how="inner")
        if obs.empty:
            continue
        xy = obs[["array_x", "array_y"]].to_numpy(dtype=float)
        cancer = obs["cancer"].to_numpy(dtype=bool)
        pairs = cKDTree(xy).query_pairs(NEIGHBOUR_RADIUS, output_type="ndarray")
        boundary = np.zeros(len(obs), dtype=bool)
        differ = cancer[pairs[:, 0]] != cancer[pairs[:, 1]]
        boundary[pairs[differ].ravel()] = True
        wrong = (obs["call"].to_numpy() >= 0.5) != cancer
        at = boundary[wrong].mean() if wrong.any() else np.nan
        lines.append(f"| {s} | {wrong.sum()} of {len(obs)} | {at:.0%} | {boundary.mean():.0%} |")
    return "\n".join(lines)


def shares(adata, predictions: pd.DataFrame) -> str:
    pred = mean_predictions(predictions, "spacrd")
    lines = ["| held-out | true cancer share | SpaCRD call's share |", "|---|---|---|"]
    for s in SECTIONS:
        obs = adata.obs[adata.obs["section"].astype(str) == s].join(pred, how="inner")
        if obs.empty:
            continue
        lines.append(f"| {s} | {obs['cancer'].astype(float).mean():.2f} | {obs['call'].mean():.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="HER2ST root (holds data/ST-cnts)")
    p.add_argument("--predictions", type=Path, default=DEFAULT_PREDICTIONS)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = p.parse_args(argv)

    adata, logn = load_sections(args.data)
    predictions = read_predictions(args.predictions)
    obs = adata.obs[["section", "label", "cancer"]].copy()
    obs["section"] = obs["section"].astype(str)
    text = "\n\n".join(
        [
            "# Why some sections transfer badly",
            f"Predictions: `{args.predictions}`; SpaCRD averaged over its seeds.",
            "## Score by tissue class\n\nMean probability / share called cancer (spots), per pathologist "
            "label; cancer = invasive cancer or cancer in situ. LR+7NN has no call of its own (the "
            "benchmark thresholds its scores), so only its mean probability is shown.\n\n"
            + by_tissue(obs, predictions),
            "## Tumour signature agreement\n\nPearson r over the genes expressed in ≥ 10% of spots between "
            "the held-out section's cancer-vs-rest log fold change and the other five sections' (pooled); "
            "marker columns: the section's log fold change (the other five's in parentheses).\n\n"
            + signatures(adata, logn),
            "## Where the label-free call errs\n\nA spot is at a label boundary when one of its grid "
            "neighbours has the other label.\n\n" + boundary_errors(adata, predictions),
            "## Cancer share\n\n" + shares(adata, predictions),
        ]
    )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
