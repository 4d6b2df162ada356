"""Platform shift: does the called region keep its level when depth and gene panel change?

Leave-one-section-out over the six labelled HER2ST sections. Every held-out section is binomially
thinned to 100 %, 30 %, 10 % and 3 % of its counts (seed 0; the median legacy-ST spot has 1,300–1,800
UMIs, so 10 % is about a Visium HD 8 µm bin or a Xenium cell). Targeted panels are a stand-in for
Xenium: the models are trained and applied on the 1,000 or 300 most variable genes of the training
sections (``--panels``), at 100 % and 10 % depth.

Methods:

* ``spacrd/<call>``: the recipe without depth augmentation (``plain``: ``train(depth_augmentation=None)``,
  ``train()``'s default until this benchmark chose ``thinning``), with each label-free call of
  :meth:`SpaCRD.predict <spacrd.model.SpaCRD.predict>` (``call=``): ``prior`` (the calibration with
  the EM prior shift, spacrd ≤ 0.4's default), ``source`` (the calibration alone), ``mixture`` (the
  level from the target's own scores) and ``auto`` (``mixture`` for the sections unlike the training
  ones, ``source`` for the others);
* ``spacrd+thinning/<call>``: the same with depth augmentation, ``train(depth_augmentation=0.03)``,
  now ``train()``'s default and the recipe ``scripts/build_pretrained.py`` ships as ``her2st``;
* ``spacrd/selected``: per held-out section, the recipe and call chosen by *nested* selection: inner
  leave-one-section-out over the five training sections only (15 models on four sections each, every
  recipe), with the inner targets thinned at the same rates; the recipe with the highest mean inner
  ROC AUC (the representation's job is a ranking that survives the depth), then its call with the
  lowest mean inner absolute error of the called share (seed 0);
* ``logreg_hvg_knn``: logistic regression on 2,000 HVGs averaged over each spot's 7 nearest spots,
  cut at the two-Gaussian threshold of the target's probabilities; ``erbb2``: ERBB2 expression with
  the same cut.

The panels are trained with the ``plain`` recipe.

Metrics per section, rate and seed: ROC AUC, AP, label-free F1, the called and true cancer share, and
the ROC AUC of the uncertainty for wrong calls (``ctr_uncertainty`` against call ≠ truth).

The network outputs of every trained model are cached under ``--out``/cache (one file per model), so a
second run only recomputes the tables; ``--shard I/N`` trains every N-th model, for parallel runs.

Run from the repository root (about five hours of CPU for both recipes over three seeds, two panels
and the nested selection; two shards in parallel on 2 cores take about three hours)::

    python benchmarks/platform_shift.py --shard 0/2 &
    python benchmarks/platform_shift.py --shard 1/2; wait
    python benchmarks/platform_shift.py --tables-only  # the tables

Writes ``results/platform_shift/scores.csv``, ``selection.csv`` and ``summary.md``, and
``docs/_static/platform_shift.md`` (the tables of ``docs/benchmark.md`` and the model card).
"""

from __future__ import annotations

import argparse
import itertools
import logging
import pickle
import sys
import time
import warnings
from pathlib import Path

import numpy as np
from scipy import sparse

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _baselines import _trained_spacrd, erbb2, expression_features, fit_logreg, labelled, select_hvgs
from run_benchmark import DEFAULT_DATA, HER2ST_LABELLED, REPO_ROOT, load_data, split

RATES = (1.0, 0.3, 0.1, 0.03)
PANEL_RATES = (1.0, 0.1)
THINNING_SEED = 0
#: ``train()`` arguments of each recipe: ``plain``, ``train()``'s defaults (no depth augmentation);
#: ``thinning``, with depth augmentation.
RECIPES = {"plain": {"depth_augmentation": None}, "thinning": {"depth_augmentation": 0.03}}
DEFAULT_OUT = REPO_ROOT / "results" / "platform_shift"


