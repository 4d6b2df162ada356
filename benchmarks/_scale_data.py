"""Synthetic sections at Visium HD / Xenium scale: sparse counts with spatially coherent cell types.

Spots sit on a square grid (8 µm bins: 8 px per step). Each spot belongs to one of ``n_types`` tissue
types laid out in patches (one of them a "tumour" type); each type draws its genes from its own
skewed profile over ``n_genes`` genes. About ``umis_per_spot`` UMIs per spot fall on about 0.8 % of
the genes, as for 8 µm Visium HD bins (a median of some 100-200 genes per bin).
"""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
from scipy import sparse

#: Grid step of the synthetic spots in pixels (one 8 µm bin at 1 µm per pixel).
STEP_PX = 8.0


def scale_section(
    n_spots: int,
    n_genes: int = 18_000,
    n_sections: int = 1,
    umis_per_spot: int = 200,
    n_types: int = 8,
    seed: int = 0,
) -> ad.AnnData:
    """``n_spots`` spots in ``n_sections`` equal sections, raw counts in ``X`` (CSR float32).

    ``obs``: ``section`` (categorical), ``cancer`` (bool, the tumour type); ``obsm["spatial"]`` (pixels).
    """
    rng = np.random.default_rng(seed)
    per_section = np.full(n_sections, n_spots // n_sections)
    per_section[: n_spots % n_sections] += 1
    side = int(np.ceil(np.sqrt(per_section.max())))
    coords, sections, types = [], [], []
    for s, n in enumerate(per_section):
        grid = np.arange(n)
        xy = np.column_stack([grid % side, grid // side]).astype(np.float64) * STEP_PX
        # tissue types in patches: a random type for each cell of a coarse 8 x 8 grid over the section
        block = np.floor(xy / (side * STEP_PX / 8)).astype(np.int64).clip(max=7) @ [1, 8]
        coords.append(xy)
        sections.append(np.full(n, f"S{s}"))
        types.append(rng.integers(0, n_types, 64)[block])
    xy, section, tissue = np.concatenate(coords), np.concatenate(sections), np.concatenate(types)

    # per type: a Zipf-like gene profile with its own permutation (shared housekeeping genes first)
    base = 1.0 / np.arange(1, n_genes + 1) ** 1.1
    profiles = np.empty((n_types, n_genes))
    for t in range(n_types):
        p = base.copy()
        own = rng.choice(np.arange(200, n_genes), 300, replace=False)
        p[own] *= 20.0
        profiles[t] = p / p.sum()
    cdf = np.cumsum(profiles, axis=1)

    library = rng.poisson(umis_per_spot, n_spots).clip(1)
    indptr = np.concatenate([[0], np.cumsum(library)])
    genes = np.empty(indptr[-1], dtype=np.int32)
    for t in range(n_types):
        rows = np.flatnonzero(tissue == t)
        starts, counts = indptr[rows], library[rows]
        # the UMI slots of these rows: start of each row repeated, plus the offset within the row
        offsets = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
        positions = np.repeat(starts, counts) + offsets
        genes[positions] = np.searchsorted(cdf[t], rng.random(counts.sum())).clip(max=n_genes - 1)
    counts = sparse.csr_matrix(
        (np.ones(len(genes), dtype=np.float32), genes, indptr), shape=(n_spots, n_genes)
    )
    counts.sum_duplicates()  # one entry per (spot, gene): the UMIs of that gene
    obs = pd.DataFrame(
        {"section": pd.Categorical(section), "cancer": tissue == 0},
        index=pd.Index([f"spot{i}" for i in range(n_spots)]),
    )
    adata = ad.AnnData(counts, obs=obs)
    adata.var_names = [f"gene{i}" for i in range(n_genes)]
    adata.obsm["spatial"] = xy
    return adata
