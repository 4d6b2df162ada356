"""The README's main job: cross-patient CTR detection on the shipped HER2ST subset.

Trains SpaCRD on five patients' labelled sections, predicts the held-out one without its labels,
prints ROC AUC, average precision and the F1 of the label-free call next to trivial baselines, and
writes a figure and a per-spot results table.

The default held-out section is D1 (306 spots, 45% cancer). A section's cancer share ``p`` sets what a
model gets for free: a constant score has average precision ``p`` and calling every spot cancer has
F1 ``2p / (1 + p)``. A1 is 88% cancer, so its average precision of 0.99 is close to the 0.88 of a
constant, and its F1 to the 0.93 of calling everything cancer; near ``p = 0.5`` these baselines are
lowest (AP 0.45, F1 0.62 for D1), so the numbers show what the model adds. B1 (21% cancer) is the other
informative choice, but with 63 cancer spots its metrics are noisier.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import TYPE_CHECKING

import spacrd
from spacrd._atomic import AtomicFiles
from spacrd._constants import CANCER, OBS_KEYS, SCANPY_IMAGE_KEYS, UNS_KEYS
from spacrd._stages import STAGES

if TYPE_CHECKING:
    import pandas as pd

#: The labelled sections of :func:`spacrd.datasets.her2st_ctr`, one per patient.
SECTIONS = ("A1", "B1", "C1", "D1", "E1", "F1")
#: Held-out section of the demo; see the module docstring for why.
DEFAULT_HELD_OUT = "D1"
#: Index name of ``spots.csv``.
SPOT_COLUMN = "spot"


def image_sections(adata) -> list[str]:
    """Sections of ``adata`` whose ``uns["spatial"]`` entry holds an H&E image."""
    spatial = adata.uns.get(UNS_KEYS.SPATIAL, {})
    return [
        s for s in adata.obs["section"].cat.categories if spatial.get(s, {}).get(SCANPY_IMAGE_KEYS.IMAGES)
    ]


def modalities_note(train_images: list[str], held_out: str, held_out_has_image: bool) -> str:
    """Why the demo's model reads expression only, from which sections have an image."""
    if not train_images:
        return (
            "Modalities: expression only. No training section has an H&E image (in this data only A1 has "
            "one, and it is held out), so there is no image to learn a histology branch from."
        )
    if not held_out_has_image:
        return (
            f"Modalities: expression only. Only {', '.join(train_images)} of the training sections has an "
            f"H&E image and the held-out {held_out} has none, so histology could not inform its predictions "
            "(and a histology branch learnt from one section would not generalise)."
        )
    return "Modalities: expression only (the demo does not compute histology features)."


