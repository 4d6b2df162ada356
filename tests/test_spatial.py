"""The SpatialData adapter: spots as circles, square bins and cell polygons, mapped into image pixels."""

import sys

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import spatialdata as sd
from anndata import AnnData
from shapely import affinity
from shapely.geometry import Point, Polygon
from spatialdata.models import Image2DModel, ShapesModel, TableModel
from spatialdata.transformations import Affine, Identity, Scale, Sequence, Translation

import spacrd
from spacrd import _spatial
from spacrd.model._spatialdata import prepare_table

#: shapes (µm) -> image pixels: x_px = 2 x + 10, y_px = 2 y + 20
SCALE, SHIFT = 2.0, np.array([10.0, 20.0])
SHAPES_TO_PIXELS = Sequence([Scale([SCALE, SCALE], axes=("x", "y")), Translation(SHIFT, axes=("x", "y"))])
#: intrinsic centres (µm) of the spots; shapes rows are stored in a shuffled order
CENTRES = np.array([[20.0, 15.0], [60.0, 40.0], [35.0, 70.0], [80.0, 20.0]])


def _noise(height=200, width=220, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(3, height, width), dtype=np.uint8)


def _sdata(geoms, *, radius=None, name="spots", shapes_cs=SHAPES_TO_PIXELS, image_cs=None, pixels=None):
    """One shapes element (index 10, 11, ...; rows shuffled) with a table in another order, and an image."""
    n = len(geoms)
    ids = 10 + np.arange(n)
    shuffle = np.array([2, 0, 3, 1])[:n]
    frame = gpd.GeoDataFrame({"geometry": [geoms[i] for i in shuffle]}, index=pd.Index(ids[shuffle]))
    if radius is not None:
        frame["radius"] = np.asarray(radius, dtype=float)[shuffle]
    shapes = ShapesModel.parse(frame, transformations={"global": shapes_cs})
    order = np.array([1, 3, 0, 2])[:n]  # table rows: yet another order
    table = TableModel.parse(
        AnnData(
            np.zeros((n, 1), dtype=np.float32),
            obs=pd.DataFrame(
                {"region": pd.Categorical([name] * n), "instance": ids[order]},
                index=[f"row{i}" for i in order],
            ),
        ),
        region=name,
        region_key="region",
        instance_key="instance",
    )
    image = Image2DModel.parse(
        _noise() if pixels is None else pixels,
        dims=("c", "y", "x"),
        transformations={"global": image_cs or Identity()},
        chunks=(3, 64, 64),
    )
    return sd.SpatialData(images={"he": image}, shapes={name: shapes}, tables={"table": table}), order


def _square(cx, cy, side, angle=0.0):
    half = side / 2
    square = Polygon(
        [(cx - half, cy - half), (cx + half, cy - half), (cx + half, cy + half), (cx - half, cy + half)]
    )
    return affinity.rotate(square, angle, origin=(cx, cy))


def _expected_pixels(order):
    return CENTRES[order] * SCALE + SHIFT


def test_square_bins_centre_and_side_under_scale_and_translation():
    # squares as spatialdata-io's Visium HD reader makes them: circles.buffer(radius, cap_style=3)
    bins = gpd.GeoSeries([Point(x, y) for x, y in CENTRES]).buffer(3.0, cap_style=3)
    sdata, order = _sdata(list(bins), name="ds_square_008um")
    table = sdata.tables["table"]
    spots = _spatial.table_spots(sdata, table, "ds_square_008um", _spatial.table_keys(table), "table")
    assert spots.kind == "square"
    np.testing.assert_array_equal(spots.rows, np.arange(4))
    np.testing.assert_allclose(spots.centres, CENTRES[order])
    in_pixels = spots.transformed(_spatial.shapes_to_image(sdata, "ds_square_008um", "he"))
    np.testing.assert_allclose(in_pixels.centres, _expected_pixels(order), atol=1e-9)
    assert in_pixels.diameter == pytest.approx(6.0 * SCALE)  # the bin's side, in image pixels


def test_rotated_squares_are_squares_and_rectangles_are_not():
    rotated = [_square(x, y, 4.0, angle=30) for x, y in CENTRES]
    kind, centres, widths = _spatial.spot_geometry(gpd.GeoDataFrame(geometry=rotated), "r")
    assert kind == "square"
    np.testing.assert_allclose(centres, CENTRES)
    np.testing.assert_allclose(widths, 4.0)
    rectangles = [affinity.scale(_square(x, y, 4.0), 1.5, 1.0) for x, y in CENTRES]
    kind, _, widths = _spatial.spot_geometry(gpd.GeoDataFrame(geometry=rectangles), "r")
    assert kind == "polygon"
    np.testing.assert_allclose(widths, 2 * np.sqrt(24.0 / np.pi))  # area 6 x 4


