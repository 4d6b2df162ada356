"""Checks of user input at the model's boundary, with errors that say what to fix."""

from __future__ import annotations

import warnings
from collections.abc import Hashable
from typing import Any

import numpy as np
from anndata import AnnData

from spacrd._matrix import row_chunks

#: The largest count the model's float32 arithmetic can hold.
FLOAT32_MAX = float(np.finfo(np.float32).max)
#: Largest neighbourhood size ``k``: the model attends over ``k`` tokens per spot and the graph holds
#: ``n_spots × k`` indices, so a larger ``k`` only allocates (the platforms page suggests 7 to 15).
MAX_N_NEIGHBORS = 1024
#: Largest coordinate magnitude: squared distances between larger coordinates overflow float64.
MAX_COORDINATE = 1e150


def check_counts(adata: AnnData, layer: str | None) -> Any:
    """Return the raw-count matrix ``(n_spots, n_genes)`` after checking it, without changing it.

    The matrix may be in memory (sparse or dense), backed on disk (``read_h5ad(..., backed="r")``) or
    lazily read (dask); it is scanned in row chunks, never loaded whole. Raises on an empty AnnData, a
    missing layer, non-numeric, negative or non-finite values and values beyond float32 (which would
    overflow inside the model). Warns when values are not integers (normalised or log-transformed data
    passed where raw counts are expected) and when spots have no counts.
    """
    if adata.n_obs == 0 or adata.n_vars == 0:
        raise ValueError(f"The AnnData is empty ({adata.n_obs} spots × {adata.n_vars} genes).")
    if layer is not None and layer not in adata.layers:
        raise KeyError(
            f"Layer {layer!r} not found; available layers: {list(adata.layers)}. Pass `layer=None` to use "
            "`adata.X`."
        )
    matrix = adata.X if layer is None else adata.layers[layer]
    where = "adata.X" if layer is None else f"adata.layers[{layer!r}]"
    if matrix is None:
        raise ValueError(f"{where} is empty; store raw counts there.")
    dtype = np.dtype(matrix.dtype)
    if not np.issubdtype(dtype, np.number) or np.issubdtype(dtype, np.complexfloating):
        raise TypeError(f"{where} has dtype {dtype}; raw counts must be numeric.")
    if dtype == np.float16:
        raise TypeError(
            f"{where} has dtype float16, which sparse matrices (scipy) cannot hold and which rounds counts "
            f"above 2,048; store the counts as float32 or integers, e.g. `{where} = {where}.astype('float32')`."
        )
    non_integer, empty_spots, largest = False, 0, 0.0
    for _, block in row_chunks(matrix):
        values = block.data
        if not np.isfinite(values).all():
            raise ValueError(f"{where} contains NaN or infinite values; raw counts must be finite.")
        if values.size and values.min() < 0:
            raise ValueError(
                f"{where} contains negative values; SpaCRD needs raw counts (it normalises internally). Pass "
                "the layer holding raw counts with `layer=`."
            )
        if values.size:
            largest = max(largest, float(values.max()))
        non_integer = non_integer or bool(
            np.issubdtype(values.dtype, np.floating)
            and values.size
            and not np.array_equal(np.rint(values), values)
        )
        empty_spots += int((np.asarray(block.sum(axis=1)).ravel() == 0).sum())
    if largest > FLOAT32_MAX:
        raise ValueError(
            f"{where} holds a count of {largest:.3g}, beyond float32 ({FLOAT32_MAX:.3g}); these are not raw "
            "counts (or are corrupted). Pass raw UMI counts."
        )
    if non_integer:
        warnings.warn(
            f"{where} contains non-integer values; SpaCRD expects raw counts and normalises them itself. "
            "If this is normalised or log-transformed data, pass the raw counts with `layer=`.",
            UserWarning,
            stacklevel=3,
        )
    if empty_spots:
        warnings.warn(
            f"{empty_spots} spots have no counts; their expression features are all zero.",
            UserWarning,
            stacklevel=3,
        )
    return matrix


def check_not_view(adata: AnnData) -> None:
    """Refuse a view: registering writes keys into ``adata``, which would silently turn it into a copy."""
    if adata.is_view:
        raise ValueError(
            "adata is a view of another AnnData (e.g. `adata[mask]`). setup_anndata writes registry keys into "
            "it, which would turn the view into a copy that the parent never sees. Make the copy explicit: "
            "`adata = adata[mask].copy()`."
        )


