"""Raw counts, histology embeddings and neighbour graphs → the model's per-spot inputs, sparse and streamed.

Counts stay a sparse CSR matrix end to end. Library sizes, log-normalisation and the per-section
scaling statistics are reduced from it without densifying all spots; a dense array exists only for
the spots of one minibatch (:meth:`SpotInputs.genes`). Backed or lazily read AnnData are read in row
chunks.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from scipy import sparse

from spacrd._constants import SECTION_SCALINGS, UNLABELLED
from spacrd._matrix import READ_CHUNK, row_chunks
from spacrd.nn import ShiftedSparse

SectionScaling = Literal["zscore", "minmax", "none"]
#: Library sizes are scaled to this many counts before ``log1p`` (``normalize_total(1e4)``).
TARGET_SUM = 1e4
#: Features whose spread within a section is below this are constant there and scaled to 0.
MIN_SPREAD = 1e-8


# --------------------------------------------------------------------------------------------------
# counts → log-normalised feature genes (sparse)
# --------------------------------------------------------------------------------------------------


def gene_selector(
    source_genes: pd.Index, feature_genes: pd.Index, universe: pd.Index
) -> tuple[sparse.csr_matrix, np.ndarray, np.ndarray]:
    """Sparse maps from the columns of a count matrix to the model's genes.

    Parameters
    ----------
    source_genes
        Gene names of the count matrix's columns (``d``).
    feature_genes
        The model's expression features, in model order (``G``).
    universe
        The model's gene universe, over which library sizes are taken.

    Returns
    -------
    selector
        ``(d, G)`` 0/1 CSR matrix: ``counts @ selector`` are the counts of the feature genes, with zero
        columns for feature genes the matrix lacks.
    in_universe
        ``(d,)`` float64 indicator of the columns that are in the universe: ``counts @ in_universe``
        are the library sizes.
    present
        ``(G,)`` bool, the feature genes the matrix has.

    """
    position = source_genes.get_indexer(feature_genes)
    present = position >= 0
    selector = sparse.csr_matrix(
        (np.ones(int(present.sum())), (position[present], np.flatnonzero(present))),
        shape=(len(source_genes), len(feature_genes)),
        dtype=np.float32,
    )
    in_universe = source_genes.isin(universe).astype(np.float64)
    return selector, in_universe, present


def log_normalised_features(
    counts: Any, selector: sparse.csr_matrix, in_universe: np.ndarray, chunk: int = READ_CHUNK
) -> tuple[sparse.csr_matrix, np.ndarray]:
    """``log1p(counts / library * 1e4)`` of the feature genes, as a CSR matrix.

    Parameters
    ----------
    counts
        ``(n, d)`` raw counts: scipy sparse, numpy, or a backed AnnData's ``X`` / an h5py-backed sparse
        dataset (read in row chunks of ``chunk`` spots).
    selector, in_universe
        From :func:`gene_selector`.

    Returns
    -------
    features
        ``(n, G)`` float32 CSR: zero where the count is zero, so its sparsity is the counts'.
    library
        ``(n,)`` float64 library sizes over the model's gene universe (float64: large counts do not
        overflow). Spots without counts stay all zero.

    """
    blocks, libraries = [], []
    for _, block in row_chunks(counts, chunk):
        library = np.asarray(block @ in_universe, dtype=np.float64).ravel()
        selected = sparse.csr_matrix(block @ selector, dtype=np.float32)
        size_factor = np.divide(TARGET_SUM, library, out=np.zeros_like(library), where=library > 0)
        per_entry = np.repeat(size_factor, np.diff(selected.indptr))
        selected.data = np.log1p(selected.data * per_entry).astype(np.float32)
        blocks.append(selected)
        libraries.append(library)
    features = blocks[0] if len(blocks) == 1 else sparse.vstack(blocks, format="csr")
    return sparse.csr_matrix(features), np.concatenate(libraries)


# --------------------------------------------------------------------------------------------------
# per-section scaling statistics (streamed moments)
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SectionStats:
    """Per-section affine scaling of features: ``scaled = (x - centre[s]) * inverse_spread[s]``.

    Attributes
    ----------
    centre
        ``(n_sections, d)`` float32: mean (``zscore``), minimum (``minmax``) or 0 (``none``).
    inverse_spread
        ``(n_sections, d)`` float32: 1 / standard deviation or 1 / range; 0 for features constant in
        the section (which therefore scale to 0).

    """

    centre: np.ndarray
    inverse_spread: np.ndarray

    def apply(self, values: np.ndarray, codes: np.ndarray) -> np.ndarray:
        """Scale ``values`` ``(b, d)`` of spots in sections ``codes`` ``(b,)``, in place (float ``values``)."""
        sections = np.unique(codes)
        if len(sections) == 1:  # the usual chunk: spots of one section, scaled by broadcasting
            values -= self.centre[sections[0]]
            values *= self.inverse_spread[sections[0]]
            return values
        values -= self.centre[codes]
        values *= self.inverse_spread[codes]
        return values


def _dense(matrix: Any) -> np.ndarray:
    return matrix.toarray() if sparse.issparse(matrix) else np.asarray(matrix)


def _indicator(codes: np.ndarray, n_sections: int, rows: np.ndarray | None = None) -> sparse.csr_matrix:
    """``(n_sections, n)`` 0/1 matrix summing the (selected) rows of each section."""
    n = len(codes)
    use = np.ones(n, dtype=bool) if rows is None else rows
    return sparse.csr_matrix(
        (np.ones(int(use.sum())), (codes[use], np.flatnonzero(use))), shape=(n_sections, n)
    )


def section_stats(
    values: sparse.csr_matrix | np.ndarray,
    codes: np.ndarray,
    n_sections: int,
    method: SectionScaling,
    rows: np.ndarray | None = None,
) -> SectionStats:
    """Statistics of :class:`SectionStats` from sparse or dense ``values`` ``(n, d)``.

    Means and variances come from per-section sums and sums of squares in float64 (one pass over the
    stored entries; implicit zeros count as zeros), minima and maxima from the sparse reductions, so
    no dense ``(n, d)`` array is built. Only ``rows`` (default all) enter the statistics.
    """
    d = values.shape[1]
    if method == "none":
        return SectionStats(np.zeros((n_sections, d), np.float32), np.ones((n_sections, d), np.float32))
    if method not in SECTION_SCALINGS:
        raise ValueError(f"Unknown section scaling {method!r}; use one of {SECTION_SCALINGS}.")
    use = np.ones(len(codes), dtype=bool) if rows is None else np.asarray(rows, dtype=bool)
    if method == "zscore":
        sums, sum_sq = np.zeros((n_sections, d)), np.zeros((n_sections, d))
        for start in range(0, len(codes), READ_CHUNK):
            stop = min(start + READ_CHUNK, len(codes))
            indicator = _indicator(codes[start:stop], n_sections, use[start:stop])
            block = values[start:stop].astype(np.float64)
            squares = block**2 if isinstance(block, np.ndarray) else block.multiply(block)
            sums += _dense(indicator @ block)
            sum_sq += _dense(indicator @ squares)
        counts = np.bincount(codes[use], minlength=n_sections).astype(np.float64)[:, None]
        mean = np.divide(sums, counts, out=np.zeros_like(sums), where=counts > 0)
        mean_sq = np.divide(sum_sq, counts, out=np.zeros_like(sums), where=counts > 0)
        centre, spread = mean, np.sqrt(np.maximum(mean_sq - mean**2, 0.0))
    else:
        centre = np.zeros((n_sections, d))
        spread = np.zeros((n_sections, d))
        for code in range(n_sections):
            block = values[np.flatnonzero((codes == code) & use)]
            if block.shape[0] == 0:
                continue
            lo = block.min(axis=0)
            hi = block.max(axis=0)
            lo = np.asarray(lo.toarray() if sparse.issparse(lo) else lo, dtype=np.float64).ravel()
            hi = np.asarray(hi.toarray() if sparse.issparse(hi) else hi, dtype=np.float64).ravel()
            centre[code], spread[code] = lo, hi - lo
    inverse = np.divide(1.0, spread, out=np.zeros_like(spread), where=spread > MIN_SPREAD)
    return SectionStats(centre.astype(np.float32), inverse.astype(np.float32))


# --------------------------------------------------------------------------------------------------
# the inputs of one AnnData
# --------------------------------------------------------------------------------------------------


@dataclass
class SpotInputs:
    """Per-spot inputs of one AnnData, read into minibatches by :class:`~spacrd.model._datamodule.NeighbourhoodDataset`.

    Attributes
    ----------
    features
        ``(n, n_genes)`` float32 CSR log-normalised counts of the model's genes.
    gene_stats
        Per-section scaling of ``features``.
    codes
        ``(n,)`` int64 section code of each spot; ``section_names[code]`` is its section.
    section_names
        Section labels, in code order.
    neighbors
        ``(n, k)`` int64 neighbour rows (self first; padded slots repeat the spot).
    padding
        ``(n, k)`` bool, padded neighbour slots.
    labels
        ``(n,)`` int64: 0 non-cancer, 1 cancer, ``UNLABELLED`` (-1) otherwise.
    image
        ``(n, n_image_features)`` float32 raw histology embeddings (NaN rows: no image), or ``None``.
    image_stats
        Per-section scaling of ``image`` over the spots with an image.
    has_image
        ``(n,)`` bool, rows with a usable histology embedding.
    coordinates
        ``(n, 2)`` float64 spot centres, or ``None``; they order the spots into spatially compact
        chunks at prediction (a Z-order curve per section).
    library
        ``(n,)`` float64 total counts of each spot over the model's gene universe, or ``None``.
    gene_overlap
        Share of the model's genes present in the data (1 for the registered source).

    """

    features: sparse.csr_matrix
    gene_stats: SectionStats
    codes: np.ndarray
    section_names: list[str]
    neighbors: np.ndarray
    padding: np.ndarray
    labels: np.ndarray
    image: np.ndarray | None = None
    image_stats: SectionStats | None = None
    has_image: np.ndarray | None = None
    coordinates: np.ndarray | None = None
    library: np.ndarray | None = None
    gene_overlap: float = 1.0

    @property
    def n_obs(self) -> int:
        return self.features.shape[0]

    @property
    def sections(self) -> np.ndarray:
        """``(n,)`` section label of each spot."""
        return np.asarray(self.section_names, dtype=object)[self.codes]

    def genes(self, rows: np.ndarray) -> np.ndarray:
        """Dense ``(len(rows), n_genes)`` float32 preprocessed expression of ``rows``."""
        return self.gene_stats.apply(self.features[rows].toarray(), self.codes[rows])

    def shifted_genes(self, rows: np.ndarray) -> ShiftedSparse:
        """The preprocessed expression of ``rows`` as :class:`~spacrd.nn.ShiftedSparse`, never densified.

        ``(x - centre[s]) * inverse_spread[s] = x * inverse_spread[s] - centre[s] * inverse_spread[s]``:
        the first term has the sparsity of the counts, the second is one row per section.
        """
        block = self.features[rows]
        sections, local = np.unique(self.codes[rows], return_inverse=True)
        inverse = self.gene_stats.inverse_spread[sections]
        data = block.data * inverse[np.repeat(local, np.diff(block.indptr)), block.indices]
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
            values = torch.sparse_csr_tensor(
                torch.from_numpy(block.indptr.astype(np.int64)),
                torch.from_numpy(block.indices.astype(np.int64)),
                torch.from_numpy(data.astype(np.float32, copy=False)),
                size=block.shape,
            )
        shift = torch.from_numpy(self.gene_stats.centre[sections] * inverse)
        return ShiftedSparse(values, shift, torch.from_numpy(local.astype(np.int64)))

    def image_features(self, rows: np.ndarray) -> np.ndarray:
        """Dense ``(len(rows), n_image_features)`` float32 scaled histology features; 0 without an image."""
        if self.image is None or self.image_stats is None or self.has_image is None:
            raise ValueError("These inputs hold no histology embeddings.")
        raw = np.nan_to_num(self.image[rows])
        scaled = self.image_stats.apply(raw, self.codes[rows])
        scaled[~self.has_image[rows]] = 0.0
        return scaled


def section_codes(sections: np.ndarray | pd.Series | None, n: int) -> tuple[np.ndarray, list[str]]:
    """Integer codes of sections in order of first appearance, and the section labels."""
    if sections is None:
        return np.zeros(n, dtype=np.int64), ["section"]
    codes, names = pd.factorize(np.asarray(sections))
    if (codes < 0).any():  # factorize gives missing values code -1: they would index the last section
        raise ValueError(
            f"{int((codes < 0).sum())} spots have no section (a missing value in the section column); "
            "every spot needs its section."
        )
    return codes.astype(np.int64), [str(name) for name in names]


def build_inputs(
    counts: Any,
    selector: sparse.csr_matrix,
    in_universe: np.ndarray,
    sections: np.ndarray | None,
    neighbors: np.ndarray,
    labels: np.ndarray | None,
    image: np.ndarray | None,
    scaling: SectionScaling,
    coordinates: np.ndarray | None = None,
) -> SpotInputs:
    """Preprocess raw counts and histology embeddings of spots into :class:`SpotInputs`.

    Parameters
    ----------
    counts
        ``(n, d)`` raw counts (sparse, dense or backed), columns mapped to the model's genes by
        ``selector`` and ``in_universe`` (:func:`gene_selector`).
    sections
        ``(n,)`` section of each spot; statistics are per section. ``None``: one section.
    neighbors
        ``(n, k)`` neighbour rows, self first, ``-1`` for padded slots.
    labels
        ``(n,)`` 0/1/``UNLABELLED`` codes, or ``None`` (all unlabelled).
    image
        ``(n, n_image_features)`` histology embeddings with NaN rows for spots without one, or ``None``.
    scaling
        ``"zscore"``, ``"minmax"`` or ``"none"``.
    coordinates
        ``(n, 2)`` spot centres (optional).

    """
    features, library = log_normalised_features(counts, selector, in_universe)
    n = features.shape[0]
    codes, names = section_codes(sections, n)
    neighbors = np.asarray(neighbors, dtype=np.int64)
    padding = neighbors < 0
    neighbors = np.where(padding, np.arange(n)[:, None], neighbors)
    labels = np.full(n, UNLABELLED, dtype=np.int64) if labels is None else np.asarray(labels, np.int64)
    inputs = SpotInputs(
        features=features,
        gene_stats=section_stats(features, codes, len(names), scaling),
        codes=codes,
        section_names=names,
        neighbors=neighbors,
        padding=padding,
        labels=labels,
        coordinates=None if coordinates is None else np.asarray(coordinates, dtype=np.float64)[:, :2],
        library=library,
    )
    if image is not None:
        image = np.asarray(image, dtype=np.float32)
        inputs.has_image = np.isfinite(image).all(axis=1)
        inputs.image = image
        inputs.image_stats = section_stats(
            np.nan_to_num(image), codes, len(names), scaling, rows=inputs.has_image
        )
    return inputs


def locality_order(coordinates: np.ndarray, codes: np.ndarray, bits: int = 16) -> np.ndarray:
    """A permutation that visits spots section by section along a Z-order (Morton) curve.

    Consecutive spots in this order are close in space, so a chunk of them shares most neighbours and
    the distinct spots of a chunk's neighbourhoods are little more than the chunk itself.
    """
    xy = np.asarray(coordinates, dtype=np.float64)[:, :2]
    lo, hi = xy.min(axis=0), xy.max(axis=0)
    grid = ((xy - lo) / np.where(hi > lo, hi - lo, 1.0) * (2**bits - 1)).astype(np.uint64)
    morton = np.zeros(len(xy), dtype=np.uint64)
    for bit in range(bits):
        for axis in (0, 1):
            morton |= ((grid[:, axis] >> np.uint64(bit)) & np.uint64(1)) << np.uint64(2 * bit + axis)
    return np.lexsort((morton, codes))