def thinned(adata, rate: float, seed: int = THINNING_SEED):
    """A copy of ``adata`` keeping each UMI with probability ``rate`` (``X`` and ``layers["counts"]``)."""
    out = adata.copy()
    if rate >= 1.0:
        return out
    counts = sparse.csr_matrix(adata.layers["counts"])
    rng = np.random.default_rng(seed)
    kept = sparse.csr_matrix(
        (
            rng.binomial(np.rint(counts.data).astype(np.int64), rate).astype(np.float32),
            counts.indices.copy(),  # eliminate_zeros below rewrites them in place
            counts.indptr.copy(),
        ),
        shape=counts.shape,
    )
    kept.eliminate_zeros()
    out.X = kept
    out.layers["counts"] = kept.copy()
    return out


# --------------------------------------------------------------------------------------------- the jobs


def jobs(
    sections: list[str], seeds: list[int], recipes: list[str], panels: list[int], nested: bool
) -> list[dict]:
    """Every model to train: what it is trained on, and which sections at which rates it predicts."""

    def outer(seed: int, recipe: str) -> list[dict]:
        return [
            {"kind": "outer", "recipe": recipe, "seed": seed, "held": (held,), "rates": RATES, "genes": 0}
            for held in sections
        ]

    def inner(seed: int, recipe: str) -> list[dict]:
        return [
            {"kind": "inner", "recipe": recipe, "seed": seed, "held": pair, "rates": RATES, "genes": 0}
            for pair in itertools.combinations(sections, 2)
        ]

    # the first seed's outer folds and the nested selection first, then the other recipes (a
    # depth-augmented training costs more than a plain one), the panels, the other seeds
    out: list[dict] = []
    for recipe in sorted(recipes, key=lambda r: r != "plain"):
        out += outer(seeds[0], recipe) + (inner(seeds[0], recipe) if nested else [])
    for n_genes, held in itertools.product(panels, sections):
        out.append(
            {
                "kind": "panel",
                "recipe": "plain",
                "seed": seeds[0],
                "held": (held,),
                "rates": PANEL_RATES,
                "genes": n_genes,
            }
        )
    for seed, recipe in itertools.product(seeds[1:], sorted(recipes, key=lambda r: r != "plain")):
        out += outer(seed, recipe)
    return out


def job_name(job: dict) -> str:
    panel = f"_g{job['genes']}" if job["genes"] else ""
    return f"{job['kind']}_{job['recipe']}_s{job['seed']}{panel}_{'-'.join(job['held'])}"


class FittedLogreg:
    """:func:`_baselines.logreg_hvg_knn` fitted once on ``train``, to score every thinned target."""

    def __init__(self, train, seed: int):
        self.genes = select_hvgs(train)
        mask, y = labelled(train)
        x = expression_features(train, self.genes, smooth=True)[mask]
        self.model = fit_logreg(x, y, train.obs["section"].astype(str).to_numpy()[mask], seed)

    def predict(self, test) -> np.ndarray:
        return self.model.predict_proba(expression_features(test, self.genes, smooth=True))[:, 1]


def target_outputs(model, target) -> dict:
    """What ``spacrd.tl._postprocess.postprocess`` needs of one target, for every call to be applied later."""
    from spacrd._constants import MODULE_KEYS

    inputs = model._inputs(target, 0.0, None)
    outputs = model._network_outputs(inputs)
    return {
        "logits": outputs[MODULE_KEYS.LOGITS],
        "members": outputs[MODULE_KEYS.MEMBER_LOGITS],
        "neighbors": inputs.neighbors,
        "padding": inputs.padding,
        "sections": inputs.sections,
        "graph": model._expression_graph(inputs),
        "library": inputs.library,
        "detected": np.diff(inputs.features.indptr),
        "gene_overlap": inputs.gene_overlap,
    }


