"""Sources of pixel blocks of one image, as ``(h, w, 3)`` uint8 RGB: arrays, dask arrays and files.

Three kinds, chosen by what holds the pixels:

- :class:`InMemorySource`: a numpy array (AnnData ``uns`` images), sliced directly.
- :class:`ChunkedSource`: pixels stored in chunks that are decoded whole — a dask array (SpatialData
  images), a TIFF file's tiles or strips (read through :mod:`tifffile`'s zarr store) or an uncompressed
  TIFF's rows (memory-mapped per batch). Only the chunks under the requested boxes are decoded, into a
  small least-recently-used cache, and :meth:`ChunkedSource.order` visits spots band by band so that
  neighbouring crops share decoded chunks. Memory stays near the cache size whatever the image size.
- :class:`PillowSource`: JPEG, PNG and other files Pillow reads. Pillow decodes such a file whole
  (3 bytes per pixel: 2.7 GB for a 30,000 × 30,000 px slide); for whole slides use a tiled TIFF or
  SpatialData instead.
"""

from __future__ import annotations

import abc
import math
import mmap
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from typing import Any

import numpy as np

from ._image_io import is_tiff, load_full, open_image
from ._rgb import RGBConverter, array_extrema, chunkwise_extrema, is_dask

Box = tuple[int, int, int, int]  # x0, y0, x1, y1 in pixels, inside the image
Region = tuple[int, int, int, int]  # y0, y1, x0, x1

#: Decoded chunks kept between batches; a batch that needs more keeps them all while it is read.
CACHE_BYTES = 256 * 2**20
#: Chunks larger than this are decoded whole for every crop that touches them: warn, it is slow.
_LARGE_CHUNK_BYTES = 64 * 2**20
#: Virtual chunk side for memory-mapped (uncompressed, contiguous) TIFFs.
_MEMMAP_CHUNK = 1024


class Source(abc.ABC):
    """Pixel blocks of one image, converted to ``(h, w, 3)`` uint8 RGB."""

    height: int
    width: int
    description: str

    @abc.abstractmethod
    def read(self, boxes: Sequence[Box]) -> list[np.ndarray]:
        """Blocks ``image[y0:y1, x0:x1]`` for boxes ``(x0, y0, x1, y1)`` inside the image."""

    def order(self, x0: np.ndarray, y0: np.ndarray) -> np.ndarray | None:
        """Order in which to read crops with these origins, or ``None`` for any order."""
        return None


class _Layout:
    """Where y, x and channels sit in an array's axes (``"cyx"``, ``"yxc"``, tifffile's ``"YXS"``...)."""

    def __init__(self, axes: str, shape: Sequence[int], name: str):
        axes = axes.lower().replace("s", "c")
        if len(axes) != len(shape) or "y" not in axes or "x" not in axes or axes.count("c") > 1:
            raise ValueError(
                f"{name} has axes {axes!r} and shape {tuple(shape)}; expected y, x and channels."
            )
        extra = [(a, n) for a, n in zip(axes, shape, strict=True) if a not in "cyx" and n != 1]
        if extra:
            raise ValueError(
                f"{name} has axes {axes!r} of shape {tuple(shape)}; only one plane (y, x, channels) can be "
                f"read, but {extra} are not of length 1."
            )
        self.height, self.width = int(shape[axes.index("y")]), int(shape[axes.index("x")])
        self.n_channels = int(shape[axes.index("c")]) if "c" in axes else 1
        self._axes = axes
        kept = [a for a in axes if a in "cyx"]
        self._perm = [kept.index(a) for a in "yxc" if a in kept]

    def key(self, y0: int, y1: int, x0: int, x1: int) -> tuple:
        span = {"y": slice(y0, y1), "x": slice(x0, x1), "c": slice(None)}
        return tuple(span.get(a, 0) for a in self._axes)

    def to_yxc(self, block: Any) -> np.ndarray:
        block = np.transpose(np.asarray(block), self._perm)
        return block if block.ndim == 3 else block[..., None]


