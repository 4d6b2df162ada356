"""Keep ``uns["spatial"]`` in step with the spots after subsetting an AnnData."""

from __future__ import annotations

from collections.abc import Mapping

import pandas as pd
from anndata import AnnData

from spacrd._constants import OBS_KEYS, UNS_KEYS


def remove_unused_libraries(
    adata: AnnData,
    library_key: str = OBS_KEYS.SECTION,
    *,
    spatial_key: str = UNS_KEYS.SPATIAL,
    copy: bool = False,
) -> AnnData | None:
    """Drop the ``uns[spatial_key]`` entries, and the ``obs[library_key]`` categories, of libraries without spots.

    Subsetting an AnnData (``adata[adata.obs["section"].isin(["A1", "C2"])].copy()``) keeps all of
    ``uns["spatial"]``. :func:`squidpy.pl.spatial_scatter` draws one panel per entry of
    ``uns["spatial"]``, so it then fails on the sections that were left out (no spots, or no image), and
    :func:`scanpy.pl.spatial` asks for ``library_id`` even when one section is left. After this call both
    see only the sections that still have spots.

    Parameters
    ----------
    adata
        AnnData in the scanpy/squidpy Visium layout (as from :func:`spacrd.datasets.her2st`). Reads
        ``obs[library_key]``, whose values key ``uns[spatial_key]``.
    library_key
        Column of ``adata.obs`` naming each spot's library (section).
    spatial_key
        Key of the per-library entries in ``adata.uns``.
    copy
        Return a modified copy instead of changing ``adata`` in place.

    Returns
    -------
    ``None``, or the modified copy if ``copy=True``. Writes ``uns[spatial_key]`` (the same entries, in
    the same order, less those of libraries without spots) and, if ``obs[library_key]`` is categorical,
    removes its unused categories. Entries are kept, not checked, for libraries that have spots.

    Raises
    ------
    KeyError
        ``obs[library_key]`` or ``uns[spatial_key]`` is missing.

    Examples
    --------
    >>> import spacrd
    >>> adata = spacrd.datasets.her2st_ctr()
    >>> sub = adata[adata.obs["section"].isin(["A1", "C1"])].copy()
    >>> len(sub.uns["spatial"])
    6
    >>> spacrd.datasets.remove_unused_libraries(sub)
    >>> list(sub.uns["spatial"])
    ['A1', 'C1']

    """
    if library_key not in adata.obs:
        raise KeyError(
            f"adata.obs has no column {library_key!r}; pass library_key= naming the column whose values key "
            f"adata.uns[{spatial_key!r}]."
        )
    if spatial_key not in adata.uns or not isinstance(adata.uns[spatial_key], Mapping):
        raise KeyError(f"adata.uns[{spatial_key!r}] is missing: there are no libraries to remove.")
    if copy:
        adata = adata.copy()
    values = adata.obs[library_key]
    used = set(values.astype(str).unique())
    spatial = adata.uns[spatial_key]
    adata.uns[spatial_key] = {lib: entry for lib, entry in spatial.items() if str(lib) in used}
    if isinstance(values.dtype, pd.CategoricalDtype):
        adata.obs[library_key] = values.cat.remove_unused_categories()
    return adata if copy else None
