"""Time and memory of SpaCRD at Visium HD / Xenium scale: prediction, one training epoch, whole-slide images.

Synthetic sections (``_scale_data.scale_section``: 18,000 genes, about 120 detected genes and 200 UMIs
per spot, spatially coherent tissue types, 8 px grid) of 10,000 to 1,000,000 spots, as one section and
as several. Every case runs in a fresh Python process, which first builds its data and imports
everything, then resets the kernel's high-water mark of its memory (``echo 5 > /proc/self/clear_refs``)
and runs the measured call once:

- ``predict``: ``model.predict(target)`` of a model trained once beforehand (on a 20,000-spot synthetic
  source, 2,000 feature genes, no images), with the default post-processing (expression propagation,
  spatial smoothing, calibration, prior shift, call);
- ``train epoch``: one epoch of stage III over every spot of the source (``spots_per_epoch=None``),
  timed by a Lightning callback, after ``setup_anndata`` and ``SpaCRD(...)`` (gene selection), whose
  time is reported as ``set-up``;
- ``train LOSO fold``: ``setup_anndata``, ``SpaCRD(...)`` and ``model.train()`` with their defaults
  on five sections of the shipped HER2ST subset (:func:`spacrd.datasets.her2st_ctr`, D1 held out): one
  fold of the leave-one-section-out benchmark, set-up included;
- ``image``: ``spacrd.pp.image_features`` on a 30,000 × 30,000 px synthetic slide with 50,000 spots,
  from a tiled TIFF and from a dask-backed SpatialData image (``bench_image_scale.run_case``).

Columns: wall and CPU seconds (``time.perf_counter`` / ``time.process_time``, all threads), spots per
second of wall time, and peak RSS growth (``VmHWM`` after the call minus ``VmRSS`` just before it).
``--old-src`` adds, at every size, the prediction of a model of the same recipe, trained and run by another spacrd
source tree (e.g. the release before the streamed input path) on the same machine, in the same run,
for a within-run ratio; the training epoch and the HER2ST fold are then also run by that tree. ``--ranked`` adds ``model.predict(target, ranking_model=ranker)`` with a
second model of the same recipe on unscaled expression (``section_scaling="none"``).

    python benchmarks/bench_scale.py                                  # all sizes, 1 and 4 sections
    python benchmarks/bench_scale.py --sizes 100000 --old-src /tmp/spacrd_old/src
    python benchmarks/bench_scale.py --sizes 100000 1000000 --sections 1 --ranked --skip-train --skip-image
    python benchmarks/bench_scale.py --sizes 10000 --sections 1 --skip-train --skip-image   # + the HER2ST fold
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SOURCE_SPOTS = 20_000


# --------------------------------------------------------------------------------------------------
# measured in a child process
# --------------------------------------------------------------------------------------------------


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


class _Measure:
    """Wall, CPU and peak RSS growth of the ``with`` block."""

    def __enter__(self):
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        self.rss, self.wall, self.cpu = _status_mb("VmRSS"), time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu
        self.growth = _status_mb("VmHWM") - self.rss


def _quiet():
    import logging
    import warnings

    warnings.simplefilter("ignore")
    for name in ("lightning", "lightning.pytorch", "scvi", "spacrd"):
        logging.getLogger(name).setLevel(logging.ERROR)


def child_model(out: str, section_scaling: str = "zscore") -> dict:
    """Train and save the model every prediction case loads (or, ``section_scaling="none"``, its ranker)."""
    import scvi
    from _scale_data import scale_section

    import spacrd

    _quiet()
    scvi.settings.seed = 0
    source = scale_section(SOURCE_SPOTS, n_sections=4, seed=1)
    spacrd.model.SpaCRD.setup_anndata(source, labels_key="cancer", batch_key="section")
    model = spacrd.model.SpaCRD(source, section_scaling=section_scaling)
    model.train(fuse_epochs=2, classify_epochs=3, enable_progress_bar=False)
    model.save(out, overwrite=True)
    return {"genes": len(model.gene_names)}


#: ``--profile``: the steps of ``predict`` whose cumulative time is reported, by function name
PREDICT_STEPS = {
    "inputs (counts check, normalisation, scaling)": "_inputs",
    "network": "_network_outputs",
    "expression PCA": "section_pca",
    "neighbour searches (spatial, expression)": "_knn",
    "propagation": "propagate_over_neighbors",
    "spatial smoothing": "smooth_over_neighbors",
    "post-processing in all": "postprocess",
}


def _step_seconds(profile) -> dict[str, float]:
    """Cumulative seconds of each of ``PREDICT_STEPS`` in a :class:`cProfile.Profile`."""
    import pstats

    stats = pstats.Stats(profile).stats
    return {
        step: sum(v[3] for (_, _, name), v in stats.items() if name == function)
        for step, function in PREDICT_STEPS.items()
    }


def child_predict(
    model_dir: str, n_spots: int, n_sections: int, ranker_dir: str | None = None, profile: bool = False
) -> dict:
    import cProfile

    import torch
    from _scale_data import scale_section

    import spacrd

    _quiet()
    target = scale_section(n_spots, n_sections=n_sections, seed=2)
    model = spacrd.model.SpaCRD.load(model_dir)
    ranker = None if ranker_dir is None else spacrd.model.SpaCRD.load(ranker_dir)
    model.predict(scale_section(2_000, n_sections=1, seed=3), ranking_model=ranker)  # warm-up: first calls
    profiler = cProfile.Profile() if profile else None
    with _Measure() as m:
        if profiler is not None:
            profiler.enable()
        prob = model.predict(target, ranking_model=ranker)
        if profiler is not None:
            profiler.disable()
    assert prob.shape == (n_spots,)
    steps = {} if profiler is None else _step_seconds(profiler)
    return {
        "wall_s": m.wall,
        "cpu_s": m.cpu,
        "rss_growth_mb": m.growth,
        "threads": torch.get_num_threads(),
        "steps": steps,
    }


def child_train(n_spots: int, n_sections: int) -> dict:
    import lightning.pytorch as pl
    import scvi
    from _scale_data import scale_section

    import spacrd

    _quiet()
    scvi.settings.seed = 0
    source = scale_section(n_spots, n_sections=n_sections, seed=1)

    class EpochTimer(pl.Callback):
        def on_train_epoch_start(self, trainer, module):
            self.start = (time.perf_counter(), time.process_time())

        def on_train_epoch_end(self, trainer, module):
            self.wall, self.cpu = time.perf_counter() - self.start[0], time.process_time() - self.start[1]

    timer = EpochTimer()
    with _Measure() as setup:
        spacrd.model.SpaCRD.setup_anndata(source, labels_key="cancer", batch_key="section")
        model = spacrd.model.SpaCRD(source)
    with _Measure() as m:
        model.train(
            align_epochs=0,
            fuse_epochs=0,
            classify_epochs=1,
            spots_per_epoch=None,
            enable_progress_bar=False,
            callbacks=[timer],
        )
    return {
        "wall_s": timer.wall,
        "cpu_s": timer.cpu,
        "rss_growth_mb": m.growth,
        "setup_s": setup.wall,
        "setup_rss_growth_mb": setup.growth,
        "train_call_s": m.wall,
    }


def child_fold(held_out: str = "D1") -> dict:
    """One leave-one-section-out fold on the shipped HER2ST subset, with ``train()``'s defaults."""
    import scvi

    import spacrd

    _quiet()
    scvi.settings.seed = 0
    adata = spacrd.datasets.her2st_ctr()
    source = adata[adata.obs["section"] != held_out].copy()
    with _Measure() as m:
        spacrd.model.SpaCRD.setup_anndata(source, labels_key="cancer", batch_key="section")
        model = spacrd.model.SpaCRD(source)
        model.train(enable_progress_bar=False)
    return {"wall_s": m.wall, "cpu_s": m.cpu, "rss_growth_mb": m.growth, "spots": source.n_obs}


