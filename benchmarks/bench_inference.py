"""Inference throughput and peak memory of SpaCRD.predict on a large synthetic section.

    python benchmarks/bench_inference.py --n-spots 100000

Trains the default architecture briefly on a small synthetic source (accuracy is not the point here),
then predicts one synthetic section of ``--n-spots`` spots on a square lattice (neighbours, per-section
scaling, label propagation over the expression graph, spatial smoothing, calibration, prior shift and
call included) and prints a Markdown table. Peak memory is the process's maximum resident set size
(``resource.getrusage``) and its growth during ``predict``.
"""

from __future__ import annotations

import argparse
import resource
import time

import anndata as ad
import numpy as np
import pandas as pd
import scvi
from scipy import sparse

import spacrd


def _section(n_spots: int, n_genes: int, rng: np.random.Generator) -> ad.AnnData:
    side = int(np.ceil(np.sqrt(n_spots)))
    yy, xx = np.divmod(np.arange(n_spots), side)
    coords = np.c_[xx, yy].astype(float) * 100.0
    counts = sparse.random(n_spots, n_genes, density=0.05, format="csr", random_state=rng, dtype=np.float32)
    counts.data = rng.poisson(3.0, counts.nnz).astype(np.float32) + 1
    adata = ad.AnnData(counts, obs=pd.DataFrame(index=[f"s{i}" for i in range(n_spots)]))
    adata.var_names = [f"g{i}" for i in range(n_genes)]
    adata.obsm["spatial"] = coords
    return adata


def _max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-spots", type=int, default=100_000)
    parser.add_argument("--n-genes", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=1024)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    scvi.settings.seed = 0

    source = ad.concat([_section(900, args.n_genes, rng) for _ in range(2)], index_unique="-")
    source.obs["section"] = np.repeat(["a", "b"], 900)
    source.obs["cancer"] = rng.random(source.n_obs) < 0.5
    spacrd.model.SpaCRD.setup_anndata(source, labels_key="cancer", batch_key="section")
    model = spacrd.model.SpaCRD(source, n_top_genes=args.n_genes)
    model.train(align_epochs=0, fuse_epochs=1, classify_epochs=1, enable_progress_bar=False)

    target = _section(args.n_spots, args.n_genes, rng)
    rss_before = _max_rss_mb()
    start = time.perf_counter()
    model.predict(target, batch_size=args.batch_size)
    seconds = time.perf_counter() - start
    rss_after = _max_rss_mb()
    print(
        "| spots | genes | batch size | predict wall (s) | spots / s | peak RSS (MB) | peak RSS growth (MB) |"
    )
    print("|---|---|---|---|---|---|---|")
    print(
        f"| {args.n_spots:,} | {args.n_genes} | {args.batch_size} | {seconds:.1f} | {args.n_spots / seconds:,.0f} | "
        f"{rss_after:.0f} | {rss_after - rss_before:.0f} |"
    )


if __name__ == "__main__":
    main()
