"""Nested leave-one-section-out selection of SpaCRD settings, so no held-out section picks a setting.

For every held-out (outer) section, each candidate setting is scored by leave-one-section-out over the
*training* sections only (the inner folds); the best candidate is then trained on all training sections
and scored once on the held-out section. The outer scores of the selected candidates are the honest
estimate of "SpaCRD with settings chosen from training data"; the outer scores of every fixed candidate
are written too, for comparison (those are not selections, just a grid).

Two kinds of settings are chosen, each on its own inner metric:

* the ranking settings (network architecture, whether expression is scaled per section, and label
  propagation over the target's expression graph), by mean inner ROC AUC;
* the call (Bayes call on probabilities adapted to the section's cancer share, or a GMM threshold on
  unadapted probabilities; with ``--calls``, also ``"bayes-unshifted"``: the Bayes call with the
  calibration's shift set to 0; for the unscaled model, when the default one is trained too, also
  ``"paired"``: the default model's probabilities and call in the unscaled model's order), by mean
  inner F1 of the label-free call, given the chosen ranking settings.

Run from the repository root (takes about 25 min on 2 cores, one seed)::

    python benchmarks/studies/nested_selection.py

Writes ``results/nested/inner.csv``, ``results/nested/outer.csv`` and ``results/nested/summary.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import logging
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: run_benchmark, _metrics

from _baselines import N_NEIGHBORS, labelled, unshifted_calibration
from _metrics import section_metrics
from run_benchmark import DEFAULT_DATA, HER2ST_LABELLED, REPO_ROOT, load_data, split

# model settings (SpaCRD keyword arguments): the default wide-and-deep head, without it, and the wide head
# on expression that is not scaled per section (log-normalised only; `section_scaling="none"`)
ARCHITECTURES: dict[str, dict] = {
    "wide": {"wide": True},
    "deep": {"wide": False},
    "wide-unscaled": {"wide": True, "section_scaling": "none"},
}
PROPAGATION = (0.5, 0.0)  # predict(expression_propagation=...)
CALLS: dict[str, dict] = {  # predict keyword arguments of each label-free call
    "bayes": {"prior_shift": True, "threshold": None},
    "gmm": {"prior_shift": False, "threshold": "gmm"},
    "bayes-unshifted": {"prior_shift": True, "threshold": None},
}
#: Calls that predict with the calibration's fitted shift set to 0 (its scale kept).
UNSHIFTED_CALLS = frozenset({"bayes-unshifted"})
#: The calls offered unless ``--calls`` says otherwise (those of the runs quoted in the docs).
DEFAULT_CALLS = ("bayes", "gmm")
DEFAULT = ("wide", 0.5, "bayes")
DEFAULT_OUT = REPO_ROOT / "results" / "nested"


def fit(train, architecture: str, seed: int, quick: bool):
    """One SpaCRD with the ``architecture`` settings trained on ``train``, and its training seconds."""
    import scvi

    from spacrd.model import SpaCRD

    scvi.settings.seed = seed
    scvi.settings.verbosity = logging.WARNING
    train = train.copy()
    SpaCRD.setup_anndata(
        train, layer="counts", labels_key="cancer", batch_key="section", n_neighbors=N_NEIGHBORS
    )
    model = SpaCRD(train, **ARCHITECTURES[architecture])
    epochs = {"align_epochs": 1, "fuse_epochs": 1, "classify_epochs": 2} if quick else {}
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.train(**epochs, enable_progress_bar=False)
    return model, time.perf_counter() - t0


def score(models: dict, test, y_test, calls: tuple[str, ...] = DEFAULT_CALLS) -> list[dict]:
    """Metrics on ``test`` of every trained architecture for every (propagation, call) option.

    With both ``"wide"`` and ``"wide-unscaled"`` trained, the unscaled ranking also gets the
    ``"paired"`` call: the default model's probabilities and Bayes call, in the order of the unscaled
    model (``predict(ranking_model=...)``); its training time is that of both.
    """
    rows = []
    mask = y_test >= 0
    for architecture, (model, train_s) in models.items():
        options = [(model, call, CALLS[call], None, train_s) for call in calls]
        if architecture == "wide-unscaled" and "wide" in models:
            level, level_s = models["wide"]
            options.append((level, "paired", CALLS["bayes"], model, train_s + level_s))
        for alpha, (predictor, call, kwargs, ranker, seconds) in itertools.product(PROPAGATION, options):
            scored = test.copy()
            predictor.calibrate(expression_propagation=alpha)  # stored for these settings, or fitted once
            unshifted = call in UNSHIFTED_CALLS
            with unshifted_calibration(predictor) if unshifted else contextlib.nullcontext():
                prob = predictor.predict(scored, expression_propagation=alpha, ranking_model=ranker, **kwargs)
            metrics = section_metrics(
                y_test[mask], prob[mask], call=(scored.obs["ctr"] == "cancer").to_numpy()[mask]
            )
            rows.append(
                {
                    "architecture": architecture,
                    "propagation": alpha,
                    "call": call,
                    "train_s": seconds,
                    **metrics,
                }
            )
    return rows


def _labels(adata) -> np.ndarray:
    """0/1 labels of a section, -1 where unlabelled."""
    mask, y = labelled(adata)
    out = np.full(adata.n_obs, -1)
    out[mask] = y
    return out


def select(inner: pd.DataFrame) -> tuple[str, float, str]:
    """Ranking settings by mean inner ROC AUC, then the call by mean inner label-free F1."""
    ranking = inner.groupby(["architecture", "propagation"])["auc"].mean()
    architecture, alpha = ranking.idxmax()
    chosen = inner[(inner["architecture"] == architecture) & (inner["propagation"] == alpha)]
    call = chosen.groupby("call")["f1_free"].mean().idxmax()
    return architecture, float(alpha), call


def summarise(outer: pd.DataFrame, chosen: pd.DataFrame) -> str:
    metrics = ["auc", "ap", "f1_prev", "f1_free", "brier"]
    picked = outer.merge(chosen, on=["section", "architecture", "propagation", "call"])
    lines = ["## Settings chosen on the training sections (nested), scored on the held-out section", ""]
    lines.append("| held-out | architecture | propagation | call | " + " | ".join(metrics) + " |")
    lines.append("|---" * (4 + len(metrics)) + "|")
    for _, r in picked.sort_values("section").iterrows():
        vals = " | ".join(f"{r[m]:.3f}" for m in metrics)
        lines.append(
            f"| {r['section']} | {r['architecture']} | {r['propagation']:g} | {r['call']} | {vals} |"
        )
    lines.append("| **mean** | | | | " + " | ".join(f"**{picked[m].mean():.3f}**" for m in metrics) + " |")
    lines += ["", "## Every fixed setting on the held-out sections (a grid, not a selection)", ""]
    grid = outer.groupby(["architecture", "propagation", "call"])[metrics].mean().reset_index()
    lines.append("| architecture | propagation | call | " + " | ".join(metrics) + " |")
    lines.append("|---" * (3 + len(metrics)) + "|")
    for _, r in grid.iterrows():
        default = (r["architecture"], r["propagation"], r["call"]) == DEFAULT
        name = f"{r['architecture']}{' (default)' if default else ''}"
        lines.append(
            f"| {name} | {r['propagation']:g} | {r['call']} | "
            + " | ".join(f"{r[m]:.3f}" for m in metrics)
            + " |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="HER2ST root (holds data/ST-cnts)")
    p.add_argument("--sections", nargs="+", default=None, help="outer held-out sections (default all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--quick", action="store_true", help="few epochs, two outer sections (smoke test)")
    for flag, choices, default, what in (
        (
            "--architectures",
            ARCHITECTURES,
            list(ARCHITECTURES),
            "model settings to choose among (default all)",
        ),
        ("--calls", CALLS, list(DEFAULT_CALLS), "label-free calls to choose among (default bayes gmm)"),
    ):
        p.add_argument(flag, nargs="+", default=default, choices=list(choices), help=what)
    args = p.parse_args(argv)
    calls = tuple(args.calls)

    adata, _ = load_data(args.data, [], with_image=False)
    sections = list(HER2ST_LABELLED)
    outers = args.sections or (sections[:2] if args.quick else sections)
    args.out.mkdir(parents=True, exist_ok=True)
    inner_rows, outer_rows, chosen_rows = [], [], []
    for held_out in outers:
        training_sections = [s for s in sections if s != held_out]
        pool, test = split(adata, held_out, sections)
        y_outer = _labels(adata[(adata.obs["section"].astype(str) == held_out).to_numpy()])
        for inner_held in training_sections:
            inner_train, inner_test = split(pool, inner_held, training_sections)
            y_inner = _labels(pool[(pool.obs["section"].astype(str) == inner_held).to_numpy()])
            models = {a: fit(inner_train, a, args.seed, args.quick) for a in args.architectures}
            for row in score(models, inner_test, y_inner, calls):
                inner_rows.append({"outer": held_out, "section": inner_held, **row})
            print(f"outer {held_out} inner {inner_held} done", flush=True)
        inner = pd.DataFrame([r for r in inner_rows if r["outer"] == held_out])
        architecture, alpha, call = select(inner)
        chosen_rows.append(
            {"section": held_out, "architecture": architecture, "propagation": alpha, "call": call}
        )
        models = {a: fit(pool, a, args.seed, args.quick) for a in args.architectures}
        for row in score(models, test, y_outer, calls):
            outer_rows.append({"section": held_out, **row})
        picked = next(
            r
            for r in outer_rows
            if r["section"] == held_out
            and (r["architecture"], r["propagation"], r["call"]) == (architecture, alpha, call)
        )
        print(
            f"outer {held_out}: chose {architecture}, propagation {alpha:g}, {call} call -> "
            f"AUC {picked['auc']:.3f} AP {picked['ap']:.3f} F1free {picked['f1_free']:.3f}",
            flush=True,
        )
        pd.DataFrame(inner_rows).to_csv(args.out / "inner.csv", index=False)
        pd.DataFrame(outer_rows).to_csv(args.out / "outer.csv", index=False)
        pd.DataFrame(chosen_rows).to_csv(args.out / "chosen.csv", index=False)
    text = summarise(pd.DataFrame(outer_rows), pd.DataFrame(chosen_rows))
    (args.out / "summary.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
