"""Lazy image sources: TIFF files read by tile and dask arrays read by chunk, with a bounded cache."""

import numpy as np
import pytest
import tifffile
from PIL import Image

import spacrd
from spacrd.pp._image_sources import ChunkedSource, PillowSource, dask_source, open_file_source

#: boxes (x0, y0, x1, y1): inside one tile, across four tiles, at the far corner
BOXES = [(10, 20, 40, 50), (240, 250, 300, 290), (1960, 2100, 2000, 2138)]


@pytest.fixture(scope="module")
def a1_png(her2st_root):
    """The real A1 H&E (2,000 x 2,138 PNG) as RGB."""
    path = her2st_root / "app" / "www" / "imgs" / "A1_HE_image_dark.png"
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def _tiles_touched(boxes, tile, tile_x=None):
    tile_x = tile if tile_x is None else tile_x
    return {
        (ty, tx)
        for x0, y0, x1, y1 in boxes
        for ty in range(y0 // tile, (y1 - 1) // tile + 1)
        for tx in range(x0 // tile_x, (x1 - 1) // tile_x + 1)
    }


@pytest.mark.parametrize(
    ("layout", "chunk"),
    [
        ({"tile": (256, 256), "compression": "zlib"}, (256, 256)),  # tiled
        ({"rowsperstrip": 64, "compression": "zlib"}, (64, 2000)),  # striped
        ({}, (1024, 1024)),  # uncompressed and contiguous: memory-mapped in 1024 px blocks
    ],
    ids=["tiled", "striped", "contiguous"],
)
def test_tiff_reads_only_the_requested_boxes_and_matches_pillow(a1_png, tmp_path, layout, chunk):
    path = tmp_path / "a1.tif"
    tifffile.imwrite(path, a1_png, photometric="rgb", **layout)
    with Image.open(path) as image:  # Pillow's decoding of the same file
        pillow = np.asarray(image.convert("RGB"))
    np.testing.assert_array_equal(pillow, a1_png)
    with open_file_source(str(path), None, "a1") as source:
        assert isinstance(source, ChunkedSource) and (source.height, source.width) == a1_png.shape[:2]
        blocks = source.read(BOXES)
        for block, (x0, y0, x1, y1) in zip(blocks, BOXES, strict=True):
            np.testing.assert_array_equal(block, pillow[y0:y1, x0:x1])
        touched = _tiles_touched(BOXES, *chunk)
        assert source.chunks_read == len(touched)
        assert len(touched) < 0.2 * (-(-2138 // chunk[0]) * -(-2000 // chunk[1])) or chunk[0] == 1024
        source.read(BOXES[:2])  # cached: nothing decoded again
        assert source.chunks_read == len(touched)


def test_pyramidal_tiff_reads_level_0(tmp_path):
    full = np.random.default_rng(0).integers(0, 256, size=(300, 400, 3), dtype=np.uint8)
    path = tmp_path / "pyramid.tif"
    with tifffile.TiffWriter(path) as tif:
        tif.write(full, tile=(128, 128), photometric="rgb", subifds=1)
        tif.write(full[::2, ::2].copy(), tile=(128, 128), photometric="rgb", subfiletype=1)
    with open_file_source(str(path), None, "pyramid") as source:
        assert (source.height, source.width) == (300, 400)
        np.testing.assert_array_equal(source.read([(100, 50, 390, 290)])[0], full[50:290, 100:390])


def test_tiff_and_png_give_the_same_features(a1_png, tmp_path, her2st_root):
    adata = spacrd.datasets.her2st("A1", path=her2st_root)
    png = spacrd.pp.image_features(adata, copy=True)
    path = tmp_path / "a1.tif"
    tifffile.imwrite(path, a1_png, photometric="rgb", tile=(256, 256), compression="zlib")
    scale = adata.uns["spatial"]["A1"]["scalefactors"]["tissue_hires_scalef"]
    adata.obsm["spatial"] = adata.obsm["spatial"] * scale  # the TIFF is the image obsm must point into
    adata.uns["spatial"]["A1"]["scalefactors"]["spot_diameter_fullres"] *= scale
    adata.uns["spatial"]["A1"]["metadata"]["fullres_image_path"] = str(path)
    spacrd.pp.image_features(adata)
    assert adata.uns["X_histology"]["image_source"] == {"A1": "fullres"}
    np.testing.assert_array_equal(adata.obsm["X_histology"], png.obsm["X_histology"])


def test_palette_tiff_falls_back_to_pillow(tmp_path):
    path = tmp_path / "palette.tif"
    Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8)).convert("P").save(path)
    with open_file_source(str(path), None, "palette") as source:
        assert isinstance(source, PillowSource)


def _read_all(source, x0, y0, order, image, batch=16, side=20):
    for start in range(0, len(order), batch):
        idx = order[start : start + batch]
        boxes = [
            (int(x), int(y), int(x) + side, int(y) + side) for x, y in zip(x0[idx], y0[idx], strict=True)
        ]
        for block, (bx0, by0, bx1, by1) in zip(source.read(boxes), boxes, strict=True):
            np.testing.assert_array_equal(block, np.moveaxis(image[:, by0:by1, bx0:bx1], 0, -1))
        # the cache stays within its budget unless this batch alone needs more
        needed = len(_tiles_touched(boxes, 64))
        assert source._cached <= max(source._cache_bytes, needed * 64 * 64 * 3)
    return source.chunks_read


def test_dask_source_reads_band_by_band_with_a_bounded_cache():
    import dask.array as da

    image = np.random.default_rng(1).integers(0, 256, size=(3, 512, 640), dtype=np.uint8)
    rng = np.random.default_rng(2)
    x0, y0 = rng.integers(0, 640 - 20, 400), rng.integers(0, 512 - 20, 400)

    def fresh():
        source = dask_source(da.from_array(image, chunks=(3, 64, 64)), "cyx", None, "dask image")
        source._cache_bytes = 12 * 64 * 64 * 3  # 12 of the image's 80 chunks
        return source

    source = fresh()
    order = source.order(x0, y0)
    assert (np.diff(y0[order] // 64) >= 0).all()  # band by band
    banded = _read_all(source, x0, y0, order, image)
    unordered = _read_all(fresh(), x0, y0, np.arange(400), image)
    # band order decodes each chunk about once (crops straddling two bands decode the lower one early)
    assert banded <= 2 * 80 < unordered
