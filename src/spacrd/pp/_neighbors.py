"""Fixed-k neighbour sets of spots within their own section: the spatial graph SpaCRD attends over."""

from __future__ import annotations

import hashlib
import logging
import warnings

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy.spatial import cKDTree

from spacrd._constants import DEFAULT_N_NEIGHBORS, OBSM_KEYS
from spacrd._validation import check_coordinates, check_n_neighbors, check_obs_key, check_sections

logger = logging.getLogger(__name__)

#: Nearest neighbours in embeddings of more than three dimensions (expression PCs): exact k-d tree search
#: up to this many spots per section, and an inverted-file index (:class:`faiss.IndexIVFFlat`) above: no
#: compilation, and near-linear in spots (k-d trees slow down sharply in ten dimensions). Spatial
#: coordinates (2-D) are always searched exactly.
EXACT_KNN_MAX_SPOTS = 50_000
#: Cells of the inverted-file index per square root of the spots, ...
IVF_CELLS_PER_SQRT_SPOTS = 4
#: ... the cells searched per spot (95 % of the true 10 neighbours on ten expression PCs of a synthetic
#: 1,000,000-spot section, ``benchmarks/bench_neighbors.py``), ...
IVF_PROBES = 8
#: ... and the spots per cell its k-means centres are trained on.
IVF_TRAINING_SPOTS_PER_CELL = 40


