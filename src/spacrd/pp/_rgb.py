"""Conversion of image blocks of any dtype and 1, 3 or 4 channels to uint8 RGB."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np


def is_dask(array: Any) -> bool:
    """Whether ``array`` is a dask array (checked by module, so dask is not imported for numpy input)."""
    return type(array).__module__.startswith("dask")


def array_extrema(array: Any) -> tuple[float, float, bool]:
    """``(min, max, has_nan)`` of a numpy or dask array, ignoring NaN."""
    if is_dask(array):
        import dask
        import dask.array as da

        lo, hi, has_nan = dask.compute(da.nanmin(array), da.nanmax(array), da.isnan(array).any())
    elif np.issubdtype(array.dtype, np.floating):
        lo, hi, has_nan = np.nanmin(array), np.nanmax(array), bool(np.isnan(array).any())
    else:
        lo, hi, has_nan = array.min(), array.max(), False
    return float(lo), float(hi), bool(has_nan)


def chunkwise_extrema(read: Callable[[list], list], groups: Iterable[list]) -> tuple[float, float, bool]:
    """:func:`array_extrema` over an image read group by group of regions, one group in memory at a time."""
    lo, hi, has_nan = np.inf, -np.inf, False
    for regions in groups:
        for block in read(regions):
            block_lo, block_hi, block_nan = array_extrema(np.asarray(block))
            lo, hi, has_nan = min(lo, block_lo), max(hi, block_hi), has_nan or block_nan
    return float(lo), float(hi), has_nan


class RGBConverter:
    """Map blocks of one image to uint8 RGB: scale the value range to 0-255 and fix the channels.

    uint8 is used as is. Floats are read as 0-1 when the image maximum is at most 1 and as 0-255 when it
    is at most 255. Other integer types are read as 8-bit when the maximum is at most 255, otherwise as
    the smallest of 10, 12, 14, 16, ... bits that holds the maximum (with a warning, since that is a
    guess). ``value_range`` overrides all of this. One channel is repeated to three (with a warning);
    a fourth (alpha) channel is dropped. ``extrema`` (``() -> (min, max[, has_nan])``) is called only
    when the range must be inferred, since for a large image it reads every pixel.
    """

    def __init__(self, dtype, n_channels: int, value_range, name: str, extrema: Callable[[], tuple]):
        dtype = np.dtype(dtype)
        if n_channels not in (1, 3, 4):
            raise ValueError(f"{name} has {n_channels} channels; expected 1 (gray), 3 (RGB) or 4 (RGBA).")
        if n_channels == 1:
            warnings.warn(f"{name} is grayscale; its channel is repeated to RGB.", UserWarning, stacklevel=6)
        self._n_channels = n_channels
        self._range: tuple[float, float] | None
        if dtype == np.bool_ or not (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)):
            raise TypeError(f"{name} has dtype {dtype}; expected uint8, another integer type or float.")
        if value_range is not None:
            lo, hi = (float(v) for v in value_range)
            if not hi > lo:
                raise ValueError(f"value_range must be (low, high) with high > low, got {value_range}.")
            self._range = (lo, hi)
        elif dtype == np.uint8:
            self._range = None
        else:
            self._range = self._infer_range(dtype, extrema(), name)

    @staticmethod
    def _infer_range(dtype, extrema, name) -> tuple[float, float]:
        lo, hi, *rest = extrema
        if rest and rest[0]:
            raise ValueError(f"{name} contains NaN pixels; fill them (e.g. with 1.0 for glass) first.")
        if lo < 0:
            raise ValueError(
                f"{name} has negative values (min {lo}); pass value_range=(low, high) to map it to 0-255."
            )
        if np.issubdtype(dtype, np.floating):
            if hi <= 1:
                return (0.0, 1.0)
            if hi <= 255:
                return (0.0, 255.0)
            raise ValueError(
                f"{name} is {dtype} with values up to {hi}; float images must be in 0-1 or 0-255, or pass "
                "value_range=(low, high)."
            )
        if hi <= 255:
            return (0.0, 255.0)
        bits = next(b for b in (10, 12, 14, 16, 24, 32, 64) if hi < 2**b)
        warnings.warn(
            f"{name} is {dtype} with maximum {hi:g}; reading it as {bits}-bit (0-{2**bits - 1}). Pass "
            "value_range=(low, high) to set the range yourself.",
            UserWarning,
            stacklevel=6,
        )
        return (0.0, float(2**bits - 1))

    def __call__(self, block: np.ndarray) -> np.ndarray:
        """``(h, w[, c])`` block -> ``(h, w, 3)`` uint8."""
        if block.ndim == 2:
            block = block[..., None]
        if self._n_channels == 1:
            block = np.repeat(block[..., :1], 3, axis=-1)
        elif self._n_channels == 4:
            block = block[..., :3]
        if self._range is None:
            return np.ascontiguousarray(block)
        lo, hi = self._range
        scaled = (block.astype(np.float32) - lo) * np.float32(255.0 / (hi - lo))
        return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
