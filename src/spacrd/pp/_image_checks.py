"""Checks of images, scale factors and backbone outputs, where a wrong value would give wrong features silently.

A scale factor of 0 (or one for another resolution), an image stored as a list, a backbone that returns
feature maps or NaN: each used to give every spot the same (or no) image features without a word.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np

#: Smallest crop side in pixels: a 1-px crop is one pixel's colour, the same for neighbouring spots.
MIN_CROP_PX = 2
#: Spots spanning less than this share of their image in both directions suggest a scale factor for
#: another resolution (the low-resolution factor applied to the high-resolution image spans a tenth).
MIN_EXTENT_SHARE = 0.125


def scale_number(mapping: Mapping, key: str, where: str) -> float:
    """``mapping[key]`` as a finite positive number; an error naming ``where[key]`` otherwise."""
    value = mapping[key]
    if isinstance(value, bool | np.bool_) or not isinstance(value, int | float | np.integer | np.floating):
        raise TypeError(
            f"{where}[{key!r}] must be a number, got {value!r} ({type(value).__name__}); scale factors and "
            "spot diameters are numbers, as Space Ranger's scalefactors_json.json holds them."
        )
    number = float(value)
    if not np.isfinite(number) or number <= 0:
        raise ValueError(
            f"{where}[{key!r}] must be a positive number, got {value!r}; a scale factor of 0 puts every "
            "spot at the image's corner. Use the factor that maps full-resolution pixels to this image."
        )
    return number


def uns_image(value: Any, where: str) -> Any:
    """An image of ``uns["spatial"]`` as an array (a nested list becomes one), numeric, else a TypeError."""
    if not hasattr(value, "ndim") or not hasattr(value, "dtype"):
        try:
            value = np.asarray(value)
        except (ValueError, TypeError) as err:
            raise TypeError(f"{where} is not an image array ({type(value).__name__}): {err}") from err
    kind = np.dtype(value.dtype).kind
    if kind not in "biuf":
        raise TypeError(
            f"{where} has dtype {value.dtype}; an image is a (height, width[, channels]) array of numbers "
            "(uint8 0-255 or float 0-1)."
        )
    return value


def crop_size(lib: str, diameter: float, scale: float) -> None:
    """Refuse crops below :data:`MIN_CROP_PX`: their features would be one pixel's colour."""
    if round(diameter * scale) < MIN_CROP_PX:
        raise ValueError(
            f"Crops of library {lib!r} would be {diameter * scale:.2g} px wide (spot diameter {diameter:g} × "
            f"scale factor {scale:g}), below {MIN_CROP_PX} px; every spot would get about one pixel's colour. "
            "Check that the scale factor belongs to this image (tissue_hires_scalef for the hires image) "
            "and the spot diameter is in full-resolution pixels, or pass crop_diameter=."
        )


def warn_small_extent(name: str, centres: np.ndarray, width: int, height: int, description: str) -> None:
    """Warn when the spots cover a corner of their image only: the scale factor is likely for another image."""
    if len(centres) < 2 or width < 2 or height < 2:
        return
    span = np.ptp(centres, axis=0)
    if span[0] < MIN_EXTENT_SHARE * width and span[1] < MIN_EXTENT_SHARE * height:
        warnings.warn(
            f"The spots of library {name!r} span {span[0]:.0f} x {span[1]:.0f} px of the {width} x {height} px "
            f"image ({description}), under {MIN_EXTENT_SHARE:.1%} of it each way; the scale factor is likely "
            "that of another resolution (e.g. tissue_lowres_scalef with the hires image).",
            UserWarning,
            stacklevel=4,
        )


def backbone_output(values: Any, n_crops: int, name: str, width: int | None) -> np.ndarray:
    """One float32 row per crop from a backbone, or an error naming what it returned and the fix."""
    array = np.asarray(values, dtype=np.float32)
    if array.ndim == 4 and array.shape[2:] == (1, 1):  # globally pooled feature maps
        array = array[:, :, 0, 0]
    if array.ndim != 2 or array.shape[0] != n_crops:
        raise ValueError(
            f"Backbone {name!r} returned shape {array.shape} for {n_crops} crops; it must return one feature "
            "vector per crop, (crops, features). For feature maps add global pooling "
            "(torch.nn.Sequential(model, torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())), or create a "
            "timm model with num_classes=0."
        )
    if width is not None and array.shape[1] != width:
        raise ValueError(f"Backbone {name!r} returned {array.shape[1]} features, {width} for earlier crops.")
    if np.isinf(array).any():
        raise ValueError(f"Backbone {name!r} returned infinite features; check its weights and inputs.")
    return array


def warn_degenerate(features: np.ndarray, libraries: list, name: str) -> None:
    """Warn about spots with an image whose features are NaN, and libraries whose spots all look alike."""
    for library in libraries:
        if library.open_source is None or not len(library.rows):
            continue
        values = features[library.rows]
        bad = np.isnan(values).any(axis=1)
        if bad.any():
            warnings.warn(
                f"Backbone {name!r} returned NaN features for {int(bad.sum())} of the {len(bad)} spots of library "
                f"{library.name!r} (first: {library.spot_names[np.flatnonzero(bad)[0]]!r}); those spots count "
                "as spots without an image. Check the backbone on those crops.",
                UserWarning,
                stacklevel=3,
            )
        good = values[~bad]
        if len(good) > 1 and not np.ptp(good, axis=0).any():
            warnings.warn(
                f"Every spot of library {library.name!r} got the same image features (crops of "
                f"{library.crop_px} px); check the scale factor and the spot diameter, which set the crops.",
                UserWarning,
                stacklevel=3,
            )
