"""Turn raw counts, histology embeddings and coordinates into the model's per-spot token features."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import anndata as ad
import numpy as np
import pandas as pd
import scanpy as sc
import torch
from scipy import sparse

from spacrd.module._constants import TENSOR_KEYS, UNLABELLED

SectionScaling = Literal["zscore", "minmax", "none"]


def select_genes(
    counts: sparse.spmatrix | np.ndarray, gene_names: pd.Index, sections: np.ndarray, n_top_genes: int
) -> np.ndarray:
    """Highly variable genes on raw counts of the source sections (``seurat_v3``, batch-aware).

    Returns the positions of the selected genes in ``gene_names``, in their original order. With fewer
    genes than ``n_top_genes`` all genes with non-zero counts are kept.
    """
    counts = sparse.csr_matrix(counts)
    expressed = np.asarray((counts > 0).sum(axis=0)).ravel() > 0
    if expressed.sum() <= n_top_genes:
        return np.flatnonzero(expressed)
    tmp = ad.AnnData(
        counts[:, expressed],
        obs=pd.DataFrame({"section": pd.Categorical(sections)}, index=np.arange(len(sections)).astype(str)),
    )
    tmp.var_names = gene_names[expressed]
    n_sections = tmp.obs["section"].nunique()
    sc.pp.highly_variable_genes(
        tmp, flavor="seurat_v3", n_top_genes=n_top_genes, batch_key="section" if n_sections > 1 else None
    )
    return np.flatnonzero(expressed)[tmp.var["highly_variable"].to_numpy()]


def log_normalise(
    counts: sparse.spmatrix | np.ndarray, columns: np.ndarray, target_sum: float = 1e4
) -> np.ndarray:
    """``log1p`` of counts scaled to ``target_sum`` per spot, for the selected ``columns``.

    Library sizes are taken over all columns of ``counts`` (the model's gene universe), so they do not
    depend on the gene selection. Spots with no counts stay zero.

    Returns a dense float32 array ``(n_spots, len(columns))``.
    """
    counts = sparse.csr_matrix(counts, dtype=np.float32)
    library = np.asarray(counts.sum(axis=1)).ravel()
    scale = np.divide(target_sum, library, out=np.zeros_like(library), where=library > 0)
    selected = counts[:, columns].toarray()
    return np.log1p(selected * scale[:, None]).astype(np.float32)


def scale_per_section(
    values: np.ndarray, sections: np.ndarray, method: SectionScaling, rows: np.ndarray | None = None
) -> np.ndarray:
    """Scale every feature within each section using that section's own statistics.

    ``zscore`` centres and divides by the standard deviation; ``minmax`` maps to ``[0, 1]`` as in the
    SpaCRD paper; constant features become 0. Only ``rows`` (default all) enter the statistics and are
    scaled; other rows (e.g. spots without an image) are returned unchanged.
    """
    out = values.astype(np.float32, copy=True)
    if method == "none":
        return out
    use = np.ones(len(values), dtype=bool) if rows is None else rows
    for section in pd.unique(sections[use]):
        idx = np.flatnonzero((sections == section) & use)
        block = out[idx]
        if method == "zscore":
            centre, spread = block.mean(axis=0), block.std(axis=0)
        elif method == "minmax":
            centre, spread = block.min(axis=0), block.max(axis=0) - block.min(axis=0)
        else:
            raise ValueError(f"Unknown section scaling {method!r}; use 'zscore', 'minmax' or 'none'.")
        out[idx] = np.divide(block - centre, spread, out=np.zeros_like(block), where=spread > 1e-8)
    return out


@dataclass
class SpotInputs:
    """Per-spot features of one AnnData, ready to be gathered into neighbourhood tokens.

    Attributes
    ----------
    genes
        ``(n, n_genes)`` float32 preprocessed expression.
    neighbors
        ``(n, k)`` int64 neighbour indices (self first).
    padding
        ``(n, k)`` bool, padded neighbour slots.
    labels
        ``(n,)`` int64: 0 non-cancer, 1 cancer, ``UNLABELLED`` (-1) otherwise.
    image
        ``(n, n_image_features)`` float32 scaled histology features, or ``None``.
    has_image
        ``(n,)`` bool, rows with a usable histology embedding.
    sections
        ``(n,)`` section of each spot (the unit of the per-section statistics), or ``None``.

    """

    genes: np.ndarray
    neighbors: np.ndarray
    padding: np.ndarray
    labels: np.ndarray
    image: np.ndarray | None = None
    has_image: np.ndarray | None = None
    sections: np.ndarray | None = None

    @property
    def n_obs(self) -> int:
        return self.genes.shape[0]


def build_inputs(
    counts: sparse.spmatrix | np.ndarray,
    gene_columns: np.ndarray,
    sections: np.ndarray,
    neighbors: np.ndarray,
    padding: np.ndarray,
    labels: np.ndarray | None,
    image: np.ndarray | None,
    scaling: SectionScaling,
) -> SpotInputs:
    """Preprocess raw counts and histology features of spots into :class:`SpotInputs`.

    ``counts`` are raw counts over the model's gene universe, ``gene_columns`` the model's selected
    genes within it, ``sections`` the section of each spot (statistics are per section).
    """
    genes = scale_per_section(log_normalise(counts, gene_columns), sections, scaling)
    labels = (
        np.full(genes.shape[0], UNLABELLED, dtype=np.int64) if labels is None else labels.astype(np.int64)
    )
    has_image = None
    if image is not None:
        image = np.asarray(image, dtype=np.float32)
        has_image = np.isfinite(image).all(axis=1)
        image = scale_per_section(np.nan_to_num(image), sections, scaling, rows=has_image)
        image[~has_image] = 0.0
    return SpotInputs(
        genes,
        neighbors.astype(np.int64),
        padding.astype(bool),
        labels,
        image,
        has_image,
        np.asarray(sections),
    )


class NeighbourhoodDataset(torch.utils.data.Dataset):
    """Serves minibatches of neighbourhood tokens; indexed with a list of spot indices at a time.

    Each item is a dict with ``gene_tokens`` ``(B, k, n_genes)``, ``padding_mask`` ``(B, k)``,
    ``labels`` ``(B,)`` and, for models with images, ``image_tokens`` ``(B, k, n_image_features)`` and
    ``image_mask`` ``(B, k)``.
    """

    def __init__(self, inputs: SpotInputs, use_image: bool):
        self.genes = torch.from_numpy(inputs.genes)
        self.neighbors = torch.from_numpy(inputs.neighbors)
        self.padding = torch.from_numpy(inputs.padding)
        self.labels = torch.from_numpy(inputs.labels)
        self.use_image = use_image
        if use_image:
            n, n_image = inputs.n_obs, 0 if inputs.image is None else inputs.image.shape[1]
            self.image = (
                torch.from_numpy(inputs.image) if inputs.image is not None else torch.zeros(n, n_image)
            )
            self.has_image = (
                torch.from_numpy(inputs.has_image)
                if inputs.has_image is not None
                else torch.zeros(n, dtype=torch.bool)
            )

    def __len__(self) -> int:
        return self.genes.shape[0]

    def __getitem__(self, index) -> dict[str, torch.Tensor]:
        index = torch.as_tensor(index, dtype=torch.long).reshape(-1)
        neighbors = self.neighbors[index]
        batch = {
            TENSOR_KEYS.GENE_TOKENS: self.genes[neighbors],
            TENSOR_KEYS.PADDING_MASK: self.padding[index],
            TENSOR_KEYS.LABELS: self.labels[index],
        }
        if self.use_image:
            batch[TENSOR_KEYS.IMAGE_TOKENS] = self.image[neighbors]
            batch[TENSOR_KEYS.IMAGE_MASK] = self.has_image[neighbors]
        return batch


def make_loader(
    dataset: NeighbourhoodDataset, indices: np.ndarray, batch_size: int, shuffle: bool
) -> torch.utils.data.DataLoader:
    """DataLoader over ``indices`` that hands whole index batches to the dataset (no per-item collation)."""
    subset = _BatchedSubset(dataset, np.asarray(indices))
    sampler = (
        torch.utils.data.RandomSampler(subset) if shuffle else torch.utils.data.SequentialSampler(subset)
    )
    # A training batch of one spot would break BatchNorm in the centre-only alignment stage.
    drop_last = shuffle and len(subset) % batch_size == 1
    batches = torch.utils.data.BatchSampler(sampler, batch_size=batch_size, drop_last=drop_last)
    return torch.utils.data.DataLoader(subset, sampler=batches, batch_size=None)


class _BatchedSubset(torch.utils.data.Dataset):
    """View of a dataset restricted to ``indices``, indexed by lists of positions."""

    def __init__(self, dataset: NeighbourhoodDataset, indices: np.ndarray):
        self.dataset = dataset
        self.indices = indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, positions) -> dict[str, torch.Tensor]:
        return self.dataset[self.indices[np.asarray(positions)]]
