"""Square image crops centred on spots, from AnnData (scanpy/squidpy layout) or SpatialData."""

from __future__ import annotations

import abc
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
from anndata import AnnData

from ._image_io import load_full, open_image

PadMode = Literal["constant", "reflect", "edge"]
_PAD_MODES = ("constant", "reflect", "edge")


# --------------------------------------------------------------------------------------------------
# image sources: something that can hand out rectangular pixel blocks of one section's image
# --------------------------------------------------------------------------------------------------


class _Source(abc.ABC):
    """Pixel blocks of one image, converted to ``(h, w, 3)`` uint8 RGB."""

    height: int
    width: int
    description: str

    @abc.abstractmethod
    def read(self, boxes: Sequence[tuple[int, int, int, int]]) -> list[np.ndarray]:
        """Blocks ``image[y0:y1, x0:x1]`` for boxes ``(x0, y0, x1, y1)`` inside the image."""


class _ArraySource(_Source):
    """A numpy or dask array, ``(y, x[, c])`` (AnnData ``uns`` images) or ``(c, y, x)`` (SpatialData)."""

    def __init__(self, array: Any, channel_first: bool, value_range: tuple[float, float] | None, name: str):
        if channel_first:
            if array.ndim != 3:
                raise ValueError(f"Image of {name} has shape {array.shape}; expected (c, y, x).")
            n_channels = array.shape[0]
            self.height, self.width = array.shape[1:]
        else:
            if array.ndim == 3 and array.shape[-1] not in (1, 3, 4) and array.shape[0] in (1, 3, 4):
                raise ValueError(
                    f"Image of {name} has shape {array.shape}, which looks channel-first; images in "
                    "adata.uns['spatial'][library]['images'] are (height, width, channels): transpose it."
                )
            if array.ndim not in (2, 3):
                raise ValueError(f"Image of {name} has shape {array.shape}; expected (y, x) or (y, x, c).")
            n_channels = 1 if array.ndim == 2 else array.shape[2]
            self.height, self.width = array.shape[:2]
        self._array = array
        self._channel_first = channel_first
        self._is_dask = _is_dask(array)
        self._to_rgb = _RGBConverter(array.dtype, n_channels, value_range, name, lambda: _extrema(array))
        self.description = name

    def read(self, boxes):
        blocks = []
        for x0, y0, x1, y1 in boxes:
            if self._channel_first:
                blocks.append(self._array[:, y0:y1, x0:x1])
            else:
                blocks.append(self._array[y0:y1, x0:x1])
        if self._is_dask:
            import dask

            blocks = list(dask.compute(*blocks))
        if self._channel_first:
            blocks = [np.moveaxis(np.asarray(b), 0, -1) for b in blocks]
        return [self._to_rgb(np.asarray(b)) for b in blocks]


class _FileSource(_Source):
    """An image file, decoded once when the section is processed and released afterwards."""

    def __init__(self, image, value_range: tuple[float, float] | None, name: str):
        self._image = load_full(image)
        self.width, self.height = image.size
        mode = image.mode
        if mode in ("RGB", "RGBA", "L", "LA", "P", "PA", "1", "CMYK", "YCbCr", "LAB", "HSV"):
            # 8-bit modes: Pillow converts to RGB itself (palette lookup, alpha dropped)
            if mode in ("L", "LA", "1"):
                warnings.warn(
                    f"{name} is grayscale; its channel is repeated to RGB.", UserWarning, stacklevel=5
                )
            self._pil_rgb = True
            self._to_rgb = None
        else:  # 16-bit or 32-bit single channel ("I;16", "I", "F")
            self._pil_rgb = False
            dtype = np.asarray(image.crop((0, 0, 1, 1))).dtype
            self._to_rgb = _RGBConverter(dtype, 1, value_range, name, lambda: image.getextrema())
        self.description = name

    def read(self, boxes):
        out = []
        for box in boxes:
            block = self._image.crop(box)
            if self._pil_rgb:
                out.append(np.asarray(block if block.mode == "RGB" else block.convert("RGB")))
            else:
                out.append(self._to_rgb(np.asarray(block)))
        return out


def _is_dask(array: Any) -> bool:
    return type(array).__module__.startswith("dask")


def _extrema(array: Any) -> tuple[float, float, bool]:
    if _is_dask(array):
        import dask
        import dask.array as da

        lo, hi, has_nan = dask.compute(da.nanmin(array), da.nanmax(array), da.isnan(array).any())
    elif np.issubdtype(array.dtype, np.floating):
        lo, hi, has_nan = np.nanmin(array), np.nanmax(array), bool(np.isnan(array).any())
    else:
        lo, hi, has_nan = array.min(), array.max(), False
    return float(lo), float(hi), bool(has_nan)


