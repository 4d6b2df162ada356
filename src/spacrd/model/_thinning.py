"""Depth augmentation: training minibatches whose counts are binomially thinned, without copies of the source.

Keeping each UMI with probability ``r`` is what a platform with ``r`` times the capture efficiency
would have measured of the same tissue. Per minibatch, :class:`DepthThinning` draws one rate from a
fixed grid, thins the raw counts of the minibatch's spots, log-normalises them with their thinned
library sizes and scales them with per-section statistics of the source thinned at the same rate,
as :func:`~spacrd.model._inputs.section_stats` computes them for a target of that depth. Only the raw
counts of the feature genes (the sparsity of the features) and one small table of statistics per
rate are kept, so a large source keeps its cost.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import sparse

from spacrd._matrix import row_chunks
from spacrd._validation import check_number

from ._inputs import TARGET_SUM, SectionScaling, SectionStats, section_stats

#: Rates of the grid, log-spaced from the lowest rate to 1 (full depth, included).
N_RATES = 7
#: ``train(depth_augmentation=...)``'s default lowest rate: a thirtieth of the source's depth, about a
#: Visium HD 8 µm bin's or a Xenium cell's UMIs against a legacy-ST spot's. Chosen by nested
#: selection on the training sections of ``benchmarks/platform_shift.py`` (docs: benchmark page).
DEFAULT_DEPTH_AUGMENTATION = 0.03
#: Per-section statistics of a thinned source are estimated on at most this many spots per section.
MAX_STATS_SPOTS = 20_000


def check_thinning(value: float | None) -> float | None:
    """``train(depth_augmentation=...)``: ``None`` (off) or the lowest rate, in ``(0, 1)``."""
    if value is None:
        return None
    check_number("depth_augmentation", value, low=0, high=1, low_open=True, high_open=True)
    return float(value)


@dataclass
class DepthThinning:
    """Thinned, preprocessed expression of minibatches.

    Attributes
    ----------
    counts
        ``(n, G)`` float32 CSR raw counts of the model's feature genes.
    rest
        ``(n,)`` int64 counts of the rest of the gene universe (library size minus the feature genes').
    codes
        ``(n,)`` int64 section code of each spot.
    rates
        ``(m,)`` float64 grid of keep probabilities, the last one 1.
    stats
        ``m`` per-section scalings, one per rate.
    rng
        Draws the rate and the thinning of every minibatch.

    """

    counts: sparse.csr_matrix
    rest: np.ndarray
    codes: np.ndarray
    rates: np.ndarray
    stats: list[SectionStats]
    rng: np.random.Generator

    @classmethod
    def build(
        cls,
        counts,
        selector: sparse.csr_matrix,
        in_universe: np.ndarray,
        codes: np.ndarray,
        n_sections: int,
        scaling: SectionScaling,
        lowest_rate: float,
        seed: int,
    ) -> DepthThinning:
        """Raw counts, the rate grid and per-section statistics at every rate, from the source counts.

        ``counts``, ``selector`` and ``in_universe`` are as for
        :func:`~spacrd.model._inputs.log_normalised_features`.
        """
        blocks, rests = [], []
        for _, block in row_chunks(counts):
            selected = sparse.csr_matrix(block @ selector, dtype=np.float32)
            library = np.asarray(block @ in_universe, dtype=np.float64).ravel()
            rests.append(np.maximum(np.rint(library - np.asarray(selected.sum(axis=1)).ravel()), 0))
            blocks.append(selected)
        selected = blocks[0] if len(blocks) == 1 else sparse.vstack(blocks, format="csr")
        rest = np.concatenate(rests).astype(np.int64)
        rng = np.random.default_rng(seed)
        rates = np.geomspace(lowest_rate, 1.0, N_RATES)
        sample = _stats_sample(codes, n_sections, rng)
        stats = []
        for rate in rates:
            values = _log_normalised(*_thinned(selected[sample], rest[sample], rate, rng))
            stats.append(section_stats(values, codes[sample], n_sections, scaling))
        return cls(selected, rest, np.asarray(codes, dtype=np.int64), rates, stats, rng)

    def genes(self, rows: np.ndarray) -> np.ndarray:
        """Dense ``(len(rows), G)`` float32 expression of ``rows``, thinned at one rate drawn for the batch."""
        index = int(self.rng.integers(len(self.rates)))
        values = _log_normalised(*_thinned(self.counts[rows], self.rest[rows], self.rates[index], self.rng))
        return self.stats[index].apply(values.toarray(), self.codes[rows])


def _stats_sample(codes: np.ndarray, n_sections: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted rows: every spot of a small section, :data:`MAX_STATS_SPOTS` drawn from a large one."""
    rows = []
    for code in range(n_sections):
        members = np.flatnonzero(codes == code)
        if members.size > MAX_STATS_SPOTS:
            members = rng.choice(members, MAX_STATS_SPOTS, replace=False)
        rows.append(members)
    return np.sort(np.concatenate(rows))


def _thinned(
    counts: sparse.csr_matrix, rest: np.ndarray, rate: float, rng: np.random.Generator
) -> tuple[sparse.csr_matrix, np.ndarray]:
    """Counts and library sizes after keeping each UMI with probability ``rate``."""
    if rate >= 1.0:
        return counts, np.asarray(counts.sum(axis=1)).ravel() + rest
    kept = counts.copy()
    kept.data = _binomial(kept.data, rate, rng)
    library = np.asarray(kept.sum(axis=1), dtype=np.float64).ravel() + rng.binomial(rest, rate)
    kept.eliminate_zeros()
    return kept, library


def _binomial(counts: np.ndarray, rate: float, rng: np.random.Generator) -> np.ndarray:
    """float32 ``Binomial(counts, rate)`` draws; single counts (most entries of sparse data) as one uniform each."""
    counts = np.rint(counts).astype(np.int64)
    kept = np.empty(counts.shape, dtype=np.float32)
    single = counts == 1
    kept[single] = rng.random(int(single.sum())) < rate
    kept[~single] = rng.binomial(counts[~single], rate)
    return kept


def _log_normalised(counts: sparse.csr_matrix, library: np.ndarray) -> sparse.csr_matrix:
    """``log1p(counts / library * 1e4)`` row by row, as the model's features are computed."""
    factor = np.divide(TARGET_SUM, library, out=np.zeros_like(library, dtype=np.float64), where=library > 0)
    values = counts.copy()
    values.data = np.log1p(values.data * np.repeat(factor, np.diff(values.indptr))).astype(np.float32)
    return values