def check_unique_var_names(adata: AnnData) -> None:
    """Refuse duplicated gene names, which make aligning genes by name ambiguous."""
    if adata.var_names.has_duplicates:
        dups = adata.var_names[adata.var_names.duplicated()].unique()
        raise ValueError(
            f"adata has {len(dups)} duplicated gene names (e.g. {dups[:5].tolist()}); genes are matched by name "
            "between training and prediction. Make them unique with `adata.var_names_make_unique()` or "
            "aggregate the duplicated genes first."
        )


def check_coordinates(adata: AnnData, spatial_key: str) -> np.ndarray:
    """Return finite ``(n_spots, 2)`` float coordinates from ``obsm[spatial_key]``."""
    if spatial_key not in adata.obsm:
        raise KeyError(
            f"obsm[{spatial_key!r}] not found; SpaCRD needs spot coordinates to build neighbourhoods. "
            f"Available obsm keys: {list(adata.obsm)}. Pass `spatial_key=`."
        )
    coordinates = np.asarray(adata.obsm[spatial_key])
    if coordinates.ndim != 2 or coordinates.shape[1] < 2:
        raise ValueError(
            f"obsm[{spatial_key!r}] must be (n_spots, 2) coordinates, got shape {coordinates.shape}."
        )
    if not np.issubdtype(coordinates.dtype, np.number) or np.issubdtype(
        coordinates.dtype, np.complexfloating
    ):
        raise TypeError(
            f"obsm[{spatial_key!r}] has dtype {coordinates.dtype}; coordinates must be real numbers."
        )
    coordinates = coordinates[:, :2].astype(np.float64)
    bad = ~np.isfinite(coordinates).all(axis=1)
    if bad.any():
        raise ValueError(
            f"obsm[{spatial_key!r}] has {int(bad.sum())} spots with NaN or infinite coordinates (e.g. "
            f"{adata.obs_names[bad][:3].tolist()}); drop them or fill in their positions."
        )
    largest = float(np.abs(coordinates).max(initial=0.0))
    if largest > MAX_COORDINATE:
        raise ValueError(
            f"obsm[{spatial_key!r}] holds coordinates up to {largest:.3g}; distances between them overflow "
            f"(at most {MAX_COORDINATE:.0e}). Rescale them to pixels or µm, e.g. `adata.obsm[{spatial_key!r}] "
            f"/= {10 ** np.floor(np.log10(largest) - 4):.0e}`."
        )
    return coordinates


#: Arguments that name a section column: a missing value there would pool spots into a made-up section.
SECTION_ARGUMENTS = ("batch_key", "library_key", "section_key")


def check_obs_key(adata: AnnData, key: str, argument: str) -> None:
    """Check that ``obs[key]`` exists (named after the argument that asked for it).

    For a section column (:data:`SECTION_ARGUMENTS`) missing values are an error too.
    """
    if not isinstance(key, str):
        raise TypeError(f"`{argument}` must be the name of an obs column, got {key!r}.")
    if key not in adata.obs:
        raise KeyError(
            f"`{argument}={key!r}` is not a column of adata.obs; available: {list(adata.obs.columns)}."
        )
    if argument in SECTION_ARGUMENTS:
        check_sections(adata.obs[key], f"obs[{key!r}]")


def check_sections(sections: Any, where: str) -> None:
    """Refuse missing values in a section column: they would pool those spots into one made-up section."""
    import pandas as pd

    missing = pd.isna(pd.Series(np.asarray(sections, dtype=object)))
    if missing.any():
        raise ValueError(
            f"{where} has missing values; every spot needs its section ({int(missing.sum())} have none). "
            "Fill them in, or drop those spots."
        )


def check_n_neighbors(value: Any, name: str = "n_neighbors") -> int:
    """``value`` as a neighbourhood size ``k`` in ``[1, MAX_N_NEIGHBORS]`` (the spot itself included)."""
    try:
        return int(check_number(name, value, integer=True, low=1, high=MAX_N_NEIGHBORS))
    except (TypeError, ValueError) as err:
        raise type(err)(f"{err} It counts the spot itself (7 suits hexagonal grids).") from None