class InMemorySource(Source):
    """A numpy array, sliced per box."""

    def __init__(self, array: np.ndarray, axes: str, value_range: tuple[float, float] | None, name: str):
        self._layout = _Layout(axes, array.shape, name)
        self.height, self.width = self._layout.height, self._layout.width
        self._array = array
        self._to_rgb = RGBConverter(
            array.dtype, self._layout.n_channels, value_range, name, lambda: array_extrema(array)
        )
        self.description = name

    def read(self, boxes):
        key, to_yxc = self._layout.key, self._layout.to_yxc
        return [self._to_rgb(to_yxc(self._array[key(y0, y1, x0, x1)])) for x0, y0, x1, y1 in boxes]


class ChunkedSource(Source):
    """An image stored in chunks, each decoded whole: decode only those under the boxes, and cache them.

    Parameters
    ----------
    layout
        Axes of the stored array.
    read_regions
        Reads regions ``(y0, y1, x0, x1)`` (chunk-aligned) of the stored array, in its own axis order.
    y_bounds, x_bounds
        Chunk edges along y and x, from 0 to the height / width.
    dtype, value_range, name
        For the conversion to uint8 RGB (:class:`~spacrd.pp._rgb.RGBConverter`).
    extrema
        ``() -> (min, max, has_nan)`` of the image, called only when the value range must be inferred.
    cache_bytes
        Budget of decoded RGB chunks kept between batches.

    """

    def __init__(
        self,
        layout: _Layout,
        read_regions: Callable[[list[Region]], list[Any]],
        y_bounds: Sequence[int] | np.ndarray,
        x_bounds: Sequence[int] | np.ndarray,
        *,
        dtype: Any,
        value_range: tuple[float, float] | None,
        name: str,
        extrema: Callable[[], tuple[float, float, bool]] | None = None,
        cache_bytes: int = CACHE_BYTES,
    ):
        self._layout = layout
        self.height, self.width = layout.height, layout.width
        self._read_regions = read_regions
        self._y = np.asarray(y_bounds, dtype=np.int64)
        self._x = np.asarray(x_bounds, dtype=np.int64)
        if extrema is None:
            extrema = lambda: chunkwise_extrema(self._read_regions, self._all_regions())  # noqa: E731
        self._to_rgb = RGBConverter(dtype, layout.n_channels, value_range, name, extrema)
        self._cache: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()
        self._cache_bytes = int(cache_bytes)
        self._cached = 0
        #: Chunks decoded so far (a chunk evicted and decoded again counts twice).
        self.chunks_read = 0
        self.description = name
        largest = int(np.diff(self._y).max(initial=0) * np.diff(self._x).max(initial=0)) * 3
        if largest > _LARGE_CHUNK_BYTES:
            warnings.warn(
                f"{name} is stored in chunks of up to {largest / 2**20:.0f} MB (decoded), each read whole; "
                "crops from it are slow and memory-hungry. Store it in tiles (e.g. a tiled TIFF, or "
                "rechunk the image to 1024-4096 px).",
                UserWarning,
                stacklevel=6,
            )

    def _all_regions(self) -> Iterator[list[Region]]:
        for iy in range(len(self._y) - 1):  # one band of chunks at a time
            yield [self._region(iy, ix) for ix in range(len(self._x) - 1)]

    def _region(self, iy: int, ix: int) -> Region:
        return int(self._y[iy]), int(self._y[iy + 1]), int(self._x[ix]), int(self._x[ix + 1])

    def _span(self, bounds: np.ndarray, lo: int, hi: int) -> range:
        first = int(np.searchsorted(bounds, lo, side="right")) - 1
        last = int(np.searchsorted(bounds, hi, side="left")) - 1
        return range(first, last + 1)

    def order(self, x0, y0):
        # band by band (chunk rows), left to right: consecutive crops share chunks, and a batch touches few
        band = np.clip(np.searchsorted(self._y, y0, side="right") - 1, 0, len(self._y) - 2)
        return np.lexsort((x0, band))

    def read(self, boxes):
        spans = [(self._span(self._y, y0, y1), self._span(self._x, x0, x1)) for x0, y0, x1, y1 in boxes]
        needed = list(dict.fromkeys((iy, ix) for ys, xs in spans for iy in ys for ix in xs))
        missing = [k for k in needed if k not in self._cache]
        if missing:
            incoming = sum(self._rgb_bytes(k) for k in missing)
            keep = set(needed)
            for key in [k for k in self._cache if k not in keep]:  # least recently used first
                if self._cached + incoming <= self._cache_bytes:
                    break
                self._cached -= self._cache.pop(key).nbytes
            blocks = self._read_regions([self._region(*k) for k in missing])
            for key, block in zip(missing, blocks, strict=True):
                rgb = self._to_rgb(self._layout.to_yxc(block))
                self._cache[key] = rgb
                self._cached += rgb.nbytes
            self.chunks_read += len(missing)
        for key in needed:
            self._cache.move_to_end(key)
        return [self._assemble(box, ys, xs) for box, (ys, xs) in zip(boxes, spans, strict=True)]

    def _rgb_bytes(self, key: tuple[int, int]) -> int:
        y0, y1, x0, x1 = self._region(*key)
        return (y1 - y0) * (x1 - x0) * 3

    def _assemble(self, box: Box, ys: range, xs: range) -> np.ndarray:
        x0, y0, x1, y1 = box
        out = np.empty((y1 - y0, x1 - x0, 3), dtype=np.uint8)
        for iy in ys:
            for ix in xs:
                cy0, cy1, cx0, cx1 = self._region(iy, ix)
                ty0, ty1, tx0, tx1 = max(y0, cy0), min(y1, cy1), max(x0, cx0), min(x1, cx1)
                if ty1 > ty0 and tx1 > tx0:
                    out[ty0 - y0 : ty1 - y0, tx0 - x0 : tx1 - x0] = self._cache[(iy, ix)][
                        ty0 - cy0 : ty1 - cy0, tx0 - cx0 : tx1 - cx0
                    ]
        return out


