"""Does SpaCRD's per-spot uncertainty tell wrong calls better than the probability itself does?

Reads ``results/benchmark/predictions.csv.gz`` (written by ``run_benchmark.py``) and, per held-out
section and seed of each SpaCRD method whose call is ``probability >= 0.5``, compares two ROC AUCs for
telling spots whose label-free call is wrong from spots whose call is right: that of the stored
``obs["ctr_uncertainty"]`` (the spread of the bootstrap members) and that of the margin
``0.5 - |probability - 0.5|``, which needs no ensemble. An uncertainty worth its cost should beat the
margin. ::

    python benchmarks/studies/uncertainty_reference.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: run_benchmark, _metrics

from _metrics import _error_auroc
from run_benchmark import DEFAULT_OUT, read_predictions

SCORES = {
    "members' spread (obs['ctr_uncertainty'])": lambda d: d["uncertainty"].to_numpy(dtype=float),
    "margin 0.5 - |p - 0.5|": lambda d: 0.5 - np.abs(d["prob"].to_numpy(dtype=float) - 0.5),
}


def error_aurocs(predictions: pd.DataFrame) -> pd.DataFrame:
    """One row per (method, section, seed, score) with the error-detection ROC AUC."""
    rows = []
    labelled = predictions[predictions["cancer"].notna() & predictions["uncertainty"].notna()]
    for (method, section, seed), d in labelled.groupby(["method", "section", "seed"]):
        call = d["call"].to_numpy() == 1.0
        if not np.array_equal(call, d["prob"].to_numpy(dtype=float) >= 0.5):
            continue  # the margin is only the reference for a call at probability 0.5
        y = d["cancer"].to_numpy().astype(bool)
        for name, score in SCORES.items():
            rows.append(
                {
                    "method": method,
                    "section": section,
                    "seed": seed,
                    "score": name,
                    "auroc": _error_auroc(y, call, score(d)),
                }
            )
    return pd.DataFrame(rows)


def main() -> None:
    scores = error_aurocs(read_predictions(DEFAULT_OUT / "predictions.csv.gz"))
    keys = ["method", "score"]
    table = scores.pivot_table(index=keys, columns="section", values="auroc", aggfunc="mean", sort=False)
    per_seed = scores.groupby([*keys, "seed"], sort=False)["auroc"].mean()
    table["mean"] = per_seed.groupby(keys, sort=False).mean()
    table["sd over seeds"] = per_seed.groupby(keys, sort=False).std()
    print("ROC AUC for wrong label-free calls (mean over seeds)\n")
    print("| method | score | " + " | ".join(table.columns) + " |")
    print("|---|---|" + "---|" * len(table.columns))
    for (method, name), row in table.iterrows():
        print(f"| {method} | {name} | " + " | ".join(f"{v:.3f}" for v in row) + " |")


if __name__ == "__main__":
    main()
