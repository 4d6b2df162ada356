"""Recall and cost of the expression neighbour search of large sections (``spacrd.pp._neighbors._ivf_knn``).

Sections of more than 50,000 spots find each spot's expression neighbours with a faiss inverted-file
index. This script builds the embedding ``predict`` searches (ten principal components of the
log-normalised counts of the 2,000 most expressed genes, ``spacrd.tl._adaptation.section_pca``) for
one synthetic section (``_scale_data.scale_section``), then, for each index size (cells per square
root of the spots) and number of cells searched per spot, times index training, adding and search
(wall and CPU seconds, all threads) and measures the recall of the ``k`` true neighbours on 5,000
spots drawn at random (exact neighbours from a brute-force search).

    python benchmarks/bench_neighbors.py                       # 1,000,000 spots, the shipped setting and others
    python benchmarks/bench_neighbors.py --spots 300000 --settings 4,8 2,6
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from scipy import sparse

HERE = Path(__file__).resolve().parent
N_FEATURES = 2_000
N_COMPS = 10
N_CHECKED = 5_000


def embedding(n_spots: int, seed: int = 2) -> np.ndarray:
    """``(n, 10)`` expression PCs of a synthetic section, as ``predict`` searches them."""
    sys.path.insert(0, str(HERE))
    from _scale_data import scale_section

    from spacrd.model._inputs import gene_selector, log_normalised_features
    from spacrd.tl._adaptation import section_pca

    section = scale_section(n_spots, n_sections=1, seed=seed)
    counts = sparse.csr_matrix(section.X)
    top = section.var_names[np.argsort(-np.asarray(counts.mean(axis=0)).ravel())[:N_FEATURES]]
    selector, in_universe, _ = gene_selector(section.var_names, top, section.var_names)
    features, _ = log_normalised_features(counts, selector, in_universe)
    return section_pca(features, np.zeros(n_spots, dtype=np.int64), N_COMPS)


def recall(found: np.ndarray, exact: np.ndarray) -> float:
    """Mean share of each checked spot's exact neighbours that ``found`` lists."""
    return float(np.mean([np.intersect1d(a, b).size / b.size for a, b in zip(found, exact, strict=True)]))


def main(argv: list[str] | None = None) -> None:
    import faiss

    from spacrd.pp._neighbors import IVF_CELLS_PER_SQRT_SPOTS, IVF_PROBES, _ivf_knn

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--spots", type=int, default=1_000_000)
    p.add_argument("--k", type=int, default=10, help="neighbours per spot, the spot included")
    p.add_argument(
        "--settings",
        nargs="+",
        default=["4,8", "2,6", "2,4", "2,8"],
        help="CELLS,PROBES pairs: cells per square root of the spots, cells searched per spot",
    )
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    faiss.omp_set_num_threads(args.threads)
    x = embedding(args.spots)
    x = np.ascontiguousarray(x - x.min(axis=0), dtype=np.float32)
    checked = np.sort(np.random.default_rng(0).choice(args.spots, min(N_CHECKED, args.spots), replace=False))
    flat = faiss.IndexFlatL2(x.shape[1])
    flat.add(x)
    _, exact = flat.search(x[checked], args.k)
    shipped = (float(IVF_CELLS_PER_SQRT_SPOTS), int(IVF_PROBES))
    print(f"{args.spots:,} spots, {x.shape[1]} PCs, k = {args.k}, {args.threads} threads\n")
    print("| cells per √spots | cells searched | recall | wall (s) | CPU (s) | note |")
    print("|---|---|---|---|---|---|")
    for setting in args.settings:
        cells, probes = (float(v) for v in setting.split(","))
        wall, cpu = time.perf_counter(), time.process_time()
        found = _ivf_knn(x, args.k, 0, cells_per_sqrt_spots=cells, probes=int(probes))
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        note = "shipped" if (cells, int(probes)) == shipped else ""
        print(
            f"| {cells:g} | {int(probes)} | {recall(found[checked], exact):.3f} | {wall:.1f} | {cpu:.1f} | {note} |"
        )


if __name__ == "__main__":
    main()