class _RGBConverter:
    """Map blocks of one image to uint8 RGB: scale the value range to 0-255 and fix the channels.

    uint8 is used as is. Floats are read as 0-1 when the image maximum is at most 1 and as 0-255 when it
    is at most 255. Other integer types are read as 8-bit when the maximum is at most 255, otherwise as
    the smallest of 10, 12, 14, 16, ... bits that holds the maximum (with a warning, since that is a
    guess). ``value_range`` overrides all of this. One channel is repeated to three (with a warning);
    a fourth (alpha) channel is dropped.
    """

    def __init__(self, dtype, n_channels: int, value_range, name: str, extrema: Callable[[], tuple]):
        dtype = np.dtype(dtype)
        if n_channels not in (1, 3, 4):
            raise ValueError(f"{name} has {n_channels} channels; expected 1 (gray), 3 (RGB) or 4 (RGBA).")
        if n_channels == 1:
            warnings.warn(f"{name} is grayscale; its channel is repeated to RGB.", UserWarning, stacklevel=6)
        self._n_channels = n_channels
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


# --------------------------------------------------------------------------------------------------
# libraries: the spots of one image, with their centres in that image's pixels
# --------------------------------------------------------------------------------------------------


@dataclass
class _Library:
    name: str
    rows: np.ndarray  # positions in the output (AnnData obs / table rows)
    spot_names: np.ndarray
    centres: np.ndarray | None = None  # (n, 2) x, y in pixels of the source image
    crop_px: int = 0
    crop_diameter: float = float("nan")  # in the units of the input coordinates
    open_source: Callable[[], AbstractContextManager[_Source]] | None = None
    source_kind: str = "none"
    source_path: str = ""
    extra: dict = field(default_factory=dict)


def _crop_origin(centre: np.ndarray, size: int) -> np.ndarray:
    # A window of `size` pixels centred on `centre`; pixel i covers [i - 0.5, i + 0.5).
    return np.floor(centre - (size - 1) / 2 + 0.5).astype(np.int64)


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


def _anndata_libraries(
    adata: AnnData,
    *,
    library_key: str,
    library_id: str | Sequence[str] | None,
    spatial_key: str,
    img_res_key: str,
    use_fullres: bool,
    crop_diameter: float | Mapping[str, float] | None,
    value_range: tuple[float, float] | None,
) -> list[_Library]:
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
    ids, values = _library_ids(adata, library_key, spatial_key)
    selected, explicit = _select_libraries(ids, library_id)
    spatial_uns = adata.uns[spatial_key]
    names = adata.obs_names.to_numpy()

    libraries = []
    for lib in selected:
        rows = np.flatnonzero(values == lib)
        library = _Library(name=lib, rows=rows, spot_names=names[rows])
        libraries.append(library)
        if lib not in spatial_uns:
            raise KeyError(
                f"adata.uns[{spatial_key!r}] has no entry for library {lib!r} (it has {list(spatial_uns)}); "
                f"the values of adata.obs[{library_key!r}] must key adata.uns[{spatial_key!r}]."
            )
        entry = spatial_uns[lib]
        scalefactors = entry.get("scalefactors", {})
        metadata = entry.get("metadata", {})
        images = entry.get("images", {})
        fullres = metadata.get("fullres_image_path") if use_fullres else None
        if fullres:
            library.source_kind, library.source_path, scale = "fullres", str(fullres), 1.0
            library.open_source = _file_opener(str(fullres), value_range, f"full-resolution image of {lib!r}")
        elif img_res_key in images:
            res_key = _usable_res_key(images, scalefactors, img_res_key, lib, spatial_key)
            scale_key = f"tissue_{res_key}_scalef"
            if scale_key not in scalefactors:
                raise KeyError(
                    f"adata.uns[{spatial_key!r}][{lib!r}]['scalefactors'] lacks {scale_key!r}, which maps "
                    f"obsm[{spatial_key!r}] to pixels of the {res_key!r} image."
                )
            scale = float(scalefactors[scale_key])
            library.source_kind = res_key
            array, desc = (
                images[res_key],
                f"adata.uns[{spatial_key!r}][{lib!r}]['images'][{res_key!r}]",
            )
            library.open_source = lambda array=array, desc=desc: nullcontext(
                _ArraySource(array, False, value_range, desc)
            )
        else:
            if explicit:
                raise ValueError(
                    f"Library {lib!r} has no image: adata.uns[{spatial_key!r}][{lib!r}]['images'] lacks "
                    f"{img_res_key!r} and its metadata has no 'fullres_image_path'. Leave it out of library_id."
                )
            continue
        diameter = _diameter_for(lib, crop_diameter, scalefactors, spatial_key)
        centres = coords[rows] * scale
        _check_finite(centres, library.spot_names, lib)
        library.centres = centres
        library.crop_diameter = diameter
        library.crop_px = max(1, round(diameter * scale))
    return libraries


