"""Leave-one-section-out benchmark of cancer tissue region detection on labelled HER2ST sections.

For every labelled section, every method is trained on the *other* labelled sections and scores the
held-out one. All methods see the same genes (intersection over all sections), the same spots and the
same splits. Each (section, method, seed) runs in a fresh ``spawn`` subprocess, so that its peak memory
can be read from the kernel's high-water mark of that process alone.

Reproduce the table (from the repository root, with the shared data beside the repository)::

    python benchmarks/run_benchmark.py --docs-table

See ``benchmarks/README.md`` for the methods, metrics and timings.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import sys
import time
import traceback
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _baselines import METHODS, Timer, labelled
from _metrics import section_metrics

REPO_ROOT = Path(__file__).resolve().parents[1]
HER2ST_LABELLED = ("A1", "B1", "C1", "D1", "E1", "F1")
DEFAULT_DATA = REPO_ROOT.parent / "shared" / "data" / "her2st"
DEFAULT_OUT = REPO_ROOT / "results" / "benchmark"
DOCS_TABLE = REPO_ROOT / "docs" / "_static" / "benchmark_table.md"
IMAGE_KEY = "X_histology"
# methods whose result depends on the seed; the others are run once (with the first seed)
SEEDED = ("spacrd", "spacrd_ranked")
METRICS = {  # column -> (title, higher is better)
    "auc": ("ROC AUC", True),
    "ap": ("Average precision", True),
    "f1_prev": ("F1, prevalence threshold¹", True),
    "f1_free": ("F1, label-free call²", True),
    "brier": ("Brier score³", False),
    "ece": ("Expected calibration error⁶", False),
    "unc_auroc": ("Uncertainty: ROC AUC for wrong label-free calls⁷", True),
}


# --------------------------------------------------------------------------------------------- data
def _has_image_features() -> bool:
    try:
        from spacrd.pp import image_features  # noqa: F401
    except ImportError:
        return False
    return True


def _check(adata: ad.AnnData, where: str) -> None:
    missing = [k for k in ("section", "cancer") if k not in adata.obs]
    missing += [] if "counts" in adata.layers else ["layers['counts']"]
    missing += [] if "spatial" in adata.obsm else ["obsm['spatial']"]
    if missing:
        raise ValueError(f"{where} lacks {', '.join(missing)}")


def load_data(
    data: Path, extra: list[Path], with_image: bool, undetermined: str = "non-cancer"
) -> tuple[ad.AnnData, float]:
    """HER2ST labelled sections plus extra ``.h5ad`` sections, on their common genes.

    ``undetermined="exclude"`` unsets ``cancer`` of spots whose ``obs["label"]`` is ``"undetermined"``
    (they are then neither training targets nor scored); the default keeps them as non-cancer.

    Returns the AnnData (raw counts in ``X`` and ``layers["counts"]``, ``obs["section"]``,
    ``obs["cancer"]``, ``obsm["spatial"]``, and ``obsm["X_histology"]`` when ``with_image``) and the
    seconds spent on image features.
    """
    from spacrd.datasets import her2st

    parts = [her2st(sections=list(HER2ST_LABELLED), path=data)]
    if "n_sections" in parts[0].var:  # the loader returns the union of genes; keep those in every section
        parts[0] = parts[0][:, parts[0].var["n_sections"] == len(HER2ST_LABELLED)].copy()
    parts += [ad.read_h5ad(p) for p in extra]
    image_s = 0.0
    for i, part in enumerate(parts):
        _check(part, "HER2ST" if i == 0 else str(extra[i - 1]))
        part.obs["section"] = part.obs["section"].astype(str)
        part.obs["cancer"] = part.obs["cancer"].astype("boolean")
        if undetermined == "exclude" and "label" in part.obs:
            part.obs.loc[(part.obs["label"].astype(str) == "undetermined").to_numpy(), "cancer"] = pd.NA
        if with_image and IMAGE_KEY not in part.obsm:
            from spacrd.pp import image_features

            t0 = time.perf_counter()
            try:
                image_features(part, backbone="histology_stats", key_added=IMAGE_KEY)
            except (KeyError, ValueError) as err:  # a section table without any image
                print(f"no image features for {sorted(set(part.obs['section']))}: {err}", flush=True)
            image_s += time.perf_counter() - t0
    if with_image:
        dims = {p.obsm[IMAGE_KEY].shape[1] for p in parts if IMAGE_KEY in p.obsm}
        if len(dims) > 1:
            raise ValueError(f"image features of different widths: {dims}")
        if dims:  # a dataset without any image gets NaN rows, as image_features writes for such sections
            width = dims.pop()
            for part in parts:
                if IMAGE_KEY not in part.obsm:
                    part.obsm[IMAGE_KEY] = np.full((part.n_obs, width), np.nan)
    sections = [s for p in parts for s in pd.unique(p.obs["section"])]
    if len(set(sections)) != len(sections):
        raise ValueError(f"section names are not unique across inputs: {sections}")
    keep_obsm = ["spatial"] + ([IMAGE_KEY] if with_image and all(IMAGE_KEY in p.obsm for p in parts) else [])
    slim = []
    for p in parts:
        a = ad.AnnData(
            p.layers["counts"], obs=p.obs[["section", "cancer"]].copy(), var=pd.DataFrame(index=p.var_names)
        )
        for k in keep_obsm:
            a.obsm[k] = np.asarray(p.obsm[k], dtype=float)
        slim.append(a)
    adata = ad.concat(slim, join="inner", merge=None) if len(slim) > 1 else slim[0]
    adata.layers["counts"] = adata.X.copy()
    adata.obs["section"] = pd.Categorical(adata.obs["section"], categories=sections)
    adata.obs["cancer"] = adata.obs["cancer"].astype("boolean")
    return adata, image_s


def split(adata: ad.AnnData, held_out: str, labelled_sections: list[str]) -> tuple[ad.AnnData, ad.AnnData]:
    """Training sections (with labels) and the held-out section with every label column removed."""
    sec = adata.obs["section"].astype(str)
    train = adata[sec.isin([s for s in labelled_sections if s != held_out]).to_numpy()].copy()
    test = adata[(sec == held_out).to_numpy()].copy()
    test.obs = test.obs[["section"]].copy()
    return train, test


# ---------------------------------------------------------------------------------------- one run
def _proc_status_mb(field: str) -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024  # reported in kB
    raise KeyError(field)


def _package_digest(root: Path | None = None) -> str:
    """Short SHA-1 of a ``spacrd`` source tree (default: the imported one), to tell code versions apart."""
    import hashlib

    if root is None:
        import spacrd

        root = Path(spacrd.__file__).resolve().parent
    digest = hashlib.sha1()
    for f in sorted(root.rglob("*.py")):
        digest.update(str(f.relative_to(root)).encode())
        digest.update(f.read_bytes())
    return digest.hexdigest()[:10]


def _git_state(root: Path) -> str | None:
    import subprocess

    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "."], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return f"git {commit}" + (" with uncommitted changes" if dirty else "")


def _provenance() -> str:
    """Where the benchmarked ``spacrd`` comes from: path, git state, source digest."""
    import spacrd

    root = Path(spacrd.__file__).resolve().parent
    digest = _package_digest(root)
    text = f"spacrd {spacrd.__version__} from `{root}`, source digest {digest}"
    git = _git_state(root)
    if git:
        return f"{text} ({git})"
    repo_src = REPO_ROOT / "src" / "spacrd"
    if repo_src.is_dir() and _package_digest(repo_src) == digest:  # e.g. an exported copy of a commit
        return f"{text}, identical to `src/spacrd` of this repository at {_git_state(repo_src) or 'its current state'}"
    return text


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark of this process to its current RSS (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        return False
    return True


def _child(method: str, train: ad.AnnData, test: ad.AnnData, seed: int, options: dict) -> dict:
    """Run one method in this (fresh) process; memory = peak RSS during the method minus RSS before it."""
    import gc

    import scanpy  # noqa: F401
    import scvi  # noqa: F401
    import torch

    import spacrd  # noqa: F401

    if options.pop("threads", None):
        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    gc.collect()
    if not _reset_peak_rss():
        raise RuntimeError("cannot reset the peak RSS via /proc/self/clear_refs; memory would be misreported")
    before = _proc_status_mb("VmRSS")
    timer = Timer()
    load = os.getloadavg()[0]
    prob = METHODS[method](train, test, seed, timer=timer, **options)
    after = _proc_status_mb("VmHWM")
    load = max(load, os.getloadavg()[0])
    call = None
    if "ctr" in test.obs:
        call = (test.obs["ctr"].astype(str) == "cancer").to_numpy()
    uncertainty = test.obs["ctr_uncertainty"].to_numpy(dtype=float) if "ctr_uncertainty" in test.obs else None
    return {
        "prob": np.asarray(prob, dtype=float),
        "call": call,
        "uncertainty": uncertainty,
        "train_s": timer.seconds["train"],
        "predict_s": timer.seconds["predict"],
        "train_cpu_s": timer.cpu_seconds["train"],
        "predict_cpu_s": timer.cpu_seconds["predict"],
        "peak_rss_mb": after,
        "rss_growth_mb": after - before,
        "load_avg": load,
        "cores": len(os.sched_getaffinity(0)),
        "threads": torch.get_num_threads(),
        "spacrd_digest": _package_digest(),
    }


def run_one(method: str, train: ad.AnnData, test: ad.AnnData, seed: int, options: dict) -> dict:
    """Run :func:`_child` in a new ``spawn`` process and return its result."""
    ctx = mp.get_context("spawn")
    with ctx.Pool(1, maxtasksperchild=1) as pool:
        return pool.apply(_child, (method, train, test, seed, options))


# ------------------------------------------------------------------------------------------ table
def _fmt(values: np.ndarray) -> str:
    values = np.asarray(values, dtype=float)
    if values.size > 1:
        return f"{values.mean():.3f} ± {values.std(ddof=1):.3f}"
    return f"{values.mean():.3f}"


def _hardware() -> str:
    import torch

    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return (
        f"{cpu}, {len(os.sched_getaffinity(0))} cores available, {mem:.0f} GiB RAM, no GPU used; "
        f"Python {platform.python_version()}, torch {torch.__version__}"
    )


def summarise(df: pd.DataFrame, notes: dict[str, str] | None = None) -> str:
    """Markdown tables: per metric, sections × methods plus a mean row; then cost per method."""
    methods = [m for m in METHODS if m in set(df["method"])]
    sections = list(dict.fromkeys(df["section"]))
    lines = ["# Leave-one-section-out CTR detection on labelled HER2ST sections", ""]
    seeds = {m: sorted(df.loc[df["method"] == m, "seed"].unique()) for m in methods}
    multi = [m for m in methods if len(seeds[m]) > 1]
    if multi:
        lines += [
            "Methods run over several seeds show mean ± sd over seeds "
            + ", ".join(f"{m}: seeds {', '.join(map(str, seeds[m]))}" for m in multi)
            + "; the mean row averages each seed over sections first, then gives mean ± sd over seeds.",
            "",
        ]
    for col, (title, higher) in METRICS.items():
        if col not in df or df[col].isna().all():
            continue  # e.g. no method gave an uncertainty, or rows from a run before the metric existed
        shown = [m for m in methods if df.loc[df["method"] == m, col].notna().any()]  # e.g. uncertainty
        # F1 of calling every spot cancer, 2p / (1 + p): what F1 gives for free on cancer-rich sections
        f1_ref = col.startswith("f1")
        lines += metric_table_head(title, ["held-out section", "spots (cancer share)"], shown, f1_ref)
        rows = [*sections, "mean"]
        for sec in rows:
            cells, centres = [], []
            for m in shown:
                d = df[df["method"] == m]
                if sec == "mean":  # seeds that have every section; a partial seed would bias the mean
                    complete = d.groupby("seed")["section"].nunique() == len(sections)
                    per_seed = (
                        d[d["seed"].isin(complete.index[complete])].groupby("seed")[col].mean().to_numpy()
                    )
                else:
                    per_seed = d.loc[d["section"] == sec, col].to_numpy()
                if len(per_seed) == 0:
                    cells.append("–")
                    centres.append(np.nan)
                else:
                    cells.append(_fmt(per_seed))
                    centres.append(float(np.mean(per_seed)))
            c = np.array(centres)
            if np.isfinite(c).sum() > 1:  # bold the best of several, not a lone column
                best = np.nanargmax(c) if higher else np.nanargmin(c)
                cells[best] = f"**{cells[best]}**"
            prevalence = df.groupby("section")["prevalence"].first()
            if sec == "mean":
                info = ""
                ref = f"{np.mean(2 * prevalence / (1 + prevalence)):.3f} | "
            else:
                r = df[df["section"] == sec].iloc[0]
                info = f"{int(r['n'])} ({r['prevalence']:.2f})"
                ref = f"{2 * r['prevalence'] / (1 + r['prevalence']):.3f} | "
            lines.append(f"| {sec} | {info} | " + (ref if f1_ref else "") + " | ".join(cells) + " |")
        lines.append("")
    lines += [
        "## Cost per held-out section",
        "",
        "| method | runs | training wall (s) | training CPU (s)⁵ | prediction wall (s) | prediction CPU (s) "
        "| peak RSS growth (MiB)⁴ | peak RSS (MiB) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for m in methods:
        d = df[df["method"] == m]
        lines.append(
            f"| {m} | {len(d)} | {d['train_s'].mean():.1f} | {d['train_cpu_s'].mean():.1f} | "
            f"{d['predict_s'].mean():.2f} | {d['predict_cpu_s'].mean():.2f} | "
            f"{d['rss_growth_mb'].mean():.0f} (max {d['rss_growth_mb'].max():.0f}) | {d['peak_rss_mb'].max():.0f} |"
        )
    lines += [
        "",
        "Bold: best mean in the row. Every method is trained on the other labelled sections only and "
        "never reads the held-out section's labels. Cancer = invasive cancer or cancer in situ; every "
        "other pathologist label is non-cancer, as in the SpaCRD paper"
        + (
            " (`undetermined` spots excepted: see the notes below)."
            if notes and "Undetermined spots" in notes
            else " (`undetermined` included)."
        )
        + " Spots without a label are scored but not counted.",
        "",
        "In the F1 tables, *all spots called cancer* is the F1 of the trivial call that every spot is "
        "cancer, 2p / (1 + p) for a cancer share p: on cancer-rich sections F1 is high for free.",
        "",
        "¹ Threshold at the quantile of the scores equal to the held-out section's true share of "
        "non-cancer spots (the SpaCRD paper's rule). It uses the held-out labels, so it is optimistic.",
        "",
        "² Label-free call: SpaCRD's own `obs['ctr']` (`predict`'s default `call='auto'`: probability ≥ 0.5 "
        "after the calibration fitted on the source, with the level of a two-component mixture of the "
        "section's own scores where the section is unlike the training ones); for the baselines, the crossing "
        "point of the two weighted densities of a 2-component Gaussian mixture fitted to their scores "
        "on the held-out section.",
        "",
        "³ Mean squared error of the probability against the 0/1 label. `erbb2` is not a probability: "
        "its score is log-normalised ERBB2 expression min–max scaled within the section, so its Brier "
        "score only says how well that rescaled expression happens to line up with 0/1.",
        "",
        "⁴ Each (section, method, seed) runs in a fresh `spawn` subprocess. After it has imported "
        "numpy, scanpy, torch, scvi-tools and spacrd and received the data, the kernel's peak-RSS mark "
        "of that process is reset to its current RSS (`echo 5 > /proc/self/clear_refs`); the growth is "
        "the peak (`VmHWM`) reached while the method trains and predicts minus the RSS at the reset, "
        "i.e. the memory the method itself needs at its high-water mark. Peak RSS is that peak for the "
        "whole process, imports and data included.",
        "",
        "⁵ CPU time of the process over all its threads (`time.process_time`). Wall times are means per "
        "held-out section and grow when other jobs share the machine; the 1-minute load average seen "
        f"by the runs was {df['load_avg'].min():.1f}–{df['load_avg'].max():.1f} "
        f"on {int(df['cores'].max())} cores; each run used "
        f"{'/'.join(map(str, sorted(df['threads'].unique()))) if 'threads' in df else '?'} CPU thread(s).",
        "",
        "⁶ Mean over 10 equal-width probability bins, weighted by their spots, of |share of cancer spots − "
        "mean probability|: 0 for calibrated probabilities.",
        "",
        "⁷ Methods that give a per-spot uncertainty (SpaCRD: `obs['ctr_uncertainty']`, the spread of its "
        "bootstrap members): ROC AUC of that uncertainty for telling spots whose label-free call is wrong "
        "from spots whose call is right; 0.5 means it says nothing about errors.",
        "",
    ]
    if "spacrd_digest" in df:
        digests = df.groupby("method")["spacrd_digest"].unique()
        for method, values in digests.items():
            if method.startswith("spacrd") and len(values) > 1:
                lines += [
                    f"**Warning**: the {method} runs used different versions of the package source "
                    f"(digests {', '.join(sorted(map(str, values)))}); they are not one experiment.",
                    "",
                ]
        spacrd_digests = {m: str(v[0]) for m, v in digests.items() if m.startswith("spacrd") and len(v) == 1}
        if len(set(spacrd_digests.values())) > 1:
            lines += [
                "Package source digest per method (runs added with `--resume` on a later source): "
                + "; ".join(f"{m} {d}" for m, d in spacrd_digests.items()),
                "",
            ]
    if notes:
        lines += [f"{k}: {v}" for k, v in notes.items()]
        lines.append("")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="HER2ST root (holds data/ST-cnts)")
    p.add_argument("--extra", type=Path, nargs="*", default=[], help="extra labelled sections (.h5ad)")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4], help="seeds for SpaCRD")
    p.add_argument("--sections", nargs="+", default=None, help="held-out sections to evaluate (default all)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--docs-table", action="store_true", help=f"copy the summary to {DOCS_TABLE}")
    p.add_argument("--quick", action="store_true", help="few epochs and one seed (smoke test)")
    p.add_argument(
        "--with-image",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="give SpaCRD image features where a section has an image (default: on if available)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="CPU threads per run (torch, BLAS, OpenMP); 0 = the libraries' own choice. One thread "
        "keeps timings comparable between methods and avoids oversubscription on a shared machine",
    )
    p.add_argument(
        "--undetermined",
        choices=["non-cancer", "exclude"],
        default="non-cancer",
        help="spots labelled 'undetermined': non-cancer (as in the SpaCRD paper) or left out of training and scoring",
    )
    p.add_argument(
        "--spacrd-train",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="extra arguments of SpaCRD.train, e.g. validation=block (values read as JSON where they parse)",
    )
    p.add_argument("--resume", action="store_true", help="skip runs already in OUT/benchmark.csv")
    p.add_argument("--summarise-only", action="store_true", help="rewrite summary.md from OUT/benchmark.csv")
    return p.parse_args(argv)


def _key_values(pairs: list[str]) -> dict:
    """``["validation=block", "batch_size=128"]`` -> ``{"validation": "block", "batch_size": 128}``."""
    out = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    csv_path, pred_path = args.out / "benchmark.csv", args.out / "predictions.csv.gz"
    notes: dict[str, str] = {"Hardware": _hardware(), "Package": _provenance()}
    notes_path = args.out / "notes.json"
    if args.summarise_only:
        if notes_path.exists():
            notes = {**notes, **json.loads(notes_path.read_text())}  # the run's own notes win
        return _write_summary(pd.read_csv(csv_path), args, notes)

    if args.threads:  # read by BLAS/OpenMP when the spawned runs import numpy and torch
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            os.environ[var] = str(args.threads)
    with_image = args.with_image if args.with_image is not None else _has_image_features()
    with_image = with_image and any(m.startswith("spacrd") for m in args.methods)
    seeds = args.seeds[:1] if args.quick else args.seeds
    t0 = time.perf_counter()
    adata, image_s = load_data(args.data, args.extra, with_image, args.undetermined)
    print(
        f"loaded {adata.n_obs} spots × {adata.n_vars} common genes in {time.perf_counter() - t0:.1f} s",
        flush=True,
    )
    labelled_sections = [
        s for s in adata.obs["section"].cat.categories if labelled(adata[adata.obs["section"] == s])[0].any()
    ]
    held = args.sections or labelled_sections
    unknown = set(held) - set(labelled_sections)
    if unknown:
        raise ValueError(f"not labelled sections: {sorted(unknown)}; labelled: {labelled_sections}")
    image_key = IMAGE_KEY if with_image and IMAGE_KEY in adata.obsm else None
    if image_key:
        finite = np.isfinite(adata.obsm[IMAGE_KEY]).all(axis=1)
        with_img = sorted(set(adata.obs["section"].astype(str)[finite]))
        notes["Image features"] = (
            f"`spacrd.pp.image_features(backbone='histology_stats')` for sections {', '.join(with_img) or 'none'} "
            f"({image_s:.1f} s, computed once before the splits, not counted as training)"
        )
    if args.undetermined == "exclude":
        notes["Undetermined spots"] = (
            "excluded: neither training targets nor scored (`--undetermined exclude`)"
        )
    notes["Data"] = (
        f"{adata.n_vars} genes common to all sections; training sections = the other labelled sections "
        f"of {', '.join(labelled_sections)}"
    )
    if args.spacrd_train:
        notes["SpaCRD training"] = f"`SpaCRD.train({', '.join(args.spacrd_train)})`"
    notes_path.write_text(json.dumps(notes, indent=1))
    done = pd.read_csv(csv_path) if args.resume and csv_path.exists() else pd.DataFrame()
    rows = done.to_dict("records")
    preds = [pd.read_csv(pred_path)] if args.resume and pred_path.exists() else []
    for sec in held:
        train, test = split(adata, sec, labelled_sections)
        mask, y = labelled(adata[adata.obs["section"] == sec])
        for method in args.methods:
            for seed in seeds if method in SEEDED else seeds[:1]:
                if (
                    len(done)
                    and ((done["section"] == sec) & (done["method"] == method) & (done["seed"] == seed)).any()
                ):
                    continue
                options = {"quick": args.quick, "threads": args.threads}
                if method.startswith("spacrd"):
                    options["image_key"] = image_key
                if method == "spacrd":
                    options["train_kwargs"] = _key_values(args.spacrd_train)
                t1 = time.perf_counter()
                try:
                    res = run_one(method, train, test, seed, options)
                except Exception:  # keep the other runs of a long benchmark; --resume retries this one
                    print(f"{sec} {method} seed={seed} FAILED:\n{traceback.format_exc()}", flush=True)
                    continue
                call = None if res["call"] is None else res["call"][mask]
                unc = None if res["uncertainty"] is None else res["uncertainty"][mask]
                m = section_metrics(y, res["prob"][mask], call=call, seed=seed, uncertainty=unc)
                row = {
                    "section": sec,
                    "method": method,
                    "seed": seed,
                    **m,
                    **{k: v for k, v in res.items() if k not in ("prob", "call", "uncertainty")},
                    "n_train_spots": int(labelled(train)[0].sum()),
                    "n_genes": adata.n_vars,
                    "quick": args.quick,
                }
                rows.append(row)
                pd.DataFrame(rows).to_csv(csv_path, index=False)
                label = np.full(test.n_obs, np.nan)
                label[mask] = y
                preds.append(
                    pd.DataFrame(
                        {
                            "section": sec,
                            "method": method,
                            "seed": seed,
                            "spot": test.obs_names,
                            "cancer": label,
                            "prob": res["prob"],
                            "call": res["call"] if res["call"] is not None else np.nan,
                            "uncertainty": res["uncertainty"] if res["uncertainty"] is not None else np.nan,
                        }
                    )
                )
                pd.concat(preds).to_csv(pred_path, index=False)
                print(
                    f"{sec} {method} seed={seed}: AUC {m['auc']:.3f} AP {m['ap']:.3f} F1prev {m['f1_prev']:.3f} "
                    f"F1free {m['f1_free']:.3f} Brier {m['brier']:.3f} | train {res['train_s']:.1f} s, "
                    f"predict {res['predict_s']:.2f} s, +{res['rss_growth_mb']:.0f} MiB "
                    f"({time.perf_counter() - t1:.0f} s with process start)",
                    flush=True,
                )
    _write_summary(pd.DataFrame(rows), args, notes)
    print(f"total {time.perf_counter() - t0:.0f} s", flush=True)


def _write_summary(df: pd.DataFrame, args: argparse.Namespace, notes: dict[str, str]) -> None:
    if args.quick or ("quick" in df and df["quick"].astype(bool).any()):
        notes["Quick run"] = "reduced epochs and one seed; not the reference numbers"
    write_summary(summarise(df, notes), args.out, DOCS_TABLE if args.docs_table else None)


def metric_table_head(title: str, keys: list[str], columns: list[str], all_cancer: bool) -> list[str]:
    """Heading and header rows of one metric's table; ``all_cancer`` adds the all-spots-cancer F1 column."""
    names = [*keys, *(["all spots called cancer"] if all_cancer else []), *columns]
    return [f"## {title}", "", "| " + " | ".join(names) + " |", "|---" * len(names) + "|"]


def read_predictions(path: Path) -> pd.DataFrame:
    """``predictions.csv.gz`` with ``call`` as 1.0 / 0.0 (NaN for methods without a call of their own).

    Files written by earlier runs hold the calls as 1.0/0.0, later ones as True/False, and a file
    extended with ``--resume`` holds both.
    """
    predictions = pd.read_csv(path)
    calls = {"1.0": 1.0, "0.0": 0.0, "1": 1.0, "0": 0.0, "True": 1.0, "False": 0.0}
    predictions["call"] = predictions["call"].astype(str).map(calls)
    return predictions


def write_summary(text: str, out: Path, docs_table: Path | None) -> None:
    """Write ``text`` to ``out/summary.md``, print it and, with ``docs_table``, copy it there too."""
    (out / "summary.md").write_text(text)
    print(text)
    if docs_table is not None:
        docs_table.parent.mkdir(parents=True, exist_ok=True)
        docs_table.write_text(text)


if __name__ == "__main__":
    main()
