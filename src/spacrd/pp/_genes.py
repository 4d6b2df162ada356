"""The expression features: highly variable genes on the source's raw counts."""

from __future__ import annotations

import logging

import anndata as ad
import numpy as np
import pandas as pd
import scanpy as sc
from anndata import AnnData
from scipy import sparse

from spacrd._matrix import row_chunks
from spacrd._validation import check_counts, check_obs_key

logger = logging.getLogger(__name__)

#: Larger sources select genes on this many randomly drawn spots (read chunk by chunk when backed).
MAX_HVG_SPOTS = 200_000
#: Loess spans of seurat_v3's mean-variance fit, tried in turn (scanpy's default first).
LOESS_SPANS = (0.3, 0.6, 1.0)
#: Sections with fewer spots are left out of the selection: seurat_v3 fits a loess per section, which
#: fails on a few spots and crashes the process on a single one.
MIN_HVG_SPOTS = 10


def highly_variable_columns(
    counts: sparse.spmatrix | np.ndarray,
    gene_names: pd.Index,
    sections: np.ndarray | None,
    n_top_genes: int,
) -> np.ndarray:
    """Positions in ``gene_names`` of the ``n_top_genes`` most variable genes, in their original order.

    ``seurat_v3`` on raw counts, batch-aware over ``sections`` (sections of fewer than
    :data:`MIN_HVG_SPOTS` spots are left out; all spots are pooled if no section is that large), on at
    most :data:`MAX_HVG_SPOTS` randomly drawn spots. ``counts`` may be in memory, backed or lazy. With
    fewer expressed genes than ``n_top_genes``, every gene with a non-zero count is kept.
    """
    n = counts.shape[0]
    sections = np.zeros(n, dtype=np.int64) if sections is None else np.asarray(sections)
    keep = np.ones(n, dtype=bool)
    if n > MAX_HVG_SPOTS:  # variances of a large source are estimated as well from a random subset
        keep[:] = False
        keep[np.random.default_rng(0).choice(n, MAX_HVG_SPOTS, replace=False)] = True
    blocks = [block[keep[start : start + block.shape[0]]] for start, block in row_chunks(counts)]
    counts = blocks[0] if len(blocks) == 1 else sparse.vstack(blocks, format="csr")
    sections = sections[keep]
    size = pd.Series(sections).map(pd.Series(sections).value_counts()).to_numpy()
    rows = size >= MIN_HVG_SPOTS
    if not rows.any():
        rows, sections = np.ones_like(rows), np.zeros_like(sections)
    if rows.sum() < MIN_HVG_SPOTS:
        raise ValueError(
            f"Selecting {n_top_genes} highly variable genes (seurat_v3) failed: {int(rows.sum())} spots are too "
            f"few to estimate gene variances (at least {MIN_HVG_SPOTS}); pass the feature genes as `genes=`."
        )
    counts, sections = counts[rows], sections[rows]
    expressed = np.asarray((counts > 0).sum(axis=0)).ravel() > 0
    if expressed.sum() <= n_top_genes:
        return np.flatnonzero(expressed)
    scratch = ad.AnnData(
        counts[:, expressed],
        obs=pd.DataFrame({"section": pd.Categorical(sections)}, index=np.arange(len(sections)).astype(str)),
    )
    scratch.var_names = gene_names[expressed]
    batch_key = "section" if scratch.obs["section"].nunique() > 1 else None
    for span in LOESS_SPANS:
        try:
            sc.pp.highly_variable_genes(
                scratch, flavor="seurat_v3", n_top_genes=n_top_genes, batch_key=batch_key, span=span
            )
            break
        except ValueError as err:
            # many rarely detected genes with equal means make the loess of mean vs variance singular
            if span == LOESS_SPANS[-1]:
                raise ValueError(
                    f"Selecting {n_top_genes} highly variable genes (seurat_v3) failed: {err!s}. Sections of "
                    f"fewer than {MIN_HVG_SPOTS} spots are left out of the selection; with few spots in all, "
                    "pass the feature genes as `genes=`."
                ) from err
            logger.info("seurat_v3's loess failed with span=%s (%s); retrying with a wider span.", span, err)
    return np.flatnonzero(expressed)[scratch.var["highly_variable"].to_numpy()]


def select_genes(
    adata: AnnData, n_top_genes: int = 2000, *, layer: str | None = None, batch_key: str | None = None
) -> pd.Index:
    """The genes SpaCRD uses as expression features by default: highly variable genes of the source.

    ``seurat_v3`` (which models raw counts) on ``adata.layers[layer]`` (or ``X``), batch-aware across
    the sections in ``obs[batch_key]``, as :class:`spacrd.model.SpaCRD` selects them when it is not
    given ``genes=``. Use it to inspect the selection, or to intersect it with a target's genes (a
    targeted panel) before passing ``genes=``.

    Parameters
    ----------
    adata
        The source AnnData with raw counts.
    n_top_genes
        Number of genes to select.
    layer
        Layer with raw counts; ``None`` uses ``X``.
    batch_key
        ``obs`` column with each spot's section.

    Returns
    -------
    The selected gene names, in ``adata.var_names`` order. Nothing in ``adata`` changes.

    """
    counts = check_counts(adata, layer)
    sections = None
    if batch_key is not None:
        check_obs_key(adata, batch_key, "batch_key")
        sections = adata.obs[batch_key].to_numpy()
    columns = highly_variable_columns(counts, adata.var_names, sections, n_top_genes)
    return adata.var_names[columns]