def _edges(chunks: Sequence[int]) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(chunks)]).astype(np.int64)


def _regular_edges(size: int, step: int) -> np.ndarray:
    return np.unique(np.r_[np.arange(0, size, max(1, step)), size]).astype(np.int64)


def dask_source(array: Any, axes: str, value_range: tuple[float, float] | None, name: str) -> ChunkedSource:
    """A dask array (e.g. a SpatialData image's ``(c, y, x)`` data), read by its own chunks."""
    import dask

    layout = _Layout(axes, array.shape, name)
    lowered = axes.lower().replace("s", "c")

    def read_regions(regions):
        # one compute for the batch's missing chunks: dask decodes them in parallel
        return list(dask.compute(*(array[layout.key(*r)] for r in regions)))

    return ChunkedSource(
        layout,
        read_regions,
        _edges(array.chunks[lowered.index("y")]),
        _edges(array.chunks[lowered.index("x")]),
        dtype=array.dtype,
        value_range=value_range,
        name=name,
        extrema=lambda: array_extrema(array),
    )


def array_source(array: Any, axes: str, value_range: tuple[float, float] | None, name: str) -> Source:
    """A numpy array as :class:`InMemorySource`, a dask array as :func:`dask_source`."""
    if is_dask(array):
        return dask_source(array, axes, value_range, name)
    return InMemorySource(np.asarray(array), axes, value_range, name)


class PillowSource(Source):
    """An image file Pillow reads (JPEG, PNG...), decoded whole when opened: 3 bytes per pixel."""

    def __init__(self, image, value_range: tuple[float, float] | None, name: str):
        self._image = load_full(image)
        self.width, self.height = image.size
        mode = image.mode
        if mode in ("RGB", "RGBA", "L", "LA", "P", "PA", "1", "CMYK", "YCbCr", "LAB", "HSV"):
            # 8-bit modes: Pillow converts to RGB itself (palette lookup, alpha dropped)
            if mode in ("L", "LA", "1"):
                warnings.warn(
                    f"{name} is grayscale; its channel is repeated to RGB.", UserWarning, stacklevel=6
                )
            self._to_rgb = None
        else:  # 16-bit or 32-bit single channel ("I;16", "I", "F")
            dtype = np.asarray(image.crop((0, 0, 1, 1))).dtype
            self._to_rgb = RGBConverter(dtype, 1, value_range, name, lambda: image.getextrema())
        self.description = name

    def read(self, boxes):
        out = []
        for box in boxes:
            block = self._image.crop(box)
            if self._to_rgb is None:
                out.append(np.asarray(block if block.mode == "RGB" else block.convert("RGB")))
            else:
                out.append(self._to_rgb(np.asarray(block)))
        return out


