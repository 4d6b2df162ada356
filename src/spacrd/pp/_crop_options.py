"""The settings of one crop run, gathered once from the public functions' arguments."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from spacrd._constants import DEFAULT_LIBRARY_KEY, OBSM_KEYS, SCANPY_IMAGE_KEYS, SPATIALDATA_KEYS

PadMode = Literal["constant", "reflect", "edge"]
PAD_MODES: tuple[str, ...] = ("constant", "reflect", "edge")


@dataclass(frozen=True)
class CropOptions:
    """Which spots to crop from which images, how wide, and how to read and pad the pixels.

    The fields are the arguments of :func:`spacrd.pp.image_features` and :func:`spacrd.pp.spot_crops`
    of the same names (see there); they are checked when the options are made.
    """

    library_key: str = DEFAULT_LIBRARY_KEY
    library_id: str | Sequence[str] | None = None
    spatial_key: str = OBSM_KEYS.SPATIAL
    img_res_key: str = SCANPY_IMAGE_KEYS.HIRES
    use_fullres: bool = True
    image_key: str | Sequence[str] | None = None
    shapes_key: str | Sequence[str] | None = None
    table_key: str | None = SPATIALDATA_KEYS.TABLE
    crop_diameter: float | Mapping[str, float] | None = None
    value_range: tuple[float, float] | None = None
    pad_mode: PadMode = "constant"
    pad_value: int = 255
    batch_size: int = 256

    def __post_init__(self) -> None:
        if not isinstance(self.batch_size, int | np.integer) or self.batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {self.batch_size!r}.")
        if self.pad_mode not in PAD_MODES:
            raise ValueError(f"pad_mode must be one of {PAD_MODES}, got {self.pad_mode!r}.")
        if not (0 <= self.pad_value <= 255):
            raise ValueError(f"pad_value must be in 0-255 (uint8 RGB), got {self.pad_value!r}.")