def section_neighbors(
    coordinates: np.ndarray,
    sections: np.ndarray | pd.Series | None,
    n_neighbors: int,
    *,
    random_state: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Indices of each spot's ``n_neighbors`` nearest spots in the same section, the spot itself first.

    Parameters
    ----------
    coordinates
        ``(n, d)`` spot positions: centres ``(n, 2)`` in any unit shared within a section (e.g.
        full-resolution pixels), or any embedding, as the expression neighbour graph of ``predict`` uses.
    sections
        ``(n,)`` section label per spot; ``None`` treats all spots as one section.
    n_neighbors
        Neighbourhood size ``k`` including the spot itself.
    random_state
        Seed of the approximate search (its k-means centres), used only for sections of more than
        50,000 spots in more than three dimensions; everything else is an exact k-d tree search.

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
    n_neighbors = check_n_neighbors(n_neighbors)  # before n × k indices are allocated
    if sections is not None:
        check_sections(sections, "The section labels")
    indices = np.repeat(np.arange(n, dtype=np.int64)[:, None], n_neighbors, axis=1)
    padding = np.zeros((n, n_neighbors), dtype=bool)
    codes = np.zeros(n, dtype=np.int64) if sections is None else pd.factorize(np.asarray(sections))[0]
    for code in np.unique(codes):
        rows = np.flatnonzero(codes == code)
        k = min(n_neighbors, rows.size)
        points = coordinates[rows]
        points = points - points.min(axis=0)  # offsets (stage coordinates) cost no precision in distances
        local = _knn(points, k, random_state)
        indices[rows, :k] = rows[_self_first(local)]
        padding[rows, k:] = True
    return indices, padding


def check_spread(
    coordinates: np.ndarray, sections: np.ndarray | pd.Series | None, n_neighbors: int, where: str
) -> None:
    """Refuse a section of more than ``n_neighbors`` spots that all share one position.

    Which ``k`` of them would be each spot's neighbours is then arbitrary. A section of at most ``k``
    spots is fine anywhere: all its spots are neighbours of each other.
    """
    codes, names = (
        (np.zeros(len(coordinates), dtype=np.int64), ["all spots"])
        if sections is None
        else pd.factorize(np.asarray(sections))
    )
    for code in np.unique(codes):
        points = coordinates[codes == code]
        if len(points) > n_neighbors and np.ptp(points, axis=0).max() == 0:
            raise ValueError(
                f"All {len(points)} spots of section {str(names[code])!r} lie at one position in {where} "
                f"({points[0, 0]:g}, {points[0, 1]:g}); which {n_neighbors} of them are each spot's neighbours "
                "would be arbitrary. Pass each "
                "spot's own centre, or the column that tells the sections apart."
            )


def _knn(points: np.ndarray, k: int, random_state: int) -> np.ndarray:
    """``(n, k)`` nearest rows of ``points`` to each row (itself normally first)."""
    n = points.shape[0]
    if points.shape[1] > 3 and n > EXACT_KNN_MAX_SPOTS:
        return _ivf_knn(points, k, random_state)
    _, local = cKDTree(points).query(points, k=k, workers=-1)
    return np.asarray(local, dtype=np.int64).reshape(n, k)


def _ivf_knn(
    points: np.ndarray,
    k: int,
    random_state: int,
    *,
    cells_per_sqrt_spots: float = IVF_CELLS_PER_SQRT_SPOTS,
    probes: int = IVF_PROBES,
) -> np.ndarray:
    """Approximate ``(n, k)`` nearest rows with an inverted-file index over k-means cells (faiss).

    ``cells_per_sqrt_spots`` and ``probes`` are the index's size and the cells searched per spot
    (``benchmarks/bench_neighbors.py`` measures other choices). Rows whose searched cells held fewer
    than ``k`` spots (faiss pads with ``-1``) get an exact k-d tree query instead, so every returned
    index is a real neighbour.
    """
    import faiss

    x = np.ascontiguousarray(points, dtype=np.float32)
    n, d = x.shape
    n_cells = max(1, int(cells_per_sqrt_spots * np.sqrt(n)))
    index = faiss.IndexIVFFlat(faiss.IndexFlatL2(d), d, n_cells)
    index.cp.seed = random_state
    rng = np.random.default_rng(random_state)
    sample = rng.choice(n, size=min(n, IVF_TRAINING_SPOTS_PER_CELL * n_cells), replace=False)
    index.train(x[np.sort(sample)])
    index.add(x)
    index.nprobe = probes
    _, local = index.search(x, k)
    short = np.flatnonzero((local < 0).any(axis=1))
    if short.size:
        _, local[short] = cKDTree(x).query(x[short], k=k, workers=-1)
    return np.asarray(local, dtype=np.int64)


def _self_first(local: np.ndarray) -> np.ndarray:
    """Put each row's own index in column 0 (duplicated positions may list a twin first)."""
    n, k = local.shape
    own = np.arange(n)
    for i in np.flatnonzero(local[:, 0] != own):
        others = local[i][local[i] != i][: k - 1]
        local[i] = np.concatenate([[i], others, np.full(k - 1 - others.size, i)])
    return local


def obs_fingerprint(adata: AnnData) -> str:
    """A short hash of the spot names and their order: it changes when spots are removed or reordered."""
    hashed = pd.util.hash_pandas_object(pd.Series(adata.obs_names.to_numpy()), index=False).to_numpy()
    return hashlib.sha1(hashed.tobytes()).hexdigest()[:16]


def spatial_neighbors(
    adata: AnnData,
    n_neighbors: int = DEFAULT_N_NEIGHBORS,
    *,
    library_key: str | None = None,
    spatial_key: str = OBSM_KEYS.SPATIAL,
    key_added: str = OBSM_KEYS.NEIGHBORS,
    copy: bool = False,
) -> AnnData | None:
    """Each spot's ``n_neighbors`` nearest spots in its own section, itself first: SpaCRD's neighbourhoods.

    Unlike :func:`squidpy.gr.spatial_neighbors`, which builds a sparse graph of any degree, every spot
    gets exactly ``k`` neighbours (the model reads a ``(k, d)`` token set per spot). Sections never
    mix: a spot's neighbours are found among the spots of its own ``library_key`` value, by an exact
    k-d tree search on ``obsm[spatial_key]``.

    Parameters
    ----------
    adata
        AnnData with spot centres in ``obsm[spatial_key]`` (one unit within each section, e.g. pixels).
    n_neighbors
        ``k``, the spot itself included: 7 is a spot and its ring on the hexagonal grids of legacy ST
        and Visium; 9 suits square Visium HD bins; 10–15 suit Xenium cells.
    library_key
        ``obs`` column with each spot's section; ``None``: all spots are one section.
    spatial_key
        ``obsm`` key of the coordinates.
    key_added
        Key of the results in ``obsm`` and ``uns``.
    copy
        Return a copy with the results instead of writing into ``adata``.

    Returns
    -------
    ``None``, or the copy if ``copy=True``. Writes

    ``obsm[key_added]``
        ``(n_obs, k)`` int64 row indices of each spot's neighbours, column 0 the spot itself, ``-1``
        for the slots of sections with fewer than ``k`` spots.
    ``uns[key_added]``
        ``{"n_neighbors", "library_key", "spatial_key", "n_obs", "obs_fingerprint"}``: the parameters,
        and what identifies the spots the indices refer to (so that a subset or reordered AnnData
        is caught instead of read with indices into another row order).

    """
    n_neighbors = check_n_neighbors(n_neighbors)
    coordinates = check_coordinates(adata, spatial_key)
    sections = None
    if library_key is not None:
        check_obs_key(adata, library_key, "library_key")
        sections = adata.obs[library_key].to_numpy()
    check_spread(coordinates, sections, n_neighbors, f"obsm[{spatial_key!r}]")
    indices, padding = section_neighbors(coordinates, sections, n_neighbors)
    indices[padding] = -1
    target = adata.copy() if copy else adata
    target.obsm[key_added] = indices
    target.uns[key_added] = {
        "n_neighbors": int(n_neighbors),
        "library_key": library_key,
        "spatial_key": spatial_key,
        "n_obs": int(adata.n_obs),
        "obs_fingerprint": obs_fingerprint(adata),
    }
    return target if copy else None


def stored_neighbors(adata: AnnData, key: str) -> np.ndarray | None:
    """The graph :func:`spatial_neighbors` stored under ``key``, or ``None`` if there is none.

    Raises
    ------
    ValueError
        If the graph does not belong to ``adata``'s current spots (spots were removed, added or
        reordered since it was computed) or holds indices outside ``[-1, n_obs)``.

    """
    if key not in adata.obsm:
        return None
    indices = np.asarray(adata.obsm[key])
    info = adata.uns.get(key, {})
    stale = (
        indices.ndim != 2
        or not np.issubdtype(indices.dtype, np.integer)
        or info.get("n_obs", adata.n_obs) != adata.n_obs
        or ("obs_fingerprint" in info and info["obs_fingerprint"] != obs_fingerprint(adata))
        or (indices.size and (indices.min() < -1 or indices.max() >= adata.n_obs))
    )
    if stale:
        raise ValueError(
            f"obsm[{key!r}] does not belong to this AnnData's spots: they were removed, added or reordered "
            f"since it was computed. Recompute it with spacrd.pp.spatial_neighbors(adata, key_added={key!r}) "
            "and re-run setup_anndata."
        )
    return indices


def ensure_spatial_neighbors(
    adata: AnnData, key: str, n_neighbors: int | None, batch_key: str | None, spatial_key: str
) -> int:
    """``k`` of the spatial graph in ``obsm[key]``, computed with :func:`spatial_neighbors` first if absent (set-up)."""
    graph = stored_neighbors(adata, key)
    if graph is None:
        n_neighbors = DEFAULT_N_NEIGHBORS if n_neighbors is None else int(n_neighbors)
        spatial_neighbors(adata, n_neighbors, library_key=batch_key, spatial_key=spatial_key, key_added=key)
        return n_neighbors
    info = adata.uns.get(key, {})
    if n_neighbors is not None and graph.shape[1] != n_neighbors:
        raise ValueError(
            f"obsm[{key!r}] holds {graph.shape[1]} neighbours per spot but `n_neighbors={n_neighbors}`; recompute it "
            f"with spacrd.pp.spatial_neighbors(adata, {n_neighbors}, library_key=...) or leave `n_neighbors` out."
        )
    if info.get("library_key", batch_key) != batch_key:
        warnings.warn(
            f"obsm[{key!r}] was computed per obs[{info.get('library_key')!r}] sections, not per `batch_key={batch_key!r}`.",
            UserWarning,
            stacklevel=4,
        )
    return int(graph.shape[1])
