"""Libraries: the spots of one section's image, with their centres in that image's pixels and a crop size.

An AnnData in the scanpy/squidpy layout gives one library per value of ``obs[library_key]`` (its image
in ``uns["spatial"][library]``); a SpatialData gives one per (image, shapes element) pair, through
:mod:`spacrd._spatial`. Everything downstream (crop iteration, features) sees only :class:`Library`.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData

from spacrd import _spatial
from spacrd._constants import SCANPY_IMAGE_KEYS as IMG

from ._crop_options import CropOptions
from ._image_checks import crop_size, scale_number, uns_image
from ._image_sources import Source, array_source, open_file_source
from ._rgb import is_dask


@dataclass(frozen=True)
class Library:
    """The spots of one image.

    Attributes
    ----------
    name
        Library id (AnnData) or shapes element (SpatialData).
    rows
        ``(n,)`` int: positions of the spots in the output (AnnData ``obs`` or table rows).
    spot_names
        ``(n,)`` spot names, for error messages.
    centres
        ``(n, 2)`` float64 ``(x, y)`` in pixels of the image cropped; ``None`` without an image.
    crop_px
        Crop side in pixels of that image.
    crop_diameter
        Crop width in the units of the input coordinates (full-resolution pixels for AnnData, ``scale0``
        pixels for SpatialData).
    open_source
        Opens the image as a :class:`~spacrd.pp._image_sources.Source`; ``None`` without an image.
    source_kind, source_path
        Provenance: ``"fullres"``, the ``img_res_key`` or ``"image:<key>"``; the file read, if any.

    """

    name: str
    rows: np.ndarray
    spot_names: np.ndarray
    centres: np.ndarray | None = None
    crop_px: int = 0
    crop_diameter: float = float("nan")
    open_source: Callable[[], AbstractContextManager[Source]] | None = None
    source_kind: str = "none"
    source_path: str = ""


def _array_opener(
    array: Any, axes: str, value_range: tuple[float, float] | None, desc: str
) -> AbstractContextManager[Source]:
    """An image array (numpy or dask) as a source, in a context that has nothing to close."""
    return nullcontext(array_source(array, axes, value_range, desc))


def gather(data: Any, options: CropOptions) -> tuple[AnnData | None, int, list[Library]]:
    """Libraries of ``data``, the object whose rows the output follows (AnnData, table or None) and its length."""
    if _spatial.is_spatialdata(data):
        return spatialdata_libraries(data, options)
    if not isinstance(data, AnnData):
        raise TypeError(f"Expected AnnData or SpatialData, got {type(data).__name__}.")
    return data, data.n_obs, anndata_libraries(data, options)


# --------------------------------------------------------------------------------------------------
# AnnData (scanpy/squidpy layout)
# --------------------------------------------------------------------------------------------------


def _library_ids(adata: AnnData, library_key: str, spatial_key: str) -> tuple[list[str], np.ndarray]:
    spatial_uns = adata.uns.get(spatial_key)
    if library_key in adata.obs:
        column = adata.obs[library_key]
        if column.isna().any():
            raise ValueError(f"adata.obs[{library_key!r}] has missing values; every spot needs a library.")
        values = column.astype(str).to_numpy()
        if isinstance(column.dtype, pd.CategoricalDtype):
            ids = [str(c) for c in column.cat.categories if (column == c).any()]
        else:
            ids = list(pd.unique(values))
        return ids, values
    if isinstance(spatial_uns, Mapping) and len(spatial_uns) == 1:
        (only,) = spatial_uns
        return [str(only)], np.full(adata.n_obs, str(only), dtype=object)
    raise KeyError(
        f"adata.obs has no column {library_key!r}. Pass library_key= naming the column whose values key "
        f"adata.uns[{spatial_key!r}] (one entry per section)."
    )


def _select_libraries(ids: list[str], library_id: str | Sequence[str] | None) -> tuple[list[str], bool]:
    if library_id is None:
        return ids, False
    wanted = [library_id] if isinstance(library_id, str) else list(library_id)
    unknown = [i for i in wanted if i not in ids]
    if unknown:
        raise ValueError(f"Unknown library_id {unknown}; the data hold {ids}.")
    return wanted, True


def _uns_axes(array: Any, name: str) -> str:
    """Axes of an ``uns`` image, which scanpy/squidpy store channel-last."""
    if array.ndim == 3 and array.shape[-1] not in (1, 3, 4) and array.shape[0] in (1, 3, 4):
        raise ValueError(
            f"Image of {name} has shape {array.shape}, which looks channel-first; images in "
            "adata.uns['spatial'][library]['images'] are (height, width, channels): transpose it."
        )
    if array.ndim not in (2, 3):
        raise ValueError(f"Image of {name} has shape {array.shape}; expected (y, x) or (y, x, c).")
    return "yx" if array.ndim == 2 else "yxc"


def anndata_libraries(adata: AnnData, options: CropOptions) -> list[Library]:
    """One library per section of ``obs[library_key]``, cropping the full-resolution file or ``uns`` image."""
    spatial_key, img_res_key = options.spatial_key, options.img_res_key
    if spatial_key not in adata.obsm:
        raise KeyError(f"adata.obsm[{spatial_key!r}] (spot centres in full-resolution pixels) is missing.")
    if spatial_key not in adata.uns or not isinstance(adata.uns[spatial_key], Mapping):
        raise KeyError(
            f"adata.uns[{spatial_key!r}] is missing: image_features needs, per library, "
            f"adata.uns[{spatial_key!r}][library] = {{'images': {{{img_res_key!r}: array}}, 'scalefactors': "
            "{...}} (as written by squidpy/scanpy readers and spacrd.datasets)."
        )
    coords = np.asarray(adata.obsm[spatial_key])
    if coords.ndim != 2 or coords.shape[1] < 2:
        raise ValueError(f"adata.obsm[{spatial_key!r}] has shape {coords.shape}; expected (n_obs, 2).")
    coords = coords[:, :2].astype(np.float64)
    ids, values = _library_ids(adata, options.library_key, spatial_key)
    selected, explicit = _select_libraries(ids, options.library_id)
    spatial_uns = adata.uns[spatial_key]
    names = adata.obs_names.to_numpy()

    libraries, without = [], []
    for lib in selected:
        rows = np.flatnonzero(values == lib)
        if lib not in spatial_uns:
            raise KeyError(
                f"adata.uns[{spatial_key!r}] has no entry for library {lib!r} (it has {list(spatial_uns)}); "
                f"the values of adata.obs[{options.library_key!r}] must key adata.uns[{spatial_key!r}]."
            )
        entry = spatial_uns[lib]
        scalefactors = entry.get(IMG.SCALEFACTORS, {})
        images = entry.get(IMG.IMAGES, {})
        fullres = entry.get(IMG.METADATA, {}).get(IMG.FULLRES_PATH) if options.use_fullres else None
        if fullres:
            kind, path, scale = "fullres", str(fullres), 1.0
            desc = f"full-resolution image of {lib!r} ({path})"
            opener: Callable[[], AbstractContextManager[Source]] = partial(
                open_file_source, path, options.value_range, desc
            )
        elif img_res_key in images:
            res_key = _usable_res_key(images, scalefactors, img_res_key, lib, spatial_key)
            scale_key = f"tissue_{res_key}_scalef"
            if scale_key not in scalefactors:
                raise KeyError(
                    f"adata.uns[{spatial_key!r}][{lib!r}]['scalefactors'] lacks {scale_key!r}, which maps "
                    f"obsm[{spatial_key!r}] to pixels of the {res_key!r} image."
                )
            where = f"adata.uns[{spatial_key!r}][{lib!r}]['scalefactors']"
            kind, path, scale = res_key, "", scale_number(scalefactors, scale_key, where)
            desc = f"adata.uns[{spatial_key!r}][{lib!r}]['images'][{res_key!r}]"
            array = uns_image(images[res_key], desc)
            axes = _uns_axes(array, desc)
            opener = partial(_array_opener, array, axes, options.value_range, desc)
        else:
            if explicit:
                raise ValueError(
                    f"Library {lib!r} has no image: adata.uns[{spatial_key!r}][{lib!r}]['images'] lacks "
                    f"{img_res_key!r} and its metadata has no {IMG.FULLRES_PATH!r}. Leave it out of library_id."
                )
            libraries.append(Library(lib, rows, names[rows]))
            without.append((lib, sorted(images)))
            continue
        diameter = _diameter_for(lib, options.crop_diameter, scalefactors, spatial_key)
        crop_size(lib, diameter, scale)
        centres = coords[rows] * scale
        _check_finite(centres, names[rows], lib)
        libraries.append(
            Library(
                lib,
                rows,
                names[rows],
                centres=centres,
                crop_px=_crop_px(lib, diameter * scale),
                crop_diameter=diameter,
                open_source=opener,
                source_kind=kind,
                source_path=path,
            )
        )
    _check_missing_images(without, len(selected), img_res_key, spatial_key)
    return libraries


def _check_missing_images(without: list, n_libraries: int, img_res_key: str, spatial_key: str) -> None:
    """No library with ``img_res_key`` is an error (a wrong key); some without it are a warning."""
    if not without:
        return
    listed = ", ".join(f"{lib!r} (images: {keys})" for lib, keys in without[:3])
    if len(without) == n_libraries:
        raise KeyError(
            f"img_res_key={img_res_key!r} names no image of any library: {listed}; pass img_res_key= naming "
            f"one of the keys of adata.uns[{spatial_key!r}][library]['images'] (e.g. 'hires' or 'lowres')."
        )
    warnings.warn(
        f"{len(without)} of {n_libraries} libraries have no {img_res_key!r} image and no full-resolution file: "
        f"{listed}; their spots get NaN features (no image).",
        UserWarning,
        stacklevel=4,
    )


def _is_single_colour(image: Any) -> bool:
    """Whether every pixel of an in-memory ``(y, x[, c])`` image has the same RGB value (alpha ignored)."""
    if is_dask(image):  # a lazy image is not scanned whole just for this check
        return False
    array = np.asarray(image)
    rgb = array[..., :3] if array.ndim == 3 else array
    if rgb.size == 0:
        return False
    first = rgb.reshape(-1, rgb.shape[-1] if rgb.ndim == 3 else 1)[0]
    return bool((rgb == first).all())


def _usable_res_key(
    images: Mapping, scalefactors: Mapping, img_res_key: str, lib: str, spatial_key: str
) -> str:
    """``img_res_key``, or another resolution of the same library when that image is a single colour.

    Space Ranger folders can hold a placeholder in place of one image (the squidpy test fixture's
    ``tissue_hires_image.png`` is all black); crops of it would give every spot the same features.
    """
    if not _is_single_colour(images[img_res_key]):
        return img_res_key
    where = f"adata.uns[{spatial_key!r}][{lib!r}]['images']"
    others = [
        key
        for key in images
        if key != img_res_key
        and f"tissue_{key}_scalef" in scalefactors
        and not _is_single_colour(images[key])
    ]
    if others:
        warnings.warn(
            f"{where}[{img_res_key!r}] is a single colour (a placeholder, not an H&E); cropping from "
            f"{where}[{others[0]!r}] instead. Pass img_res_key={others[0]!r} to choose it yourself.",
            UserWarning,
            stacklevel=5,
        )
        return others[0]
    warnings.warn(
        f"{where}[{img_res_key!r}] is a single colour and the library has no other image; every spot of "
        f"{lib!r} gets the same image features.",
        UserWarning,
        stacklevel=5,
    )
    return img_res_key


#: Largest crop side in pixels: a 4,096 px crop is already 48 MB per spot in RGB.
MAX_CROP_PX = 4096


def _crop_px(lib: str, size: float) -> int:
    """Crop side in pixels of the image cut from, refusing sizes that would allocate absurd batches."""
    px = max(1, round(size))
    if px > MAX_CROP_PX:
        raise ValueError(
            f"Crops of library {lib!r} would be {px:,} px wide (at most {MAX_CROP_PX:,}); check `crop_diameter` "
            "(in the units of the spot coordinates) and the image's scale factor."
        )
    return px


def _diameter_for(lib: str, crop_diameter, scalefactors: Mapping, spatial_key: str) -> float:
    if crop_diameter is None:
        if IMG.SPOT_DIAMETER not in scalefactors:
            raise KeyError(
                f"adata.uns[{spatial_key!r}][{lib!r}]['scalefactors'] has no {IMG.SPOT_DIAMETER!r}; pass "
                "crop_diameter= (in the units of obsm coordinates)."
            )
        where = f"adata.uns[{spatial_key!r}][{lib!r}]['scalefactors']"
        diameter = scale_number(scalefactors, IMG.SPOT_DIAMETER, where)
    elif isinstance(crop_diameter, Mapping):
        if lib not in crop_diameter:
            raise KeyError(f"crop_diameter has no entry for library {lib!r}.")
        diameter = float(crop_diameter[lib])
    else:
        diameter = float(crop_diameter)
    if not np.isfinite(diameter) or diameter <= 0:
        raise ValueError(f"Crop diameter of library {lib!r} must be a positive number, got {diameter}.")
    return diameter


def _check_finite(centres: np.ndarray, names: np.ndarray, lib: str) -> None:
    bad = ~np.isfinite(centres).all(1)
    if bad.any():
        raise ValueError(
            f"{bad.sum()} spot(s) of library {lib!r} have NaN or infinite coordinates (first: "
            f"{list(names[bad][:3])}); drop them or fill their coordinates."
        )


# --------------------------------------------------------------------------------------------------
# SpatialData
# --------------------------------------------------------------------------------------------------


def _as_list(value, name: str, available: list[str]) -> list[str]:
    if value is None:
        if len(available) == 1:
            return list(available)
        raise ValueError(f"Pass {name}= (one of {available}).")
    return [value] if isinstance(value, str) else list(value)


def spatialdata_libraries(sdata: Any, options: CropOptions) -> tuple[AnnData | None, int, list[Library]]:
    """One library per (image, shapes element) pair; rows are table rows, or shapes rows without a table.

    Spots are circles, square bins or cell polygons (:func:`spacrd._spatial.spot_geometry`); their
    centres and widths reach the image's ``scale0`` pixels through :func:`spacrd._spatial.shapes_to_image`.
    """
    image_keys = _as_list(options.image_key, "image_key", list(sdata.images))
    shape_keys = _as_list(options.shapes_key, "shapes_key", list(sdata.shapes))
    if len(image_keys) != len(shape_keys):
        raise ValueError(
            f"image_key and shapes_key pair up one image with one shapes element; got {len(image_keys)} "
            f"image(s) and {len(shape_keys)} shapes element(s)."
        )
    table: AnnData | None = None
    keys: _spatial.TableKeys | None = None
    if options.table_key is not None:
        table = _spatial.get_table(sdata, options.table_key)
        keys = _spatial.table_keys(table, options.table_key)

    libraries = []
    offset = 0
    for img_key, shp_key in zip(image_keys, shape_keys, strict=True):
        if img_key not in sdata.images:
            raise KeyError(f"SpatialData has no image {img_key!r} (it has {list(sdata.images)}).")
        if table is not None and keys is not None and options.table_key is not None:
            spots = _spatial.table_spots(sdata, table, shp_key, keys, options.table_key)
        else:
            spots = _spatial.element_spots(sdata, shp_key)
            spots = replace(spots, rows=spots.rows + offset)
            offset += len(spots.rows)
        data_array = _spatial.scale0(sdata.images[img_key])
        if tuple(data_array.dims) != ("c", "y", "x"):
            raise ValueError(f"Image {img_key!r} has dims {data_array.dims}; expected ('c', 'y', 'x').")
        spots = spots.transformed(_spatial.shapes_to_image(sdata, shp_key, img_key))
        _check_finite(spots.centres, spots.names, shp_key)
        if options.crop_diameter is None:
            spots.check_sizes()
            diameter = spots.diameter
        else:
            diameter = _diameter_for(shp_key, options.crop_diameter, {}, "")
        crop_size(shp_key, diameter, 1.0)
        desc = f"image {img_key!r}"
        libraries.append(
            Library(
                shp_key,
                spots.rows,
                spots.names,
                centres=spots.centres,
                crop_px=_crop_px(shp_key, diameter),
                crop_diameter=diameter,
                open_source=partial(_array_opener, data_array.data, "cyx", options.value_range, desc),
                source_kind=f"image:{img_key}",
            )
        )
    n_rows = table.n_obs if table is not None else offset
    return table, n_rows, libraries
