"""Averaging per-spot values over each spot's neighbourhood."""

from __future__ import annotations

import numpy as np


def smooth_over_neighbors(
    values: np.ndarray, indices: np.ndarray, padding: np.ndarray | None = None
) -> np.ndarray:
    """Mean of ``values`` over each spot's neighbourhood.

    Parameters
    ----------
    values
        ``(n,)`` or ``(n, d)`` per-spot values (e.g. logits).
    indices
        ``(n, k)`` neighbour indices from :func:`section_neighbors`.
    padding
        ``(n, k)`` bool, slots to leave out of the mean.

    Returns
    -------
    Array of the same shape as ``values``.

    """
    values = np.asarray(values)
    weights = (
        np.ones(indices.shape, dtype=np.float64)
        if padding is None
        else (~np.asarray(padding)).astype(np.float64)
    )
    gathered = values[indices]
    if gathered.ndim == 3:
        weights = weights[..., None]
    smoothed = (gathered * weights).sum(axis=1) / weights.sum(axis=1)
    return smoothed.astype(values.dtype, copy=False)