def test_cell_polygons_use_centroid_and_equivalent_diameter():
    # irregular cells: an L-shape and triangles, whose centroid differs from their bounding-box centre
    cells = [
        Polygon([(0, 0), (12, 0), (12, 4), (4, 4), (4, 12), (0, 12)]),
        Polygon([(0, 0), (9, 0), (0, 9)]),
        Polygon([(0, 0), (6, 0), (6, 6), (0, 6)]),
        Polygon([(0, 0), (10, 0), (5, 3)]),
    ]
    # place each cell so that its centroid is at CENTRES
    cells = [
        affinity.translate(c, *(CENTRES[i] - np.array(c.centroid.coords[0]))) for i, c in enumerate(cells)
    ]
    sdata, order = _sdata(cells, name="cell_boundaries")
    crops = spacrd.pp.spot_crops(sdata, image_key="he", shapes_key="cell_boundaries")
    areas = np.array([c.area for c in cells])
    median_diameter = float(np.median(2 * np.sqrt(areas / np.pi))) * SCALE  # not a square: mixed shapes
    size = round(median_diameter)
    assert crops.shape == (4, size, size, 3)
    image = np.moveaxis(_noise(), 0, -1)
    for crop, (x, y) in zip(crops, _expected_pixels(order), strict=True):
        x0, y0 = int(np.floor(x - (size - 1) / 2 + 0.5)), int(np.floor(y - (size - 1) / 2 + 0.5))
        np.testing.assert_array_equal(crop, image[y0 : y0 + size, x0 : x0 + size])
    spacrd.pp.image_features(sdata, image_key="he", shapes_key="cell_boundaries")
    assert sdata.tables["table"].uns["X_histology"]["crop_diameter"]["cell_boundaries"] == pytest.approx(
        median_diameter
    )


def test_xenium_layout_circles_and_boundaries_in_microns():
    """Xenium as spatialdata-io writes it: shapes in µm scaled by 1 / pixel_size, the H&E by an Affine."""
    pixel_size = 0.2125
    to_global = Scale([1 / pixel_size, 1 / pixel_size], axes=("x", "y"))
    # the H&E is registered to the morphology pixels ("global") by an affine: here a shift and a zoom of 2
    he_to_global = Affine(
        np.array([[0.5, 0, 30.0], [0, 0.5, 10.0], [0, 0, 1]]), input_axes=("x", "y"), output_axes=("x", "y")
    )
    areas = np.array([30.0, 45.0, 60.0, 52.0])  # µm²
    sdata, order = _sdata(
        [Point(x, y) for x, y in CENTRES * pixel_size * 4],
        radius=np.sqrt(areas / np.pi),
        name="cell_circles",
        shapes_cs=to_global,
        image_cs=he_to_global,
        pixels=_noise(height=1200, width=1400),
    )
    table = sdata.tables["table"]
    spots = _spatial.table_spots(sdata, table, "cell_circles", _spatial.table_keys(table), "table")
    in_pixels = spots.transformed(_spatial.shapes_to_image(sdata, "cell_circles", "he"))
    # µm -> global pixels (÷ pixel_size) -> H&E pixels (inverse affine: -shift, ×2)
    expected = (CENTRES[order] * pixel_size * 4 / pixel_size - [30.0, 10.0]) * 2
    np.testing.assert_allclose(in_pixels.centres, expected, atol=1e-9)
    assert in_pixels.diameter == pytest.approx(np.median(2 * np.sqrt(areas / np.pi)) / pixel_size * 2)


def test_prepare_table_accepts_polygons():
    bins = [_square(x, y, 5.0) for x, y in CENTRES]
    sdata, order = _sdata(bins)
    table = prepare_table(sdata, image_key="he")
    np.testing.assert_allclose(table.obsm["spatial"], _expected_pixels(order), atol=1e-9)
    assert table.uns["X_histology"]["crop_size_px"] == {"spots": 10}


def test_unsupported_shapes_are_refused():
    mixed = gpd.GeoDataFrame(geometry=[Point(1, 1), _square(5, 5, 2)])
    with pytest.raises(ValueError, match="mix geometry types"):
        _spatial.spot_geometry(mixed, "mixed")
    with pytest.raises(ValueError, match="not circles"):
        _spatial.spot_geometry(gpd.GeoDataFrame(geometry=[Point(1, 1)]), "points")
    empty = gpd.GeoDataFrame(geometry=[_square(5, 5, 2), Polygon()])
    with pytest.raises(ValueError, match="empty or missing"):
        _spatial.spot_geometry(empty, "empty")


def test_is_spatialdata_without_importing_it(monkeypatch):
    sdata, _ = _sdata([Point(x, y) for x, y in CENTRES], radius=np.ones(4))
    assert _spatial.is_spatialdata(sdata)
    assert not _spatial.is_spatialdata(sdata.tables["table"])
    # as in a session that never imported spatialdata: an AnnData must not make it import
    for name in [m for m in sys.modules if m == "spatialdata" or m.startswith("spatialdata.")]:
        monkeypatch.delitem(sys.modules, name)
    assert not _spatial.is_spatialdata(AnnData())
    assert "spatialdata" not in sys.modules


def test_library_ids_are_coordinate_systems():
    sdata, _ = _sdata([Point(x, y) for x, y in CENTRES], radius=np.ones(4))
    assert _spatial.library_ids(sdata, ["spots"]) == ["global"]
    assert _spatial.images_in(sdata, "global") == ["he"]
    assert _spatial.images_in(sdata, "elsewhere") == []
