"""Memory and time of ``spacrd.pp.image_features`` on whole-slide-sized images.

A synthetic H&E-like RGB slide (pink tissue, purple blobs, pixel noise; ``size`` × ``size`` px, 2.7 GB
decoded at 30,000 px) is written without ever holding it in memory, in one of three forms:

- ``tiff``: a tiled (512 px), JPEG-compressed pyramidal TIFF written tile by tile with tifffile, read
  through the AnnData route (``uns["spatial"][lib]["metadata"]["fullres_image_path"]``);
- ``spatialdata``: a dask-backed multiscale SpatialData image (chunks of 4096 px) written to zarr and
  read back lazily with ``spatialdata.read_zarr``, with circle shapes and a table;
- ``jpeg``: a JPEG file, which Pillow decodes whole (the documented limit; run it at a smaller size).

``n_spots`` spots of 160 px diameter are placed uniformly at random. Each case runs in a fresh
subprocess, which builds the (lazy) input, warms up imports on a tiny image, then resets the kernel's
high-water mark (``echo 5 > /proc/self/clear_refs``) and calls ``image_features`` once. Reported:

- wall s / CPU s: ``time.perf_counter`` / ``time.process_time`` (all threads) of that call;
- spots/s: spots over wall time;
- peak RSS growth: ``VmHWM`` after the call minus ``VmRSS`` just before it (Linux ``/proc/self/status``),
  i.e. the most memory the call added at any moment.

Files go to a temporary directory (removed afterwards unless ``--keep``), never into the repository.
Run from the repository root::

    python benchmarks/bench_image_scale.py                      # tiff and spatialdata, 30,000 px, 50,000 spots
    python benchmarks/bench_image_scale.py --cases jpeg:10000   # the Pillow route, for comparison
    python benchmarks/bench_image_scale.py --cases tiff:30000 --keep /tmp/slides --old-src /tmp/old/src

``--old-src DIR`` runs every case a second time with another source tree first on ``PYTHONPATH`` (e.g.
``git archive HEAD src | tar -x -C /tmp/old``), on the same files, for a within-run ratio; its rows
say ``source``. The features of both runs are compared (``max_abs_diff``).

Another script can call :func:`run_case` directly.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

KINDS = ("tiff", "spatialdata", "jpeg")
SPOT_DIAMETER = 160.0  # px, about a Visium spot at 0.35 µm/px
TILE = 512
CHUNK = 4096
SEED = 0


# --------------------------------------------------------------------------------------------------
# synthetic slide, generated block by block from pixel coordinates
# --------------------------------------------------------------------------------------------------


def pattern(y0: int, y1: int, x0: int, x1: int, step: int = 1) -> np.ndarray:
    """``(y1 - y0, x1 - x0, 3)`` uint8 block of the slide (at 1 / ``step`` resolution, block coordinates)."""
    ys = (np.arange(y0, y1) * step).astype(np.float32)
    xs = (np.arange(x0, x1) * step).astype(np.float32)
    blobs = np.sin(ys / 113.0)[:, None] * np.sin(xs / 97.0)[None, :] > 0.35
    base = np.where(blobs[..., None], np.array([110, 60, 150], np.uint8), np.array([235, 180, 205], np.uint8))
    rng = np.random.default_rng([SEED, y0, x0, step])
    noise = rng.integers(-20, 21, size=base.shape, dtype=np.int16)
    return np.clip(base.astype(np.int16) + noise, 0, 255).astype(np.uint8)


def spot_centres(n_spots: int, size: int) -> np.ndarray:
    """``(n, 2)`` float64 ``(x, y)`` spot centres inside the slide, seeded."""
    margin = SPOT_DIAMETER
    return np.random.default_rng(SEED).uniform(margin, size - margin, size=(n_spots, 2))


def write_tiff(path: Path, size: int) -> None:
    """A tiled pyramidal TIFF, written tile by tile (level 0, then halvings down to about 2,000 px)."""
    import tifffile

    try:
        import imagecodecs  # noqa: F401

        compression, compressionargs = "jpeg", {"level": 90}
    except ImportError:  # JPEG tiles need imagecodecs; zlib always works
        compression, compressionargs = "zlib", {}
    levels = [1]
    while size // (2 * levels[-1]) >= 2000:
        levels.append(2 * levels[-1])

    def tiles(step: int):
        height = width = -(-size // step)
        for y in range(0, height, TILE):
            for x in range(0, width, TILE):
                yield pattern(y, min(y + TILE, height), x, min(x + TILE, width), step)

    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        for i, step in enumerate(levels):
            side = -(-size // step)
            tif.write(
                tiles(step),
                shape=(side, side, 3),
                dtype=np.uint8,
                tile=(TILE, TILE),
                photometric="rgb",
                compression=compression,
                compressionargs=compressionargs,
                subifds=(len(levels) - 1 or None) if i == 0 else None,
                subfiletype=1 if i else 0,
            )


def write_jpeg(path: Path, size: int) -> None:
    """A JPEG of the slide. Pillow needs the whole image in memory to encode it, so keep ``size`` small."""
    from PIL import Image

    image = np.empty((size, size, 3), dtype=np.uint8)
    for y in range(0, size, CHUNK):
        image[y : y + CHUNK] = pattern(y, min(y + CHUNK, size), 0, size)
    Image.fromarray(image).save(path, quality=90)


def write_spatialdata(path: Path, size: int, n_spots: int) -> None:
    """A dask-backed multiscale image, circle spots and their table, written to zarr chunk by chunk."""
    import dask.array as da
    import pandas as pd
    import spatialdata as sd
    from anndata import AnnData
    from spatialdata.models import Image2DModel, ShapesModel, TableModel
    from spatialdata.transformations import Identity

    def block(block_info=None):
        (_, _), (y0, y1), (x0, x1) = block_info[None]["array-location"]
        return np.moveaxis(pattern(y0, y1, x0, x1), -1, 0)

    chunks = ((3,), *(tuple(min(CHUNK, size - s) for s in range(0, size, CHUNK)),) * 2)
    pixels = da.map_blocks(block, dtype=np.uint8, chunks=chunks)
    image = Image2DModel.parse(
        pixels, dims=("c", "y", "x"), scale_factors=[2, 4, 8], transformations={"global": Identity()}
    )
    xy = spot_centres(n_spots, size)
    shapes = ShapesModel.parse(
        xy, geometry=0, radius=np.full(n_spots, SPOT_DIAMETER / 2), transformations={"global": Identity()}
    )
    table = TableModel.parse(
        AnnData(
            np.zeros((n_spots, 1), dtype=np.float32),
            obs=pd.DataFrame(
                {"region": pd.Categorical(["spots"] * n_spots), "spot_id": np.arange(n_spots)},
                index=[f"spot{i}" for i in range(n_spots)],
            ),
        ),
        region="spots",
        region_key="region",
        instance_key="spot_id",
    )
    sd.SpatialData(images={"he": image}, shapes={"spots": shapes}, tables={"table": table}).write(path)


def _slide_anndata(path: str, n_spots: int, size: int):
    """The AnnData route: spots in full-resolution pixels of the file at ``path``."""
    import pandas as pd
    from anndata import AnnData

    adata = AnnData(
        np.zeros((n_spots, 1), dtype=np.float32),
        obs=pd.DataFrame(
            {"section": pd.Categorical(["slide"] * n_spots)}, index=[f"s{i}" for i in range(n_spots)]
        ),
    )
    adata.obsm["spatial"] = spot_centres(n_spots, size)
    adata.uns["spatial"] = {
        "slide": {
            "images": {},
            "scalefactors": {"spot_diameter_fullres": SPOT_DIAMETER, "tissue_hires_scalef": 1.0},
            "metadata": {"fullres_image_path": path},
        }
    }
    return adata


# --------------------------------------------------------------------------------------------------
# one case in a fresh process
# --------------------------------------------------------------------------------------------------


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def _worker(kind: str, path: str, n_spots: int, size: int, features_out: str = "") -> dict:
    import gc
    import time

    import spacrd

    # warm-up on a tiny in-memory image: imports and one-off allocations are not the call's cost
    warm = _slide_anndata("", 4, 400)
    warm.uns["spatial"]["slide"]["metadata"] = {}
    warm.uns["spatial"]["slide"]["images"] = {"hires": pattern(0, 400, 0, 400)}
    spacrd.pp.image_features(warm)

    if kind == "spatialdata":
        import spatialdata as sd

        data = sd.read_zarr(path)
        kwargs = {"image_key": "he", "shapes_key": "spots"}
    else:
        data = _slide_anndata(path, n_spots, size)
        kwargs = {}
    gc.collect()
    with open("/proc/self/clear_refs", "w") as fh:  # reset VmHWM to the current RSS
        fh.write("5")
    rss_before = _status_kb("VmRSS")
    wall, cpu = time.perf_counter(), time.process_time()
    spacrd.pp.image_features(data, **kwargs)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    peak = _status_kb("VmHWM")
    table = data.tables["table"] if kind == "spatialdata" else data
    features = table.obsm["X_histology"]
    assert features.shape[0] == n_spots and np.isfinite(features).all()
    if features_out:
        np.save(features_out, features)
    return {
        "spacrd": str(Path(spacrd.__file__).parent),
        "wall_s": wall,
        "cpu_s": cpu,
        "rss_before_mb": rss_before / 1024,
        "peak_rss_growth_mb": (peak - rss_before) / 1024,
        "crop_px": int(next(iter(table.uns["X_histology"]["crop_size_px"].values()))),
    }


def run_case(
    kind: str,
    n_spots: int,
    size: int,
    *,
    workdir: str | Path | None = None,
    src: str | None = None,
    features_out: str | Path | None = None,
) -> dict:
    """Write a ``size`` × ``size`` slide as ``kind``, featurise ``n_spots`` spots in a fresh process.

    Parameters
    ----------
    kind
        ``"tiff"``, ``"spatialdata"`` or ``"jpeg"``.
    n_spots
        Spots placed uniformly at random, 160 px wide.
    size
        Side of the square slide in pixels (decoded size ``3 * size**2`` bytes).
    workdir
        Folder for the files; default a temporary one, removed afterwards.
    src
        Source tree to import spacrd from (put first on ``PYTHONPATH``); default the installed one.
    features_out
        Save the features (``.npy``) here.

    Returns
    -------
    ``case``, ``size``, ``spots``, ``image_gb`` (decoded), ``file_mb`` (on disk), ``wall_s``, ``cpu_s``,
    ``spots_per_s``, ``rss_before_mb``, ``peak_rss_growth_mb``, ``crop_px``.

    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}.")
    own = workdir is None
    folder = Path(tempfile.mkdtemp(prefix="spacrd-bench-image-")) if own else Path(workdir)
    folder.mkdir(parents=True, exist_ok=True)
    try:
        path = folder / {"tiff": f"slide_{size}.tif", "jpeg": f"slide_{size}.jpg"}.get(
            kind, f"slide_{size}_{n_spots}.zarr"
        )
        if not path.exists():
            {"tiff": write_tiff, "jpeg": write_jpeg}.get(kind, lambda p, s: write_spatialdata(p, s, n_spots))(
                path, size
            )
        command = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--worker",
            kind,
            str(path),
            str(n_spots),
            str(size),
            str(features_out or ""),
        ]
        env = os.environ.copy()
        if src is not None:
            env["PYTHONPATH"] = os.pathsep.join([str(src), env.get("PYTHONPATH", "")])
        done = subprocess.run(command, capture_output=True, text=True, env=env)
        if done.returncode != 0:
            raise RuntimeError(f"case {kind} failed:\n{done.stderr[-4000:]}")
        result = json.loads(done.stdout.strip().splitlines()[-1])
        file_bytes = (
            sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
            if path.is_dir()
            else path.stat().st_size
        )
    finally:
        if own:
            shutil.rmtree(folder, ignore_errors=True)
    return {
        "case": kind,
        "source": str(src) if src is not None else "this tree",
        "size": size,
        "spots": n_spots,
        "image_gb": 3 * size**2 / 1e9,
        "file_mb": file_bytes / 2**20,
        **result,
        "spots_per_s": n_spots / result["wall_s"],
    }