def _is_single_colour(image: Any) -> bool:
    """Whether every pixel of an in-memory ``(y, x[, c])`` image has the same RGB value (alpha ignored)."""
    if _is_dask(image):  # a lazy image is not scanned whole just for this check
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


def _diameter_for(lib: str, crop_diameter, scalefactors: Mapping, spatial_key: str) -> float:
    if crop_diameter is None:
        if "spot_diameter_fullres" not in scalefactors:
            raise KeyError(
                f"adata.uns[{spatial_key!r}][{lib!r}]['scalefactors'] has no 'spot_diameter_fullres'; pass "
                "crop_diameter= (in the units of obsm coordinates)."
            )
        diameter = float(scalefactors["spot_diameter_fullres"])
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


def _file_opener(path: str, value_range, name: str) -> Callable[[], AbstractContextManager[_Source]]:
    @contextmanager
    def opener() -> Iterator[_Source]:
        with open_image(path) as image:
            yield _FileSource(image, value_range, f"{name} ({path})")

    return opener


def _spatialdata_libraries(
    sdata: Any,
    *,
    image_key: str | Sequence[str] | None,
    shapes_key: str | Sequence[str] | None,
    table_key: str | None,
    crop_diameter: float | Mapping[str, float] | None,
    value_range: tuple[float, float] | None,
) -> tuple[AnnData | None, int, list[_Library]]:
    from spatialdata.models import TableModel

    image_keys = _as_list(image_key, "image_key", list(sdata.images))
    shape_keys = _as_list(shapes_key, "shapes_key", list(sdata.shapes))
    if len(image_keys) != len(shape_keys):
        raise ValueError(
            f"image_key and shapes_key pair up one image with one shapes element; got {len(image_keys)} "
            f"image(s) and {len(shape_keys)} shapes element(s)."
        )
    table = None
    if table_key is not None:
        if table_key not in sdata.tables:
            raise KeyError(f"SpatialData has no table {table_key!r} (it has {list(sdata.tables)}).")
        table = sdata.tables[table_key]
        attrs = table.uns.get(TableModel.ATTRS_KEY, {})
        region_key, instance_key = attrs.get(TableModel.REGION_KEY_KEY), attrs.get(TableModel.INSTANCE_KEY)
        if region_key is None or instance_key is None:
            raise ValueError(
                f"Table {table_key!r} is not annotated with region/region_key/instance_key; parse it "
                "with spatialdata.models.TableModel.parse(..., region=, region_key=, instance_key=)."
            )
        regions = attrs.get(TableModel.REGION_KEY)
        regions = [regions] if isinstance(regions, str) else list(regions)

    libraries = []
    offset = 0
    for img_key, shp_key in zip(image_keys, shape_keys, strict=True):
        if img_key not in sdata.images:
            raise KeyError(f"SpatialData has no image {img_key!r} (it has {list(sdata.images)}).")
        if shp_key not in sdata.shapes:
            raise KeyError(f"SpatialData has no shapes element {shp_key!r} (it has {list(sdata.shapes)}).")
        shapes = sdata.shapes[shp_key]
        if table is not None:
            if shp_key not in regions:
                raise ValueError(f"Table {table_key!r} annotates {regions}, not shapes {shp_key!r}.")
            rows = np.flatnonzero(table.obs[region_key].astype(str).to_numpy() == shp_key)
            instances = table.obs[instance_key].to_numpy()[rows]
            position = shapes.index.get_indexer(instances)
            if (position < 0).any():
                raise ValueError(
                    f"{(position < 0).sum()} table row(s) point to instances missing from shapes {shp_key!r} "
                    f"(first: {list(instances[position < 0][:3])})."
                )
            names = table.obs_names.to_numpy()[rows]
        else:
            position = np.arange(len(shapes))
            rows = offset + position
            names = shapes.index.astype(str).to_numpy()
            offset += len(shapes)
        geometry = shapes.geometry.iloc[position]
        if len(geometry) and not (geometry.geom_type == "Point").all():
            raise ValueError(f"Shapes {shp_key!r} must be circles (points with a 'radius' column).")
        if "radius" not in shapes.columns:
            raise ValueError(f"Shapes {shp_key!r} have no 'radius' column; spots must be circles.")
        xy = (
            np.column_stack([geometry.x.to_numpy(), geometry.y.to_numpy()])
            if len(geometry)
            else np.zeros((0, 2))
        )
        radius = shapes["radius"].to_numpy(dtype=float)[position]

        image = sdata.images[img_key]
        data_array = _scale0(image)
        if tuple(data_array.dims) != ("c", "y", "x"):
            raise ValueError(f"Image {img_key!r} has dims {data_array.dims}; expected ('c', 'y', 'x').")
        affine = shapes_to_image(sdata, shapes, image)
        centres = xy @ affine[:2, :2].T + affine[:2, 2]
        scale = float(np.sqrt(abs(np.linalg.det(affine[:2, :2]))))
        library = _Library(name=shp_key, rows=rows, spot_names=names)
        _check_finite(centres, names, shp_key)
        if crop_diameter is None:
            if len(radius) and not np.isfinite(radius).all():
                raise ValueError(f"Shapes {shp_key!r} have missing radii; pass crop_diameter=.")
            diameter = 2 * float(np.median(radius)) * scale if len(radius) else 1.0
        else:
            diameter = _diameter_for(shp_key, crop_diameter, {}, "")
        library.centres = centres
        library.crop_diameter = diameter
        library.crop_px = max(1, round(diameter))
        library.source_kind = f"image:{img_key}"
        desc = f"image {img_key!r}"
        library.open_source = lambda a=data_array.data, desc=desc: nullcontext(
            _ArraySource(a, True, value_range, desc)
        )
        library.extra = {"image_key": img_key}
        libraries.append(library)
    n_rows = table.n_obs if table is not None else offset
    return table, n_rows, libraries