def _tiff_source(
    path: str, value_range: tuple[float, float] | None, name: str, stack: ExitStack
) -> ChunkedSource | None:
    """The full-resolution level of a TIFF, read lazily; ``None`` when Pillow should read it instead."""
    import tifffile

    try:
        tif = stack.enter_context(tifffile.TiffFile(path))
        level = tif.series[0].levels[0]
        page = level.keyframe
    except (tifffile.TiffFileError, ValueError, IndexError):
        return None
    photometric = tifffile.PHOTOMETRIC
    jpeg = page.compression in (tifffile.COMPRESSION.JPEG, tifffile.COMPRESSION.OJPEG)
    if not (
        page.photometric in (photometric.RGB, photometric.MINISBLACK)
        or (page.photometric == photometric.YCBCR and jpeg)  # tifffile decodes those to RGB
    ):
        return None  # palette, inverted gray, CMYK...: Pillow converts these to RGB correctly
    layout = _Layout(level.axes, level.shape, name)
    if layout.n_channels not in (1, 3, 4):
        return None
    if level.dataoffset is not None:
        # uncompressed and contiguous: map the file per batch, so only the rows read become resident
        offset, shape, dtype = int(level.dataoffset), tuple(level.shape), level.dtype
        count = math.prod(shape)

        def read_regions(regions):
            with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
                pixels = np.frombuffer(mapped, dtype=dtype, count=count, offset=offset).reshape(shape)
                blocks = [np.array(pixels[layout.key(*r)]) for r in regions]
                del pixels  # release the buffer before the map closes
            return blocks

        y_bounds = _regular_edges(layout.height, _MEMMAP_CHUNK)
        x_bounds = _regular_edges(layout.width, _MEMMAP_CHUNK)
    else:
        import zarr

        store = tif.series[0].aszarr(level=0)
        stack.callback(store.close)
        stored: Any = zarr.open(store, mode="r")  # an array, or a multiscale group of them
        if not hasattr(stored, "shape"):  # a multiscale group
            stored = stored["0"]
        axes = level.axes.lower().replace("s", "c")

        def read_regions(regions):
            return [np.asarray(stored[layout.key(*r)]) for r in regions]

        y_bounds = _regular_edges(layout.height, stored.chunks[axes.index("y")])
        x_bounds = _regular_edges(layout.width, stored.chunks[axes.index("x")])
    try:
        read_regions([(0, 1, 0, 1)])  # fail here, not mid-run, when a codec is missing
    except (ValueError, ImportError, NotImplementedError, RuntimeError) as error:
        warnings.warn(f"tifffile cannot decode {path} ({error}); reading it whole with Pillow.", stacklevel=5)
        return None
    return ChunkedSource(
        layout, read_regions, y_bounds, x_bounds, dtype=level.dtype, value_range=value_range, name=name
    )


@contextmanager
def open_file_source(path: str, value_range: tuple[float, float] | None, name: str) -> Iterator[Source]:
    """An image file as a source, open while the context lasts.

    TIFFs (tiled, striped or uncompressed, pyramidal or not; level 0 is read) are read lazily by box
    through :mod:`tifffile`; other formats (JPEG, PNG) and TIFFs tifffile cannot convert to RGB are
    decoded whole by Pillow.
    """
    with ExitStack() as stack:
        source: Source | None = _tiff_source(path, value_range, name, stack) if is_tiff(path) else None
        if source is None:
            source = PillowSource(stack.enter_context(open_image(path)), value_range, name)
        yield source