def run(
    held_out: str = DEFAULT_HELD_OUT,
    out_dir: str | Path = "spacrd_demo",
    seed: int = 0,
    fuse_epochs: int = STAGES[1].epochs,
    classify_epochs: int = STAGES[2].epochs,
    progress: bool = True,
) -> pd.DataFrame:
    """Train on every labelled section but ``held_out``, predict it, write results under ``out_dir``.

    Parameters
    ----------
    held_out
        Labelled section to predict without its labels (A1, B1, C1, D1, E1 or F1).
    out_dir
        Folder for ``ctr.png`` (probabilities next to the pathologist's labels), ``metrics.csv`` and
        ``spots.csv`` (one row per held-out spot, index column ``spot``).
    seed
        :attr:`scvi.settings.seed` before training.
    fuse_epochs, classify_epochs
        Epochs of training stages II and III (stage I needs images and is skipped).
    progress
        Print the stages and their epochs on standard error.

    Returns
    -------
    The one-row metrics table also written to ``out_dir/metrics.csv``: ``roc_auc``,
    ``average_precision``, ``f1_label_free_call``, the held-out ``cancer_share`` ``p`` and the trivial
    baselines ``baseline_roc_auc`` (0.5), ``baseline_average_precision`` (``p``) and
    ``baseline_f1_all_cancer`` (``2p / (1 + p)``), the estimated cancer share, threshold and timings.

    """
    # imported here so that `spacrd --help` stays fast
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd
    import scvi
    from sklearn.metrics import average_precision_score, f1_score, roc_auc_score

    from spacrd._console import StageProgress, quiet_libraries

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    adata = spacrd.datasets.her2st_ctr()
    if held_out not in adata.obs["section"].cat.categories:
        raise ValueError(
            f"`held_out` must be one of {list(adata.obs['section'].cat.categories)}, got {held_out!r}."
        )
    is_target = (adata.obs["section"] == held_out).to_numpy()
    source, target = adata[~is_target].copy(), adata[is_target].copy()
    truth = target.obs["cancer"].astype(bool).to_numpy()
    target.obs = target.obs.drop(columns=["label", "cancer"])  # the model never sees the target's labels
    with_image = image_sections(adata)
    train_images = [s for s in with_image if s != held_out]
    if progress:
        sections = ", ".join(source.obs["section"].cat.remove_unused_categories().cat.categories)
        print(
            f"Training on {sections} ({source.n_obs} labelled spots); predicting {held_out} "
            f"({target.n_obs} spots) without its labels.\n{modalities_note(train_images, held_out, held_out in with_image)}",
            flush=True,
        )

    with quiet_libraries():
        scvi.settings.seed = seed
        spacrd.model.SpaCRD.setup_anndata(source, labels_key="cancer", batch_key="section")
        model = spacrd.model.SpaCRD(source)
        start = time.perf_counter()
        model.train(
            fuse_epochs=fuse_epochs,
            classify_epochs=classify_epochs,
            enable_progress_bar=False,
            callbacks=[StageProgress()] if progress else None,
        )
        train_s = time.perf_counter() - start
        start = time.perf_counter()
        prob = model.predict(target)
        predict_s = time.perf_counter() - start

    called = (target.obs[OBS_KEYS.CALL] == CANCER).to_numpy()
    share = float(truth.mean())
    prediction = target.uns[UNS_KEYS.PREDICTION]
    metrics = pd.DataFrame(
        {
            "held_out": [held_out],
            "n_spots": [target.n_obs],
            "modalities": ["expression"],
            "cancer_share": [share],
            "estimated_cancer_share": [float(prediction["cancer_share"].get(held_out, float("nan")))],
            "roc_auc": [roc_auc_score(truth, prob)],
            "average_precision": [average_precision_score(truth, prob)],
            "f1_label_free_call": [f1_score(truth, called)],
            "baseline_roc_auc": [0.5],
            "baseline_average_precision": [share],
            "baseline_f1_all_cancer": [2 * share / (1 + share)],
            "threshold": [prediction["threshold"]],
            "train_s": [train_s],
            "predict_s": [predict_s],
        }
    )
    spots = target.obs[["section", "array_x", "array_y", OBS_KEYS.PROB, OBS_KEYS.CALL]].copy()
    spots["pathologist_cancer"] = truth
    spots.index.name = SPOT_COLUMN

    target.obs["pathologist"] = pd.Categorical(
        pd.Series(truth, index=target.obs_names).map({True: "cancer", False: "non-cancer"}),
        categories=["non-cancer", "cancer"],
    )
    with quiet_libraries():
        spacrd.pl.ctr(
            target, labels_key="pathologist", library_key="section", img=held_out in with_image, show=False
        )
        # the three files are renamed into place together, once all are complete
        with AtomicFiles() as files:
            files.write(out / "metrics.csv", lambda tmp: metrics.to_csv(tmp, index=False))
            files.write(out / "spots.csv", spots.to_csv)
            files.write(out / "ctr.png", lambda tmp: plt.savefig(tmp, dpi=150, bbox_inches="tight"))
    plt.close("all")
    return metrics


def report(metrics: pd.DataFrame) -> str:
    """The demo's result as a short table: SpaCRD's metrics next to the trivial baselines."""
    r = metrics.iloc[0]
    rows = [
        ("ROC AUC", r.roc_auc, r.baseline_roc_auc, "any constant score"),
        (
            "average precision",
            r.average_precision,
            r.baseline_average_precision,
            "constant score = cancer share",
        ),
        (
            "F1 of the label-free call",
            r.f1_label_free_call,
            r.baseline_f1_all_cancer,
            "every spot called cancer",
        ),
    ]
    lines = [
        f"Held-out {r.held_out}: {r.n_spots} spots, {r.cancer_share:.0%} cancer by the pathologist "
        f"(estimated without labels: {r.estimated_cancer_share:.0%}).",
        f"  {'':<27}{'SpaCRD':>8}{'baseline':>10}",
        *(f"  {name:<27}{value:>8.3f}{base:>10.3f}  ({why})" for name, value, base, why in rows),
        f"Train {r.train_s:.0f} s, predict {r.predict_s:.1f} s.",
    ]
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The demo's options, shared by ``spacrd demo`` and ``spacrd-demo``."""
    parser.add_argument(
        "--held-out",
        default=DEFAULT_HELD_OUT,
        metavar="SECTION",
        help=f"labelled section to predict: A1, B1, C1, D1, E1 or F1 (default {DEFAULT_HELD_OUT}, 45%% cancer)",
    )
    parser.add_argument(
        "--out", default="spacrd_demo", metavar="DIR", help="output folder (default spacrd_demo)"
    )
    parser.add_argument("--seed", type=int, default=0, help="training seed (default 0)")
    parser.add_argument(
        "--fuse-epochs", type=int, default=STAGES[1].epochs, metavar="N", help="epochs of stage II"
    )
    parser.add_argument(
        "--classify-epochs", type=int, default=STAGES[2].epochs, metavar="N", help="epochs of stage III"
    )


def run_from_args(args: argparse.Namespace) -> None:
    """Run the demo for parsed :func:`add_arguments` options and print its report."""
    metrics = run(args.held_out, args.out, args.seed, args.fuse_epochs, args.classify_epochs)
    print(report(metrics))
    print(f"Wrote {args.out}/ctr.png, {args.out}/metrics.csv, {args.out}/spots.csv")