def shapes_to_image(sdata: Any, shapes: Any, image: Any) -> np.ndarray:
    """``(3, 3)`` affine from the shapes' intrinsic ``(x, y)`` to pixels of the image's ``scale0``.

    spatialdata-io's Visium and Visium HD readers register spots and images in several coordinate
    systems (the dataset's full-resolution one and one per downscaled image), so spatialdata's search
    for a path between two elements finds several equally short ones and refuses to choose. Any system
    both elements are registered in gives the map, so the image's first one that the shapes share is
    used; without a shared system the search decides.
    """
    from spatialdata.transformations import get_transformation, get_transformation_between_coordinate_systems

    axes = {"input_axes": ("x", "y"), "output_axes": ("x", "y")}
    to_shapes_cs = get_transformation(shapes, get_all=True)
    for cs, image_to_cs in get_transformation(image, get_all=True).items():
        if cs in to_shapes_cs:
            # shapes -> cs, then cs -> image pixels
            return np.linalg.solve(
                image_to_cs.to_affine_matrix(**axes), to_shapes_cs[cs].to_affine_matrix(**axes)
            )
    return get_transformation_between_coordinate_systems(sdata, shapes, image).to_affine_matrix(**axes)


def _as_list(value, name: str, available: list[str]) -> list[str]:
    if value is None:
        if len(available) == 1:
            return list(available)
        raise ValueError(f"Pass {name}= (one of {available}).")
    return [value] if isinstance(value, str) else list(value)


def _scale0(image: Any) -> Any:
    from xarray import DataArray

    if isinstance(image, DataArray):
        return image
    from spatialdata import get_pyramid_levels

    return get_pyramid_levels(image, n=0)


# --------------------------------------------------------------------------------------------------
# crop extraction
# --------------------------------------------------------------------------------------------------


def _iter_crops(
    library: _Library,
    source: _Source,
    batch_size: int,
    pad_mode: PadMode,
    pad_value: int,
) -> Iterator[tuple[np.ndarray, np.ndarray, int]]:
    """Yield ``(rows, crops, n_padded)`` per batch: crops ``(b, s, s, 3)`` uint8, ``s = library.crop_px``."""
    size = library.crop_px
    centres = library.centres
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
    origin = _crop_origin(centres, size)
    for start in range(0, len(centres), batch_size):
        stop = min(start + batch_size, len(centres))
        x0, y0 = origin[start:stop, 0], origin[start:stop, 1]
        cx0, cy0 = np.maximum(x0, 0), np.maximum(y0, 0)
        cx1, cy1 = np.minimum(x0 + size, source.width), np.minimum(y0 + size, source.height)
        blocks = source.read(list(zip(cx0.tolist(), cy0.tolist(), cx1.tolist(), cy1.tolist(), strict=True)))
        crops = np.empty((stop - start, size, size, 3), dtype=np.uint8)
        n_padded = 0
        for k, block in enumerate(blocks):
            pads = ((cy0[k] - y0[k], y0[k] + size - cy1[k]), (cx0[k] - x0[k], x0[k] + size - cx1[k]))
            if any(p for pair in pads for p in pair):
                n_padded += 1
                pad_width = (*pads, (0, 0))
                if pad_mode == "constant":
                    block = np.pad(block, pad_width, mode="constant", constant_values=pad_value)
                else:
                    block = np.pad(block, pad_width, mode=pad_mode)
            crops[k] = block
        yield library.rows[start:stop], crops, n_padded