def format_table(rows: list[dict]) -> str:
    """Markdown table of :func:`run_case` results."""
    lines = [
        "| case | source | image (px) | decoded GB | spots | crop px | wall s | CPU s | spots/s | peak RSS growth MB |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['case']} | {r.get('source', 'this tree')} | {r['size']:,} × {r['size']:,} | {r['image_gb']:.2f} | {r['spots']:,} | {r['crop_px']} "
            f"| {r['wall_s']:.1f} | {r['cpu_s']:.1f} | {r['spots_per_s']:.0f} | {r['peak_rss_growth_mb']:.0f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--cases", nargs="+", default=["tiff:30000", "spatialdata:30000"], help="KIND:SIZE ..."
    )
    parser.add_argument("--spots", type=int, default=50_000)
    parser.add_argument(
        "--keep", metavar="DIR", help="write the files here and keep them (reused if present)"
    )
    parser.add_argument(
        "--old-src", metavar="DIR", help="also run each case with this source tree (for a same-run ratio)"
    )
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="spacrd-bench-features-") as scratch:
        for case in args.cases:
            kind, _, size = case.partition(":")
            trees = [None, args.old_src] if args.old_src else [None]
            for i, src in enumerate(trees):
                out = Path(scratch) / f"{kind}_{size}_{i}.npy"
                rows.append(
                    run_case(
                        kind, args.spots, int(size or 30_000), workdir=args.keep, src=src, features_out=out
                    )
                )
                if i:  # the same spots and image in both trees: how far apart are their features?
                    rows[-1]["max_abs_diff"] = float(
                        np.abs(np.load(out) - np.load(Path(scratch) / f"{kind}_{size}_0.npy")).max()
                    )
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    print(format_table(rows))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        kind, path, n_spots, size = sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
        print(json.dumps(_worker(kind, path, n_spots, size, sys.argv[6] if len(sys.argv) > 6 else "")))
    else:
        main()
