"""Train SpaCRD on five labelled HER2ST sections, predict the held-out A1 and draw the example figures.

Run from the repository root, with the shared data beside the repository (or pass ``--data``)::

    python docs/_scripts/ctr_example.py

It writes ``docs/_static/ctr_her2st_a1.png`` (probabilities on the H&E next to the pathologist's
labels), ``docs/_static/score_distribution_her2st_a1.png`` and ``docs/_static/training_history_her2st.png``.
Only A1 of the labelled sections has an H&E image in the public data, so the model here is trained on
expression alone (B1, C1, D1, E1, F1); the image is used for display. The run takes about a minute on
two CPU cores and gives the same figures each time (fixed seed).
"""

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import numpy as np
import scvi
from matplotlib import pyplot as plt
from sklearn.metrics import average_precision_score, roc_auc_score

import spacrd

REPO = Path(__file__).resolve().parents[2]
STATIC = REPO / "docs" / "_static"
SOURCES = ["B1", "C1", "D1", "E1", "F1"]
TARGET = "A1"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "her2st")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    scvi.settings.seed = args.seed
    source = spacrd.datasets.her2st(SOURCES, path=args.data, load_images=False)
    target = spacrd.datasets.her2st(TARGET, path=args.data)

    spacrd.model.SpaCRD.setup_anndata(source, layer="counts", labels_key="cancer", batch_key="section")
    model = spacrd.model.SpaCRD(source)
    model.train(accelerator="cpu", enable_progress_bar=False)
    model.predict(target)

    truth = target.obs["cancer"].to_numpy(dtype=bool)
    prob = target.obs["ctr_prob"].to_numpy()
    print(
        f"{TARGET}: ROC AUC {roc_auc_score(truth, prob):.3f}, AP {average_precision_score(truth, prob):.3f}, "
        f"threshold {target.uns['spacrd']['threshold']:.3f} ({target.uns['spacrd']['threshold_method']}), "
        f"called cancer {np.mean(target.obs['ctr'] == 'cancer'):.2f} vs true share {truth.mean():.2f}"
    )

    STATIC.mkdir(parents=True, exist_ok=True)
    spacrd.pl.ctr(target, labels_key="cancer", save=STATIC / "ctr_her2st_a1.png", show=False)
    spacrd.pl.score_distribution(
        target, labels_key="cancer", save=STATIC / "score_distribution_her2st_a1.png", show=False
    )
    spacrd.pl.training_history(model, save=STATIC / "training_history_her2st.png", show=False)
    plt.close("all")


if __name__ == "__main__":
    main()
