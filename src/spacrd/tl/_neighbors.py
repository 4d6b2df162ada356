"""Spatial neighbour sets of spots within their own section."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.spatial import cKDTree


def section_neighbors(
    coordinates: np.ndarray, sections: np.ndarray | pd.Series | None, n_neighbors: int
) -> tuple[np.ndarray, np.ndarray]:
    """Indices of each spot's ``n_neighbors`` nearest spots in the same section, the spot itself first.

    Parameters
    ----------
    coordinates
        ``(n, d)`` spot positions: centres ``(n, 2)`` in any unit shared within a section (e.g.
        full-resolution pixels), or any embedding, as :func:`spacrd.tl.expression_neighbors` uses.
    sections
        ``(n,)`` section label per spot; ``None`` treats all spots as one section.
    n_neighbors
        Neighbourhood size ``k`` including the spot itself.

    Returns
    -------
    indices
        ``(n, k)`` int64 row indices into ``coordinates``; column 0 is the spot itself.
    padding
        ``(n, k)`` bool, true for slots that had to be padded (with the spot itself) because the section
        has fewer than ``k`` spots.

    """
    coordinates = np.asarray(coordinates, dtype=np.float64)
    n = coordinates.shape[0]
    if n_neighbors < 1:
        raise ValueError(f"`n_neighbors` must be at least 1 (the spot itself), got {n_neighbors}.")
    indices = np.repeat(np.arange(n, dtype=np.int64)[:, None], n_neighbors, axis=1)
    padding = np.zeros((n, n_neighbors), dtype=bool)
    codes = np.zeros(n, dtype=np.int64) if sections is None else pd.factorize(np.asarray(sections))[0]
    for code in np.unique(codes):
        rows = np.flatnonzero(codes == code)
        k = min(n_neighbors, rows.size)
        _, local = cKDTree(coordinates[rows]).query(coordinates[rows], k=k)
        local = np.asarray(local).reshape(rows.size, k)
        # With duplicated coordinates the query may list a twin before the spot itself; put self first.
        wrong = np.flatnonzero(local[:, 0] != np.arange(rows.size))
        for i in wrong:
            others = local[i][local[i] != i][: k - 1]
            local[i] = np.concatenate([[i], others, np.full(k - 1 - others.size, i)])
        indices[rows, :k] = rows[local]
        padding[rows, k:] = True
    return indices, padding


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
