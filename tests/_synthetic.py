"""Small synthetic multi-section spatial data where a spatially coherent region decides the label."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
from scipy import sparse


def synthetic_sections(
    n_sections: int = 4,
    grid: int = 16,
    n_genes: int = 200,
    n_markers: int = 15,
    n_image_features: int = 12,
    seed: int = 0,
    marker_fold: float = 2.0,
) -> ad.AnnData:
    """Sections on a ``grid × grid`` lattice with one tumour disc each.

    Cancer spots over-express ``n_markers`` genes by ``marker_fold`` and shift the first image features;
    each section has its own library size and per-gene batch effect, so per-section scaling matters.
    Counts are Poisson; ``obs``: ``section``, ``cancer`` (bool); ``obsm``: ``spatial`` (pixels, 100 px
    grid step), ``X_histology``; ``layers["counts"]``.
    """
    rng = np.random.default_rng(seed)
    blocks = []
    base = rng.gamma(2.0, 1.0, n_genes)
    for s in range(n_sections):
        yy, xx = np.mgrid[0:grid, 0:grid]
        coords = np.c_[xx.ravel(), yy.ravel()].astype(float) * 100.0
        centre = rng.uniform(0.3, 0.7, 2) * grid * 100.0
        radius = rng.uniform(0.22, 0.32) * grid * 100.0
        cancer = np.linalg.norm(coords - centre, axis=1) < radius
        rates = np.tile(base, (len(coords), 1)) * rng.lognormal(0, 0.4, n_genes)  # batch effect per gene
        rates[cancer, :n_markers] *= marker_fold
        library = rng.lognormal(np.log(rng.uniform(0.5, 2.0)), 0.3, len(coords))[:, None]
        counts = rng.poisson(rates * library).astype(np.float32)
        image = rng.normal(0, 1, (len(coords), n_image_features)) + rng.normal(0, 0.5, n_image_features)
        image[cancer, :3] += 1.0
        obs = pd.DataFrame(
            {"section": f"S{s}", "cancer": cancer}, index=[f"S{s}_{i}" for i in range(len(coords))]
        )
        block = ad.AnnData(sparse.csr_matrix(counts), obs=obs)
        block.obsm["spatial"] = coords + rng.normal(0, 1.0, coords.shape)
        block.obsm["X_histology"] = image.astype(np.float32)
        blocks.append(block)
    adata = ad.concat(blocks)
    adata.var_names = [f"gene{i}" for i in range(n_genes)]
    adata.obs["section"] = adata.obs["section"].astype("category")
    adata.layers["counts"] = adata.X.copy()
    return adata


def tiny_sections() -> ad.AnnData:
    """Three 8 × 8 sections of 60 genes: the smallest data the model trains on, for input-validation tests."""
    return synthetic_sections(n_sections=3, grid=8, n_genes=60)


def source_of(adata: ad.AnnData, held_out: str = "S2") -> ad.AnnData:
    """Copy of every section but ``held_out``."""
    return adata[adata.obs["section"] != held_out].copy()


def target_of(adata: ad.AnnData, held_out: str = "S2") -> ad.AnnData:
    """Copy of the ``held_out`` section."""
    return adata[adata.obs["section"] == held_out].copy()