def check_image_features(adata: AnnData, image_key: str) -> np.ndarray:
    """Return ``obsm[image_key]`` as float32 ``(n_spots, d)``; rows with NaN mark spots without an image."""
    if image_key not in adata.obsm:
        raise KeyError(
            f"obsm[{image_key!r}] not found; compute histology embeddings first with "
            "`spacrd.pp.image_features(adata, key_added=...)`, or pass `image_key=None` for an expression-only model."
        )
    features = np.asarray(adata.obsm[image_key], dtype=np.float32)
    if features.ndim != 2:
        raise ValueError(f"obsm[{image_key!r}] must be a 2-D (n_spots, d) array, got shape {features.shape}.")
    if np.isinf(features).any():
        raise ValueError(f"obsm[{image_key!r}] contains infinite values.")
    partial = np.isnan(features).any(axis=1) & ~np.isnan(features).all(axis=1)
    if partial.any():
        raise ValueError(
            f"{int(partial.sum())} rows of obsm[{image_key!r}] are partly NaN; a spot either has a full embedding "
            "or an all-NaN row (no image)."
        )
    return features


# --------------------------------------------------------------------------------------------------
# arguments of public functions: numbers, ranges, types and choices, with one message form
# --------------------------------------------------------------------------------------------------


def _range_phrase(
    integer: bool, low: float | None, high: float | None, low_open: bool, high_open: bool
) -> str:
    kind = "integer" if integer else "number"
    article = "an" if integer else "a"
    if high is None and low is not None:
        if low == 0 and low_open:
            return f"a positive {kind}"
        if low == 0:
            return f"a non-negative {kind}"
        if integer and low == 1 and not low_open:
            return "a positive integer"
        return f"{article} {kind} {'>' if low_open else '≥'} {low:g}"
    if low is None and high is not None:
        return f"{article} {kind} {'<' if high_open else '≤'} {high:g}"
    if low is None and high is None:
        return f"a finite {kind}"
    left, right = "(" if low_open else "[", ")" if high_open else "]"
    return f"{article} {kind} in {left}{low:g}, {high:g}{right}"


def check_number(
    name: str,
    value: Any,
    *,
    integer: bool = False,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> float | int:
    """``value`` if it is a finite (integer) number within the range, else a :class:`ValueError` or :class:`TypeError`.

    Messages name the argument and the range: "`batch_size` must be a positive integer, got 0".
    Booleans are not numbers here (``True`` is not a batch size).
    """
    phrase = _range_phrase(integer, low, high, low_open, high_open)
    is_number = isinstance(value, int | float | np.integer | np.floating) and not isinstance(
        value, bool | np.bool_
    )
    if not is_number or (integer and not float(value).is_integer()):
        raise TypeError(f"`{name}` must be {phrase}, got {value!r}.")
    if not np.isfinite(value):
        raise ValueError(f"`{name}` must be {phrase}, got {value!r}.")
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (value >= high if high_open else value > high)
    if too_low or too_high:
        raise ValueError(f"`{name}` must be {phrase}, got {value!r}.")
    return int(value) if integer else float(value)


def check_bool(name: str, value: Any) -> bool:
    """``value`` if it is ``True`` or ``False`` (numpy booleans too), else a :class:`TypeError`."""
    if not isinstance(value, bool | np.bool_):
        raise TypeError(f"`{name}` must be True or False, got {value!r}.")
    return bool(value)


def check_choice(name: str, value: Any, choices: tuple) -> Any:
    """``value`` if it is one of ``choices``, else a :class:`ValueError` listing them."""
    if not isinstance(value, Hashable) or value not in choices:
        raise ValueError(f"`{name}` must be one of {', '.join(map(repr, choices))}; got {value!r}.")
    return value


def check_device(accelerator: Any) -> None:
    """Refuse a GPU accelerator on a machine without one before Lightning fails deep inside."""
    import torch

    if (
        isinstance(accelerator, str)
        and accelerator.lower() in ("gpu", "cuda")
        and not torch.cuda.is_available()
    ):
        raise ValueError(
            f"`accelerator={accelerator!r}` but no CUDA GPU is available to torch "
            f"(torch {torch.__version__}, CUDA build: {torch.version.cuda or 'no'}); use accelerator='cpu' or 'auto'."
        )