def child(kind: str, args: dict) -> dict:
    sys.path.insert(0, str(HERE))
    children = {"model": child_model, "predict": child_predict, "train": child_train, "fold": child_fold}
    return children[kind](**args)


# --------------------------------------------------------------------------------------------------
# parent: one fresh process per case, one table
# --------------------------------------------------------------------------------------------------


def run_child(kind: str, threads: int, src: str | None = None, **kwargs) -> dict:
    env = {**os.environ}
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[var] = str(threads)
    if src is not None:
        env["PYTHONPATH"] = os.pathsep.join([src, env.get("PYTHONPATH", "")])
    code = (
        f"import json, sys, torch; torch.set_num_threads({threads}); sys.path.insert(0, {str(HERE)!r}); "
        f"import bench_scale; print('RESULT' + json.dumps(bench_scale.child({kind!r}, json.loads({json.dumps(kwargs)!r}))))"
    )
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=HERE)
    for line in done.stdout.splitlines():
        if line.startswith("RESULT"):
            return json.loads(line[len("RESULT") :])
    raise RuntimeError(f"{kind} {kwargs} failed:\n{done.stderr[-3000:]}")


def _row(case: str, spots: int, sections: int, r: dict) -> dict:
    return {
        "case": case,
        "spots": spots,
        "sections": sections,
        "wall_s": r["wall_s"],
        "cpu_s": r["cpu_s"],
        "spots_per_s": spots / r["wall_s"] if r["wall_s"] > 0 else float("nan"),
        "rss_growth_mb": r["rss_growth_mb"],
        "note": r.get("note", ""),
    }


