"""Other label-free calls on SpaCRD's stored held-out probabilities: does any beat the Bayes call?

Reads ``results/benchmark/predictions.csv.gz`` (written by ``run_benchmark.py``) and, per held-out
section and seed, scores the F1 of several thresholds that need no labels, next to SpaCRD's own call
(probability ≥ 0.5 after the prior shift) and the label-using prevalence threshold. The stored
probabilities are prior-shifted, a constant shift of every logit in a section, so the calls on logits
(mixture crossing, Otsu, mixture-weight quantile) are exactly what they would be on the unshifted
scores. This is a screen on the evaluated sections, not a selection: a call that won here would still
have to win a nested selection (``nested_selection.py``) before it became a default. ::

    python benchmarks/label_free_calls.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
from skimage.filters import threshold_otsu as otsu
from sklearn.metrics import f1_score
from sklearn.mixture import GaussianMixture

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _metrics import gmm_threshold
from run_benchmark import DEFAULT_OUT, read_predictions


def logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


def calls(prob: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
    """Boolean calls of every rule on one section (``y`` only for the prevalence threshold)."""
    z = logit(prob)
    mixture = GaussianMixture(2, random_state=0).fit(z[:, None])
    upper_weight = mixture.weights_[np.argmax(mixture.means_.ravel())]
    return {
        "Bayes call (SpaCRD's obs['ctr'])": prob >= 0.5,
        "mixture crossing, probabilities": prob >= gmm_threshold(prob),
        "mixture crossing, logits": z >= gmm_threshold(z),
        "Otsu, probabilities": prob >= otsu(prob),
        "Otsu, logits": z >= otsu(z),
        "share = upper mixture weight": z >= np.quantile(z, 1 - upper_weight),
        "share = mean probability": prob >= np.quantile(prob, 1 - prob.mean()),
        "prevalence threshold (uses labels)": prob >= np.quantile(prob, 1 - y.mean()),
    }


def main() -> None:
    predictions = read_predictions(DEFAULT_OUT / "predictions.csv.gz")
    rows = predictions[(predictions["method"] == "spacrd") & predictions["cancer"].notna()]
    scores = []
    for (section, seed), d in rows.groupby(["section", "seed"]):
        y = d["cancer"].to_numpy().astype(bool)
        for rule, call in calls(d["prob"].to_numpy(dtype=float), y).items():
            scores.append({"section": section, "seed": seed, "rule": rule, "f1": f1_score(y, call)})
    scores = pd.DataFrame(scores)
    table = scores.pivot_table(index="rule", columns="section", values="f1", aggfunc="mean", sort=False)
    table["mean"] = (
        scores.groupby(["rule", "seed"], sort=False)["f1"].mean().groupby("rule", sort=False).mean()
    )
    print("F1 of each label-free rule on SpaCRD's held-out probabilities (mean over seeds)\n")
    print("| rule | " + " | ".join(table.columns) + " |")
    print("|---|" + "---|" * len(table.columns))
    for rule, row in table.iterrows():
        print(f"| {rule} | " + " | ".join(f"{v:.3f}" for v in row) + " |")


if __name__ == "__main__":
    main()
