"""Time and memory of labelling bins from annotated regions, and of outlining called regions, at scale.

A synthetic Visium HD-like section (``n`` bins on a square grid of 8 px, an AnnData in the squidpy
layout: ``obsm["spatial"]`` and ``spot_diameter_fullres``) and ``--polygons`` annotations (star-shaped
outlines of 40 vertices, a quarter of them with a hole, scattered over the section, half ``Tumor`` and
half ``Stroma``, some overlapping). Every case runs in a fresh Python process, which builds its data
and imports everything, then resets the kernel's high-water mark of its memory
(``echo 5 > /proc/self/clear_refs``) and runs the measured call once:

- ``labels (centre)``: ``spacrd.pp.labels_from_annotations(adata, frame, classes=...)``;
- ``labels (footprint)``: the same with ``min_overlap=0.5`` (each bin's disc against the classes);
- ``regions``: ``spacrd.tl.ctr_regions(adata, call_key=...)`` of the labels just made (Voronoi tiles of
  every bin, union of the called ones).

Columns: wall and CPU seconds (``time.perf_counter`` / ``time.process_time``), bins per second of wall
time, and peak RSS growth (``VmHWM`` after the call minus ``VmRSS`` just before it).

    python benchmarks/bench_annotations.py                     # 100,000 and 1,000,000 bins
    python benchmarks/bench_annotations.py --sizes 1000000 --polygons 1000 --skip-regions
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CASES = ("labels (centre)", "labels (footprint)", "regions")


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def _section(n_bins: int, n_polygons: int, seed: int = 0):
    import geopandas as gpd
    import numpy as np
    import pandas as pd
    from anndata import AnnData
    from shapely.geometry import Polygon

    rng = np.random.default_rng(seed)
    side = int(np.ceil(np.sqrt(n_bins)))
    step = 8.0
    xy = np.stack(np.meshgrid(np.arange(side), np.arange(side)), -1).reshape(-1, 2)[:n_bins] * step
    adata = AnnData(
        obs=pd.DataFrame(index=pd.RangeIndex(n_bins).astype(str)),
        obsm={"spatial": xy.astype(float)},
        uns={"spatial": {"hd": {"scalefactors": {"spot_diameter_fullres": step}}}},
    )
    extent = side * step
    radius = extent / np.sqrt(n_polygons) * 0.6
    polygons = []
    for _ in range(n_polygons):
        centre = rng.uniform(0, extent, 2)
        angles = np.sort(rng.uniform(0, 2 * np.pi, 40))
        radii = radius * rng.uniform(0.6, 1.2, 40)
        ring = np.column_stack([centre[0] + radii * np.cos(angles), centre[1] + radii * np.sin(angles)])
        hole = None
        if rng.random() < 0.25:
            hole = [centre + 0.2 * radius * np.array([np.cos(a), np.sin(a)]) for a in np.linspace(0, 6, 12)]
        polygons.append(Polygon(ring, None if hole is None else [hole]))
    classes = np.where(rng.random(n_polygons) < 0.5, "Tumor", "Stroma")
    frame = gpd.GeoDataFrame({"classification": classes}, geometry=polygons)
    return adata, frame


def _child(spec: dict) -> dict:
    import logging
    import warnings

    import spacrd

    warnings.simplefilter("ignore")
    logging.getLogger("spacrd").setLevel(logging.ERROR)
    _ = spacrd.pp, spacrd.tl, spacrd.io  # imported before the measured call, as a session would have
    adata, frame = _section(spec["bins"], spec["polygons"])
    classes = {"Tumor": "cancer", "Stroma": "non-cancer"}
    case = spec["case"]
    if case == "regions":
        spacrd.pp.labels_from_annotations(adata, frame, classes=classes)

    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")
    rss, wall, cpu = _status_mb("VmRSS"), time.perf_counter(), time.process_time()
    if case == "regions":
        regions = spacrd.tl.ctr_regions(adata, call_key="cancer", library_key=None)
        detail = f"{len(regions)} region(s), {int(regions['n_spots'].sum()):,} bins inside"
    else:
        overlap = 0.5 if case == "labels (footprint)" else None
        spacrd.pp.labels_from_annotations(adata, frame, classes=classes, min_overlap=overlap)
        counts = adata.obs["cancer"].value_counts()
        detail = f"{int(counts.get('cancer', 0)):,} cancer, {int(counts.get('non-cancer', 0)):,} non-cancer"
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {**spec, "wall": wall, "cpu": cpu, "growth": _status_mb("VmHWM") - rss, "detail": detail}


def _run(spec: dict) -> dict:
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    done = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps(spec)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if done.returncode:
        raise RuntimeError(f"case {spec} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000], help="bins per section")
    parser.add_argument("--polygons", type=int, default=1000, help="annotations (default 1000)")
    parser.add_argument("--skip-regions", action="store_true", help="leave out tl.ctr_regions")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(_child(json.loads(args.child))))
        return
    cases = [c for c in CASES if not (args.skip_regions and c == "regions")]
    print("| bins | polygons | case | wall s | CPU s | bins/s | peak RSS growth MB | result |")
    print("|---:|---:|---|---:|---:|---:|---:|---|")
    for n in args.sizes:
        for case in cases:
            row = _run({"bins": n, "polygons": args.polygons, "case": case})
            print(
                f"| {n:,} | {args.polygons:,} | {case} | {row['wall']:.2f} | {row['cpu']:.2f} | "
                f"{n / row['wall']:,.0f} | {row['growth']:.0f} | {row['detail']} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