def _train_note(r: dict) -> str:
    """Set-up of a ``train epoch`` row, and the whole ``train()`` call (its own set-up included) per spot."""
    return (
        f"set-up (graph, gene selection) {r['setup_s']:.1f} s, +{r['setup_rss_growth_mb']:,.0f} MB; "
        f"the train() call {r['train_call_s']:.1f} s"
    )


def _ratio_note(old_src: str, old: dict, new: dict) -> str:
    ratio = old["wall_s"] / new["wall_s"], old["cpu_s"] / new["cpu_s"]
    return f"source tree {old_src}; it takes {ratio[0]:.2f}x the wall and {ratio[1]:.2f}x the CPU time"


def table(rows: list[dict]) -> str:
    head = "| case | spots | sections | wall (s) | CPU (s) | spots/s | peak RSS growth (MB) | note |"
    lines = [head, "|" + "---|" * 8]
    for r in rows:
        lines.append(
            f"| {r['case']} | {r['spots']:,} | {r['sections']} | {r['wall_s']:.1f} | {r['cpu_s']:.1f} | "
            f"{r['spots_per_s']:,.0f} | {r['rss_growth_mb']:,.0f} | {r['note']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 300_000, 1_000_000])
    p.add_argument("--sections", type=int, nargs="+", default=[1, 4], help="sections per target")
    p.add_argument("--threads", type=int, default=2, help="torch/BLAS threads per process")
    p.add_argument("--skip-train", action="store_true", help="only prediction")
    p.add_argument("--skip-image", action="store_true", help="leave out the whole-slide image cases")
    p.add_argument("--skip-fold", action="store_true", help="leave out the HER2ST training fold")
    p.add_argument(
        "--old-src",
        help="another spacrd source tree (its src/) to predict every size with, for a within-run ratio",
    )
    p.add_argument("--ranked", action="store_true", help="also predict with a ranker on unscaled expression")
    p.add_argument(
        "--profile",
        action="store_true",
        help="time predict's steps under cProfile (its overhead is in the row's times) and print them",
    )
    p.add_argument("--out", type=Path, default=ROOT / "results" / "bench_scale")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    profiles: dict[tuple, dict[str, float]] = {}

    def report(row: dict) -> None:
        rows.append(row)
        print(table([row]).splitlines()[-1], flush=True)
        (args.out / "bench_scale.json").write_text(json.dumps(rows, indent=1))

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = str(Path(tmp) / "model")
        run_child("model", args.threads, out=model_dir)
        ranker_dir = str(Path(tmp) / "ranker")
        if args.ranked:
            run_child("model", args.threads, out=ranker_dir, section_scaling="none")
        if args.old_src:  # the other tree trains its own model: saved models need not load across versions
            old_model_dir = str(Path(tmp) / "model_old")
            run_child("model", args.threads, src=args.old_src, out=old_model_dir)
        print(table([]).splitlines()[0], flush=True)
        for n in args.sizes:
            new = {}
            for s in args.sections:
                new[s] = run_child(
                    "predict",
                    args.threads,
                    model_dir=model_dir,
                    n_spots=n,
                    n_sections=s,
                    profile=args.profile,
                )
                report(_row("predict", n, s, new[s]))
                profiles[(n, s, "this tree")] = new[s]["steps"]
                if args.ranked:
                    r = run_child(
                        "predict",
                        args.threads,
                        model_dir=model_dir,
                        n_spots=n,
                        n_sections=s,
                        ranker_dir=ranker_dir,
                    )
                    report(_row("predict, ranked", n, s, {**r, "note": "ranking_model: unscaled"}))
            if args.old_src:  # the same size and sections in the other tree, for a within-run ratio
                s = args.sections[0]
                old = run_child(
                    "predict",
                    args.threads,
                    src=args.old_src,
                    model_dir=old_model_dir,
                    n_spots=n,
                    n_sections=s,
                    profile=args.profile,
                )
                profiles[(n, s, args.old_src)] = old["steps"]
                ratio = old["wall_s"] / new[s]["wall_s"], old["cpu_s"] / new[s]["cpu_s"]
                note = f"source tree {args.old_src}; it takes {ratio[0]:.2f}x the wall and {ratio[1]:.2f}x the CPU time"
                report(_row("predict", n, s, {**old, "note": note}))
            if not args.skip_train:
                s = args.sections[-1]
                r = run_child("train", args.threads, n_spots=n, n_sections=s)
                report(_row("train epoch", n, s, {**r, "note": _train_note(r)}))
                if args.old_src:  # the same epoch trained by the other tree, for a within-run ratio
                    old = run_child("train", args.threads, src=args.old_src, n_spots=n, n_sections=s)
                    note = f"{_train_note(old)}; {_ratio_note(args.old_src, old, r)}"
                    report(_row("train epoch", n, s, {**old, "note": note}))
    if not args.skip_fold:
        r = run_child("fold", args.threads)
        note = "HER2ST subset, D1 held out; set-up and all stages, train()'s defaults"
        report(_row("train LOSO fold", r["spots"], 5, {**r, "note": note}))
        if args.old_src:
            old = run_child("fold", args.threads, src=args.old_src)
            report(
                _row("train LOSO fold", old["spots"], 5, {**old, "note": _ratio_note(args.old_src, old, r)})
            )
    if not args.skip_image:
        sys.path.insert(0, str(HERE))
        from bench_image_scale import run_case

        for kind in ("tiff", "spatialdata"):
            r = run_case(kind, 50_000, 30_000)
            report(
                {
                    "case": f"image_features ({kind}, 30,000² px)",
                    "spots": 50_000,
                    "sections": 1,
                    "wall_s": r["wall_s"],
                    "cpu_s": r["cpu_s"],
                    "spots_per_s": 50_000 / r["wall_s"],
                    "rss_growth_mb": r["peak_rss_growth_mb"],
                    "note": f"image {r['image_gb']:.1f} GB decoded",
                }
            )
    text = table(rows)
    if args.profile:
        text += "\n\n" + step_table(profiles)
    print("\n" + text)
    (args.out / "bench_scale.md").write_text(text + "\n")


def step_table(profiles: dict[tuple, dict[str, float]]) -> str:
    """Seconds of each step of ``predict`` (cumulative, under cProfile), one column per predicted case."""
    cases = list(profiles)
    head = "| step | " + " | ".join(f"{n:,} spots, {s} section(s), {tree}" for n, s, tree in cases) + " |"
    lines = [head, "|" + "---|" * (len(cases) + 1)]
    for step in PREDICT_STEPS:
        lines.append(f"| {step} | " + " | ".join(f"{profiles[c].get(step, 0.0):.1f}" for c in cases) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
