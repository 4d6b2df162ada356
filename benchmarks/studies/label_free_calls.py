"""Other label-free calls on SpaCRD's stored held-out probabilities: does any beat the Bayes call?

Reads ``results/benchmark/predictions.csv.gz`` (written by ``run_benchmark.py``) and, per SpaCRD method,
held-out section and seed, scores the F1 of several thresholds that need no labels, next to SpaCRD's own
call (probability ≥ 0.5 after the prior shift) and the label-using prevalence threshold, and prints the
share of the section each one calls. The stored probabilities are prior-shifted, a constant shift of
every logit in a section, so the calls on logits (mixture crossing, Otsu, mixture-weight quantile) are
exactly what they would be on the unshifted scores. Undoing that shift (the section's estimated share is
the mean stored probability, the EM's fixed point; the source share is that of the five training
sections' labelled spots) gives the probabilities before it, and with them the two simplest share
estimates: their mean, and the share of them at or above 0.5. This is a screen on the evaluated
sections, not a selection: a call that won here would still have to win a nested selection
(``nested_selection.py``) before it became a default. ::

    python benchmarks/studies/label_free_calls.py [--methods spacrd spacrd_ranked]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.special import expit
from skimage.filters import threshold_otsu as otsu
from sklearn.metrics import f1_score
from sklearn.mixture import GaussianMixture

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: run_benchmark, _metrics

from _metrics import gmm_threshold
from run_benchmark import DEFAULT_OUT, read_predictions

PREVALENCE = "prevalence threshold (uses labels)"


def logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


def calls(prob: np.ndarray, y: np.ndarray, source_share: float) -> dict[str, np.ndarray]:
    """Boolean calls of every rule on one section (``y`` only for the prevalence threshold).

    ``source_share``: cancer share of the labelled training spots, to undo the prior shift.
    """
    z = logit(prob)
    mixture = GaussianMixture(2, random_state=0).fit(z[:, None])
    upper_weight = mixture.weights_[np.argmax(mixture.means_.ravel())]
    unshifted = expit(z - logit(np.array(prob.mean())) + logit(np.array(source_share)))
    return {
        "Bayes call (SpaCRD's obs['ctr'])": prob >= 0.5,
        "mixture crossing, probabilities": prob >= gmm_threshold(prob),
        "mixture crossing, logits": z >= gmm_threshold(z),
        "Otsu, probabilities": prob >= otsu(prob),
        "Otsu, logits": z >= otsu(z),
        "share = upper mixture weight": z >= np.quantile(z, 1 - upper_weight),
        "share = mean probability": prob >= np.quantile(prob, 1 - prob.mean()),
        "before the prior shift: p ≥ 0.5": unshifted >= 0.5,
        "before the prior shift: share = mean p": z >= np.quantile(z, 1 - unshifted.mean()),
        PREVALENCE: prob >= np.quantile(prob, 1 - y.mean()),
    }


def _table(scores: pd.DataFrame, value: str, fmt: str) -> list[str]:
    table = scores.pivot_table(index="rule", columns="section", values=value, aggfunc="mean", sort=False)
    table["mean"] = (
        scores.groupby(["rule", "seed"], sort=False)[value].mean().groupby("rule", sort=False).mean()
    )
    lines = ["| rule | " + " | ".join(table.columns) + " |", "|---|" + "---|" * len(table.columns)]
    lines += [
        f"| {rule} | " + " | ".join(format(v, fmt) for v in row) + " |" for rule, row in table.iterrows()
    ]
    return lines


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--predictions", type=Path, default=DEFAULT_OUT / "predictions.csv.gz")
    p.add_argument("--methods", nargs="+", default=["spacrd", "spacrd_ranked"])
    args = p.parse_args(argv)
    predictions = read_predictions(args.predictions)
    labelled = predictions[predictions["cancer"].notna()]
    spots = labelled.drop_duplicates("spot")
    for method in args.methods:
        rows = labelled[labelled["method"] == method]
        if rows.empty:
            print(f"(no stored predictions of {method})\n")
            continue
        scores = []
        for (section, seed), d in rows.groupby(["section", "seed"]):
            y = d["cancer"].to_numpy().astype(bool)
            source = float(spots.loc[spots["section"] != section, "cancer"].astype(float).mean())
            for rule, call in calls(d["prob"].to_numpy(dtype=float), y, source).items():
                scores.append(
                    {
                        "section": section,
                        "seed": seed,
                        "rule": rule,
                        "f1": f1_score(y, call),
                        "share": call.mean(),
                    }
                )
        scores = pd.DataFrame(scores)
        truth = scores[scores["rule"] == PREVALENCE].assign(rule="true share (labels)")
        print(f"F1 of each label-free rule on {method}'s held-out probabilities (mean over seeds)\n")
        print("\n".join(_table(scores, "f1", ".3f")), "\n")
        print(f"Share of the section each rule calls cancer ({method})\n")
        shares = pd.concat([scores[scores["rule"] != PREVALENCE], truth])
        print("\n".join(_table(shares, "share", ".2f")), "\n")


if __name__ == "__main__":
    main()
