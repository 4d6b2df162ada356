"""Square image crops centred on spots: iteration in batches, border padding, and :func:`spot_crops`."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from anndata import AnnData

from spacrd._constants import DEFAULT_LIBRARY_KEY, OBSM_KEYS, SCANPY_IMAGE_KEYS, SPATIALDATA_KEYS
from spacrd._validation import check_number

from ._crop_options import CropOptions, PadMode
from ._image_checks import warn_small_extent
from ._image_sources import Source
from ._libraries import MAX_CROP_PX, Library, gather


def crop_origin(centre: np.ndarray, size: int) -> np.ndarray:
    """Top-left pixel of a ``size``-pixel window centred on ``centre``; pixel i covers [i - 0.5, i + 0.5)."""
    return np.floor(centre - (size - 1) / 2 + 0.5).astype(np.int64)


def iter_crops(
    library: Library, source: Source, options: CropOptions
) -> Iterator[tuple[np.ndarray, np.ndarray, int]]:
    """Yield ``(rows, crops, n_padded)`` per batch: crops ``(b, s, s, 3)`` uint8, ``s = library.crop_px``.

    Batches follow ``source.order`` (for chunked images: band by band, so a batch decodes few chunks),
    not the row order; ``rows`` says where each crop belongs.
    """
    size = library.crop_px
    centres = library.centres
    if centres is None:
        raise ValueError(f"Library {library.name!r} has no image, so no spots to crop.")
    outside = (
        (centres[:, 0] < -0.5)
        | (centres[:, 1] < -0.5)
        | (centres[:, 0] >= source.width - 0.5)
        | (centres[:, 1] >= source.height - 0.5)
    )
    if outside.any():
        first = np.flatnonzero(outside)[0]
        raise ValueError(
            f"{outside.sum()} spot centre(s) of library {library.name!r} lie outside its "
            f"{source.width} x {source.height} px image ({source.description}); first: "
            f"{library.spot_names[first]!r} at x={centres[first, 0]:.1f}, y={centres[first, 1]:.1f}. Check "
            "that the coordinates are in full-resolution pixels and the scale factor maps them to the image."
        )
    warn_small_extent(library.name, centres, source.width, source.height, source.description)
    origin = crop_origin(centres, size)
    order = source.order(origin[:, 0], origin[:, 1])
    if order is None:
        order = np.arange(len(centres))
    batches = [
        order[start : start + options.batch_size] for start in range(0, len(order), options.batch_size)
    ]
    # Read one batch ahead in a second thread while the caller featurises the current one: decoding
    # (tifffile, dask, Pillow) and the backbone's numpy and torch work release the GIL, so the two
    # overlap. Batches are still read one at a time and in order, so a source sees the same calls.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="spacrd-crops") as reader:
        pending = reader.submit(_read_batch, source, origin, size, options, batches[0]) if batches else None
        for k, batch in enumerate(batches):
            assert pending is not None
            crops, n_padded = pending.result()
            pending = (
                reader.submit(_read_batch, source, origin, size, options, batches[k + 1])
                if k + 1 < len(batches)
                else None
            )
            yield library.rows[batch], crops, n_padded


def _read_batch(
    source: Source, origin: np.ndarray, size: int, options: CropOptions, batch: np.ndarray
) -> tuple[np.ndarray, int]:
    """Crops ``(b, size, size, 3)`` uint8 with top-left pixels ``origin[batch]``, padded; and how many were padded."""
    x0, y0 = origin[batch, 0], origin[batch, 1]
    cx0, cy0 = np.maximum(x0, 0), np.maximum(y0, 0)
    cx1, cy1 = np.minimum(x0 + size, source.width), np.minimum(y0 + size, source.height)
    blocks = source.read(list(zip(cx0.tolist(), cy0.tolist(), cx1.tolist(), cy1.tolist(), strict=True)))
    crops = np.empty((len(batch), size, size, 3), dtype=np.uint8)
    n_padded = 0
    for k, block in enumerate(blocks):
        pads = ((cy0[k] - y0[k], y0[k] + size - cy1[k]), (cx0[k] - x0[k], x0[k] + size - cx1[k]))
        if any(p for pair in pads for p in pair):
            n_padded += 1
            pad_width = (*pads, (0, 0))
            if options.pad_mode == "constant":
                block = np.pad(block, pad_width, mode="constant", constant_values=options.pad_value)
            else:
                block = np.pad(block, pad_width, mode=options.pad_mode)
        crops[k] = block
    return crops, n_padded


def resize_crops(crops: np.ndarray, size: int | tuple[int, int]):
    """Resize uint8 crops ``(b, s, s, 3)`` to a float32 torch tensor ``(b, 3, h, w)`` in [0, 1].

    Bilinear with antialiasing (area-like when shrinking), as for tensors in torchvision. The
    element-wise steps (scaling to [0, 1], clamping) run in numpy, single-threaded: torch's threads
    cost more than they save on arrays this small, most of all on a busy machine; the values are the
    same.
    """
    import torch
    import torch.nn.functional as F

    h, w = (size, size) if isinstance(size, int | np.integer) else size
    scaled = np.asarray(crops, dtype=np.float32)
    scaled = np.divide(scaled, np.float32(255.0), out=scaled if scaled is not crops else None)
    x = torch.from_numpy(scaled).permute(0, 3, 1, 2)
    if x.shape[-2:] != (h, w):
        x = F.interpolate(x, size=(h, w), mode="bilinear", antialias=True, align_corners=False)
        out = x.numpy()
        np.clip(out, 0.0, 1.0, out=out)
    return x


def spot_crops(
    data: AnnData | Any,
    size: int | None = None,
    *,
    library_key: str = DEFAULT_LIBRARY_KEY,
    library_id: str | Sequence[str] | None = None,
    crop_diameter: float | Mapping[str, float] | None = None,
    spatial_key: str = OBSM_KEYS.SPATIAL,
    img_res_key: str = SCANPY_IMAGE_KEYS.HIRES,
    use_fullres: bool = True,
    image_key: str | Sequence[str] | None = None,
    shapes_key: str | Sequence[str] | None = None,
    table_key: str | None = SPATIALDATA_KEYS.TABLE,
    pad_mode: PadMode = "constant",
    pad_value: int = 255,
    value_range: tuple[float, float] | None = None,
    batch_size: int = 256,
) -> np.ndarray:
    """Square RGB image crops centred on each spot, e.g. to fine-tune a CNN.

    Each crop is ``crop_diameter`` wide (default: one spot diameter) and centred on the spot: with ``s``
    the crop width in pixels of the image it is cut from and ``(x, y)`` the spot centre in those pixels,
    the crop is ``image[y0:y0 + s, x0:x0 + s]`` with ``x0 = floor(x - (s - 1) / 2 + 0.5)`` (likewise
    ``y0``), pixel ``i`` spanning ``[i - 0.5, i + 0.5)``. Parts beyond the image border are padded (see
    ``pad_mode``). Crops are returned, not stored, since ``n × size² × 3`` bytes can be large
    (10,000 spots at 224 px: 1.5 GB).

    Parameters
    ----------
    data
        :class:`~anndata.AnnData` in the scanpy/squidpy layout (reads ``obsm[spatial_key]``,
        ``obs[library_key]``, ``uns[spatial_key][library]``) or a :class:`~spatialdata.SpatialData` with
        spot shapes (circles, square bins or cell polygons) and an image (see :func:`image_features`).
    size
        Side length of the returned crops in pixels; crops are resized (bilinear, antialiased). ``None``
        keeps the native crop size, which must then be the same for every library.
    library_key, library_id, crop_diameter, spatial_key, img_res_key, use_fullres, image_key, shapes_key, table_key, pad_mode, pad_value, value_range
        As for :func:`image_features`.
    batch_size
        Crops read and resized at once.

    Returns
    -------
    ``(n, size, size, 3)`` uint8 RGB. AnnData: one crop per spot of the selected libraries, in
    ``adata.obs`` order (all spots when ``library_id`` is None); every selected library needs an image.
    SpatialData: one crop per table row that annotates ``shapes_key``, in table order (per shapes row
    when ``table_key=None``).

    """
    options = CropOptions(
        library_key=library_key,
        library_id=library_id,
        spatial_key=spatial_key,
        img_res_key=img_res_key,
        use_fullres=use_fullres,
        image_key=image_key,
        shapes_key=shapes_key,
        table_key=table_key,
        crop_diameter=crop_diameter,
        value_range=value_range,
        pad_mode=pad_mode,
        pad_value=pad_value,
        batch_size=batch_size,
    )
    if size is not None:
        size = int(check_number("size", size, integer=True, low=1, high=MAX_CROP_PX))
    _, _, libraries = gather(data, options)
    without = [lib.name for lib in libraries if lib.open_source is None]
    if without:
        raise ValueError(f"Libraries {without} have no image; select imaged ones with library_id=.")
    if size is None:
        sizes = {lib.crop_px for lib in libraries}
        if len(sizes) > 1:
            raise ValueError(
                f"Crop sizes differ between libraries ({sorted(sizes)} px); pass size= to resize."
            )
        size = sizes.pop() if sizes else 1
    rows = np.concatenate([lib.rows for lib in libraries]) if libraries else np.zeros(0, dtype=np.int64)
    out = np.empty((len(rows), size, size, 3), dtype=np.uint8)
    order = np.argsort(rows, kind="stable")
    slot = np.empty_like(order)
    slot[order] = np.arange(len(rows))  # output position of each row, in ascending row order
    position_of_row = dict(zip(rows.tolist(), slot.tolist(), strict=True))
    for library in libraries:
        assert library.open_source is not None  # libraries without an image were refused above
        with library.open_source() as source:
            for batch_rows, crops, _ in iter_crops(library, source, options):
                if crops.shape[1] != size:
                    resized = (
                        resize_crops(crops, size).mul_(255.0).round_().byte().permute(0, 2, 3, 1).numpy()
                    )
                else:
                    resized = crops
                out[[position_of_row[r] for r in batch_rows.tolist()]] = resized
    return out
