"""Fixtures of the benchmarks' own checks; the scripts are imported from ``benchmarks/``."""

import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import _baselines as bl
import run_benchmark as rb


# ---------------------------------------------------------------------------- synthetic data
def synthetic(n_sections: int = 3, side: int = 14, n_genes: int = 150, seed: int = 0) -> ad.AnnData:
    """Sections on a grid with a disc of cancer spots whose 15 marker genes (ERBB2 among them) are up."""
    rng = np.random.default_rng(seed)
    genes = ["ERBB2", *[f"G{i}" for i in range(n_genes - 1)]]
    base = rng.gamma(2.0, 2.0, n_genes)
    parts = []
    for s in range(n_sections):
        yy, xx = np.mgrid[0:side, 0:side]
        coords = np.c_[xx.ravel(), yy.ravel()].astype(float) * 100.0
        centre = rng.uniform(0.3, 0.7, 2) * side * 100.0
        cancer = np.linalg.norm(coords - centre, axis=1) < side * 100.0 * (0.25 + 0.1 * s)
        rate = np.tile(base, (coords.shape[0], 1)) * rng.uniform(0.5, 2.0)  # section depth differs
        rate[np.ix_(cancer, np.arange(15))] *= 2.5
        counts = rng.poisson(rate * rng.gamma(5.0, 0.2, rate.shape)).astype(np.float32)
        a = ad.AnnData(sp.csr_matrix(counts), var=pd.DataFrame(index=genes))
        a.obs_names = [f"s{s}_{i}" for i in range(a.n_obs)]
        a.obs["section"] = f"S{s}"
        label = pd.array(cancer, dtype="boolean")
        label[rng.random(a.n_obs) < 0.05] = pd.NA  # a few unlabelled spots, as in HER2ST
        a.obs["cancer"] = label
        a.obsm["spatial"] = coords
        parts.append(a)
    out = ad.concat(parts)
    out.layers["counts"] = out.X.copy()
    out.obs["section"] = out.obs["section"].astype("category")
    return out


@pytest.fixture
def synthetic_sections():
    """:func:`synthetic`, to build sections of another size in a test."""
    return synthetic


@pytest.fixture(scope="module")
def split_data():
    adata = synthetic()
    train, test = rb.split(adata, "S2", ["S0", "S1", "S2"])
    mask, y = bl.labelled(adata[adata.obs["section"] == "S2"])
    return train, test, mask, y
