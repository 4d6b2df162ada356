"""Averaging per-spot values over each spot's neighbourhood, as a sparse matrix product."""

from __future__ import annotations

import numpy as np
from scipy import sparse


def neighbor_mean_operator(indices: np.ndarray, padding: np.ndarray | None = None) -> sparse.csr_array:
    """The row-stochastic ``(n, n)`` matrix ``W`` whose product ``W @ v`` averages ``v`` over neighbourhoods.

    Parameters
    ----------
    indices
        ``(n, k)`` neighbour indices (a spot's own index may be among them, repeats count twice).
    padding
        ``(n, k)`` bool, slots to leave out of the mean. ``None``: every slot counts.

    Returns
    -------
    ``(n, n)`` float64 CSR matrix with ``k`` stored entries a row; a row whose slots are all padding
    has ``nan`` weights, so its mean is ``nan``.

    """
    indices = np.asarray(indices)
    n, k = indices.shape
    weights = np.ones((n, k)) if padding is None else (~np.asarray(padding, dtype=bool)).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        weights /= weights.sum(axis=1, keepdims=True)
    return sparse.csr_array((weights.ravel(), indices.ravel(), np.arange(0, n * k + 1, k)), shape=(n, n))


def smooth_over_neighbors(
    values: np.ndarray, indices: np.ndarray, padding: np.ndarray | None = None
) -> np.ndarray:
    """Mean of ``values`` over each spot's neighbourhood.

    Parameters
    ----------
    values
        ``(n,)`` or ``(n, d)`` per-spot values (e.g. logits).
    indices
        ``(n, k)`` neighbour indices from :func:`spacrd.pp.section_neighbors`.
    padding
        ``(n, k)`` bool, slots to leave out of the mean.

    Returns
    -------
    Array of the same shape and dtype as ``values``.

    """
    values = np.asarray(values)
    smoothed = neighbor_mean_operator(indices, padding) @ values.astype(np.float64, copy=False)
    return smoothed.astype(values.dtype, copy=False)