def _check_common(batch_size: int, pad_mode: str, pad_value: int) -> None:
    if not isinstance(batch_size, int | np.integer) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
    if pad_mode not in _PAD_MODES:
        raise ValueError(f"pad_mode must be one of {_PAD_MODES}, got {pad_mode!r}.")
    if not (0 <= pad_value <= 255):
        raise ValueError(f"pad_value must be in 0-255 (uint8 RGB), got {pad_value!r}.")


def _is_spatialdata(data: Any) -> bool:
    return type(data).__name__ == "SpatialData" and hasattr(data, "images") and hasattr(data, "shapes")


def _gather(
    data: Any,
    *,
    library_key: str,
    library_id: str | Sequence[str] | None,
    spatial_key: str,
    img_res_key: str,
    use_fullres: bool,
    image_key,
    shapes_key,
    table_key,
    crop_diameter,
    value_range,
) -> tuple[AnnData | None, int, list[_Library]]:
    """Libraries of ``data`` and the object (AnnData, table or None) whose rows the output follows."""
    if _is_spatialdata(data):
        return _spatialdata_libraries(
            data,
            image_key=image_key,
            shapes_key=shapes_key,
            table_key=table_key,
            crop_diameter=crop_diameter,
            value_range=value_range,
        )
    if not isinstance(data, AnnData):
        raise TypeError(f"Expected AnnData or SpatialData, got {type(data).__name__}.")
    libraries = _anndata_libraries(
        data,
        library_key=library_key,
        library_id=library_id,
        spatial_key=spatial_key,
        img_res_key=img_res_key,
        use_fullres=use_fullres,
        crop_diameter=crop_diameter,
        value_range=value_range,
    )
    return data, data.n_obs, libraries


def resize_crops(crops: np.ndarray, size: int | tuple[int, int]):
    """Resize uint8 crops ``(b, s, s, 3)`` to a float32 torch tensor ``(b, 3, h, w)`` in [0, 1].

    Bilinear with antialiasing (area-like when shrinking), as for tensors in torchvision.
    """
    import torch
    import torch.nn.functional as F

    h, w = (size, size) if isinstance(size, int | np.integer) else size
    x = torch.from_numpy(np.ascontiguousarray(crops)).permute(0, 3, 1, 2).float().div_(255.0)
    if x.shape[-2:] != (h, w):
        x = F.interpolate(x, size=(h, w), mode="bilinear", antialias=True, align_corners=False)
        x = x.clamp_(0.0, 1.0)
    return x


def spot_crops(
    data: AnnData | Any,
    size: int | None = None,
    *,
    library_key: str = "section",
    library_id: str | Sequence[str] | None = None,
    crop_diameter: float | Mapping[str, float] | None = None,
    spatial_key: str = "spatial",
    img_res_key: str = "hires",
    use_fullres: bool = True,
    image_key: str | Sequence[str] | None = None,
    shapes_key: str | Sequence[str] | None = None,
    table_key: str | None = "table",
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
        circle shapes and an image (see :func:`image_features` for both).
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
    _check_common(batch_size, pad_mode, pad_value)
    if size is not None and (not isinstance(size, int | np.integer) or size < 1):
        raise ValueError(f"size must be a positive integer or None, got {size!r}.")
    _, _, libraries = _gather(
        data,
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
    )
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
        with library.open_source() as source:
            for batch_rows, crops, _ in _iter_crops(library, source, batch_size, pad_mode, pad_value):
                if crops.shape[1] != size:
                    resized = (
                        resize_crops(crops, size).mul_(255.0).round_().byte().permute(0, 2, 3, 1).numpy()
                    )
                else:
                    resized = crops
                out[[position_of_row[r] for r in batch_rows.tolist()]] = resized
    return out