def run_job(adata, job: dict, sections: list[str]) -> dict:
    """Train the job's model (and the baselines for outer and panel jobs); its outputs on every target."""
    train_sections = [s for s in sections if s not in job["held"]]
    train, _ = split(adata, "", train_sections)
    genes = select_hvgs(train, job["genes"]) if job["genes"] else None
    if genes is not None:
        train = train[:, genes].copy()
    start = time.process_time()
    model = _trained_spacrd(train, job["seed"], False, None, {}, dict(RECIPES[job["recipe"]]))
    record = {
        "job": job,
        "train_cpu_s": time.process_time() - start,
        "calibration": model.calibration_,
        "source_share": model.source_cancer_share_,
        "profile": model.training_profile_,
        "targets": {},
    }
    baseline = None if job["kind"] == "inner" else FittedLogreg(train, job["seed"])
    for held, rate in itertools.product(job["held"], job["rates"]):
        _, test = split(adata, held, sections)
        if genes is not None:
            test = test[:, genes].copy()
        test = thinned(test, rate)
        entry = target_outputs(model, test)
        entry["truth"] = adata.obs["cancer"][(adata.obs["section"].astype(str) == held).to_numpy()].to_numpy(
            bool
        )
        if job["kind"] != "inner":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                entry["logreg_hvg_knn"] = baseline.predict(test)
                if "ERBB2" in test.var_names and job["seed"] == 0:
                    entry["erbb2"] = erbb2(train, test, job["seed"])
        record["targets"][held, rate] = entry
    return record


def compute(adata, job_list: list[dict], sections: list[str], cache: Path, shard: tuple[int, int]) -> None:
    cache.mkdir(parents=True, exist_ok=True)
    index, count = shard
    for i, job in enumerate(job_list):
        path = cache / f"{job_name(job)}.pkl"
        if i % count != index or path.exists():
            continue
        start = time.perf_counter()
        record = run_job(adata, job, sections)
        tmp = path.with_suffix(".tmp")
        with tmp.open("wb") as f:
            pickle.dump(record, f)
        tmp.replace(path)
        print(f"{job_name(job)}: {time.perf_counter() - start:.0f} s", flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--recipes", default="plain,thinning", help="comma-separated, of " + ", ".join(RECIPES))
    p.add_argument("--panels", type=int, nargs="*", default=[1000, 300], help="gene panel sizes (none: skip)")
    p.add_argument("--no-nested", action="store_true", help="skip the nested selection of the call")
    p.add_argument("--sections", nargs="+", default=list(HER2ST_LABELLED))
    p.add_argument("--shard", default="0/1", help="I/N: train every N-th model, starting at the I-th")
    p.add_argument("--tables-only", action="store_true", help="only summarise the cache")
    p.add_argument(
        "--no-docs-table",
        action="store_true",
        help="leave docs/_static/platform_shift.md as it is (a partial run)",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.getLogger("scvi").setLevel(logging.WARNING)
    recipes = [r for r in args.recipes.split(",") if r]
    unknown = sorted(set(recipes) - set(RECIPES))
    if unknown:
        raise SystemExit(f"unknown --recipes {unknown}; choose from {sorted(RECIPES)}")
    index, count = (int(v) for v in args.shard.split("/"))
    job_list = jobs(args.sections, args.seeds, recipes, args.panels, not args.no_nested)
    cache = args.out / "cache"
    if not args.tables_only:
        adata, _ = load_data(args.data, [], with_image=False)
        compute(adata, job_list, args.sections, cache, (index, count))
    if count == 1:
        from _platform_tables import DOCS_TABLE, write_tables

        # the command that trains what the tables show (without the run's own flags)
        own = {"--tables-only", "--no-docs-table"}
        command = " ".join(
            ["python benchmarks/platform_shift.py", *(a for a in argv or sys.argv[1:] if a not in own)]
        )
        write_tables(
            job_list, cache, args.out, args.sections, None if args.no_docs_table else DOCS_TABLE, command
        )


if __name__ == "__main__":
    main()
