"""Opening H&E image files: TIFF detection, and Pillow for PNG and JPEG (TIFFs are read by tile elsewhere)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

_PIL_LIMIT_LOCK = threading.Lock()
_LFS_POINTER_PREFIX = b"version https://git-lfs"
#: Classic and BigTIFF headers, little- and big-endian.
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


def is_tiff(path: str | Path) -> bool:
    """Whether ``path`` is a TIFF file, by its header (whatever its extension).

    Raises
    ------
    FileNotFoundError
        If the file does not exist.

    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Image file {str(path)!r} does not exist.")
    with open(path, "rb") as fh:
        return fh.read(4) in _TIFF_MAGIC


@contextmanager
def open_image(path: str | Path) -> Iterator[Image.Image]:
    """Open an image file lazily (header only) and close it afterwards.

    Full-resolution H&E scans exceed Pillow's decompression-bomb limit (about 89 megapixels); the files
    opened here are ones the caller chose, so the limit is lifted while the header is read.

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    ValueError
        If the file is not an image Pillow can read (for example a git-lfs pointer left by a clone
        without ``git lfs pull``).

    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Image file {str(path)!r} does not exist.")
    with _PIL_LIMIT_LOCK:
        previous = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            image = Image.open(path)
        except UnidentifiedImageError as err:
            with open(path, "rb") as fh:
                head = fh.read(len(_LFS_POINTER_PREFIX))
            hint = (
                " It is a git-lfs pointer, not the image: run `git lfs pull` in that repository."
                if head == _LFS_POINTER_PREFIX
                else ""
            )
            raise ValueError(f"{str(path)!r} is not an image file Pillow can read.{hint}") from err
        finally:
            Image.MAX_IMAGE_PIXELS = previous
    try:
        yield image
    finally:
        image.close()


def load_full(image: Image.Image) -> Image.Image:
    """Decode ``image`` completely, with the decompression-bomb limit lifted (see :func:`open_image`)."""
    with _PIL_LIMIT_LOCK:
        previous = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            image.load()
        finally:
            Image.MAX_IMAGE_PIXELS = previous
    return image


def read_rgb(path: str | Path) -> np.ndarray:
    """Read a whole image file as a ``(height, width, 3)`` uint8 RGB array (alpha dropped, gray repeated)."""
    with open_image(path) as image:
        return np.asarray(load_full(image).convert("RGB"))


def read_rgb_reduced(path: str | Path, min_size: int) -> tuple[np.ndarray, float]:
    """Read an image downscaled by a power of two, decoding JPEGs at that reduced size.

    JPEG decoders can decode directly at 1/2, 1/4 or 1/8 of the stored size (DCT scaling), which is much
    faster and lighter than decoding at full size and resizing. The largest such reduction whose longer
    side is still at least ``min_size`` pixels is used; other formats are decoded and then reduced by the
    same rule with a box filter.

    Parameters
    ----------
    path
        Image file.
    min_size
        Smallest acceptable length of the longer side of the result, in pixels.

    Returns
    -------
    image
        ``(height, width, 3)`` uint8 RGB array.
    scale
        Size of the result relative to the file's full resolution (1, 1/2, 1/4 or 1/8).

    """
    with open_image(path) as image:
        full_width, full_height = image.size
        factor = 1
        while factor < 8 and max(full_width, full_height) // (2 * factor) >= min_size:
            factor *= 2
        target = (-(-full_width // factor), -(-full_height // factor))
        if factor > 1 and image.format == "JPEG":
            # Pillow picks the DCT scale from the integer ratio full // requested, so ask for exactly that.
            image.draft("RGB", (full_width // factor, full_height // factor))
        load_full(image)
        rgb = image.convert("RGB")
        done = round(full_width / rgb.size[0])
        if done < factor:
            rgb = rgb.reduce(factor // done)
        if rgb.size != target:
            raise RuntimeError(f"Reducing {path} by {factor} gave {rgb.size}, expected {target}.")
        return np.asarray(rgb), 1.0 / factor
