"""Time and memory of ``spacrd.pp.image_features`` with the default backbone on real HER2ST sections.

Two cases: A1 (346 spots; features cropped from the 2,000 x 2,138 PNG kept in memory) and C2 (187 spots;
cropped from the 9,274 x 9,911 full-resolution JPEG, decoded while the section is processed). Each case
runs in a fresh ``spawn`` subprocess so that the memory numbers belong to that case alone:

- peak RSS: the kernel's high-water mark of the process (``resource.getrusage(RUSAGE_SELF).ru_maxrss``),
  which includes the interpreter, imports and the loaded section;
- RSS increase: that high-water mark minus the resident size just before the first ``image_features``
  call (``psutil``), i.e. what the call itself added at its peak (JPEG decoding included);
- traced peak: ``tracemalloc`` peak during the first call, which sees numpy allocations but not Pillow's
  or torch's own buffers.

Wall time is the fastest of ``--repeats`` calls (the first includes one-off warm-up).

``--auc`` also prints the per-feature ROC AUC of cancer (invasive cancer or cancer in situ) against all
other labelled spots on A1, the only HER2ST section with both an image and labels.

Run from the repository root, with the shared data beside the repository::

    python benchmarks/bench_image_features.py --auc
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import platform
import resource
import time
import tracemalloc
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO_ROOT.parent / "shared" / "data" / "her2st"
CASES = ("A1", "C2")


def _run_case(section: str, data: str, repeats: int, queue) -> None:
    import numpy as np
    import psutil

    import spacrd

    adata = spacrd.datasets.her2st(section, path=data)
    meta = adata.uns["spatial"][section]["metadata"]
    if "fullres_image_path" in meta:
        from PIL import Image

        Image.MAX_IMAGE_PIXELS = None
        with Image.open(meta["fullres_image_path"]) as image:
            width, height = image.size
        source = "full-resolution JPEG"
    else:
        height, width = adata.uns["spatial"][section]["images"]["hires"].shape[:2]
        source = "PNG (in memory)"

    rss_before = psutil.Process().memory_info().rss
    tracemalloc.start()
    times = []
    for i in range(repeats):
        start = time.perf_counter()
        spacrd.pp.image_features(adata)
        times.append(time.perf_counter() - start)
        if i == 0:
            traced_peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    features = adata.obsm["X_histology"]
    queue.put(
        {
            "section": section,
            "n_spots": adata.n_obs,
            "image": f"{width} x {height} {source}",
            "crop_px": adata.uns["X_histology"]["crop_size_px"][section],
            "wall_s": min(times),
            "first_s": times[0],
            "peak_rss_mb": peak_rss / 2**20,
            "rss_increase_mb": (peak_rss - rss_before) / 2**20,
            "traced_peak_mb": traced_peak / 2**20,
            "finite": bool(np.isfinite(features).all()),
        }
    )


def _auc_table(data: str) -> str:
    import numpy as np
    import pandas as pd
    from sklearn.metrics import roc_auc_score

    import spacrd

    adata = spacrd.datasets.her2st("A1", path=data)
    spacrd.pp.image_features(adata)
    cancer = adata.obs["cancer"].to_numpy(dtype=bool)
    features = adata.obsm["X_histology"]
    names = adata.uns["X_histology"]["feature_names"]
    auc = pd.Series([roc_auc_score(cancer, features[:, j]) for j in range(features.shape[1])], index=names)
    order = (auc - 0.5).abs().sort_values(ascending=False).index
    lines = [
        f"A1: {cancer.sum()} cancer vs {(~cancer).sum()} other labelled spots (AUC < 0.5: lower in cancer)",
        "",
        "| feature | ROC AUC |",
        "|---|---|",
    ]
    lines += [f"| {name} | {auc[name]:.3f} |" for name in order]
    best = np.abs(auc - 0.5).max() + 0.5
    lines += ["", f"Best single-feature separation: {best:.3f} (AUC or 1 - AUC)."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="root of the almaan/her2st copy")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--auc", action="store_true", help="also print per-feature ROC AUCs on A1")
    args = parser.parse_args()

    context = mp.get_context("spawn")
    rows = []
    for section in CASES:
        queue = context.Queue()
        process = context.Process(target=_run_case, args=(section, args.data, args.repeats, queue))
        process.start()
        rows.append(queue.get())
        process.join()
        if process.exitcode:
            raise SystemExit(f"case {section} failed with exit code {process.exitcode}")

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"image_features(backbone='histology_stats'); {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs, load average {load:.1f} at the end\n"
    )
    print(
        "| section | n spots | image | crop (px) | wall time (s, best of "
        f"{args.repeats}) | first call (s) | peak RSS (MB) | RSS increase (MB) | traced numpy peak (MB) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['section']} | {r['n_spots']} | {r['image']} | {r['crop_px']} | {r['wall_s']:.2f} | "
            f"{r['first_s']:.2f} | {r['peak_rss_mb']:.0f} | {r['rss_increase_mb']:.0f} | "
            f"{r['traced_peak_mb']:.0f} |"
        )
        if not r["finite"]:
            print(f"WARNING: non-finite features for {r['section']}")
    if args.auc:
        print()
        print(_auc_table(args.data))


if __name__ == "__main__":
    main()
