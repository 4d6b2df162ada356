"""spacrd on the platforms as users load them: a real Space Ranger folder, Visium HD and Xenium layouts."""

import re

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
import pytest
import scanpy as sc
import squidpy as sq
from _layouts import MARKERS, XENIUM_CHANNELS, XENIUM_PIXEL_SIZE, visium_hd_sdata, visium_sdata, xenium_sdata
from anndata import AnnData
from conftest import SHARED_DATA
from matplotlib import pyplot as plt
from matplotlib.collections import PatchCollection
from PIL import Image
from scipy import sparse
from spatialdata import read_zarr
from spatialdata.models import get_table_keys
from spatialdata.transformations import (
    Affine,
    Identity,
    Scale,
    get_transformation,
    get_transformation_between_coordinate_systems,
)
from xarray import DataArray, DataTree

import spacrd
from spacrd._spatial import shapes_to_image
from spacrd.model._spatialdata import prepare_table

SPACERANGER = SHARED_DATA / "visium_spaceranger_tiny"
#: What the fixture's ``spatial/scalefactors_json.json`` says.
SPOT_DIAMETER_FULLRES, LOWRES_SCALEF = 89.42751063343188, 0.045004502


def _read(reader: str) -> AnnData:
    if reader == "squidpy":
        return sq.read.visium(SPACERANGER)
    return sc.read_visium(SPACERANGER)  # deprecated in scanpy 1.11 in favour of squidpy's


# ------------------------------------------------------------------------------------------------
# the real Space Ranger folder: read -> image features -> plot
# ------------------------------------------------------------------------------------------------


@pytest.mark.data("visium_spaceranger_tiny")
@pytest.mark.parametrize("reader", ["squidpy", "scanpy"])
def test_spaceranger_readers_give_one_library_and_a_placeholder_hires(reader):
    adata = _read(reader)
    assert adata.shape == (100, 100)
    assert list(adata.uns["spatial"]) == ["custom"] and "section" not in adata.obs
    lib = adata.uns["spatial"]["custom"]
    assert lib["scalefactors"]["spot_diameter_fullres"] == pytest.approx(SPOT_DIAMETER_FULLRES)
    hires, lowres = lib["images"]["hires"], lib["images"]["lowres"]
    assert hires.shape == (2000, 2000, 4) and lowres.shape == (600, 600, 3)
    assert (hires[..., :3] == 0).all() and lowres.std() > 0
    assert adata.obsm["spatial"].shape == (100, 2)
    # the spots land inside the lowres image through its scale factor
    xy = adata.obsm["spatial"] * lib["scalefactors"]["tissue_lowres_scalef"]
    assert (xy > 0).all() and (xy < 600).all()


@pytest.mark.data("visium_spaceranger_tiny")
def test_image_features_on_spaceranger_folder():
    features = {}
    for reader in ("squidpy", "scanpy"):
        adata = _read(reader)
        # no section column, one library: nothing to pass; the black hires is skipped for the lowres
        with pytest.warns(
            UserWarning, match=r"\['hires'\] is a single colour .* cropping from .*\['lowres'\]"
        ):
            spacrd.pp.image_features(adata)
        meta = adata.uns["X_histology"]
        assert meta["image_source"] == {"custom": "lowres"}
        assert (
            meta["crop_size_px"] == {"custom": round(SPOT_DIAMETER_FULLRES * LOWRES_SCALEF)} == {"custom": 4}
        )
        X = adata.obsm["X_histology"]
        assert X.shape == (100, 31) and np.isfinite(X).all()
        assert (X.std(axis=0) > 0).sum() >= 25  # spots differ, unlike crops of the black placeholder
        features[reader] = X
    # scanpy's float 0-1 images and squidpy's uint8 ones are the same pixels
    np.testing.assert_allclose(features["scanpy"], features["squidpy"], rtol=1e-5, atol=1e-6)

    explicit = _read("squidpy")
    spacrd.pp.image_features(explicit, img_res_key="lowres", library_key=None)
    np.testing.assert_array_equal(explicit.obsm["X_histology"], features["squidpy"])


@pytest.mark.data("visium_spaceranger_tiny")
def test_ctr_plot_on_spaceranger_folder(tmp_path):
    adata = _read("squidpy")
    # a synthetic probability that rises towards one corner of the capture area
    rows, cols = adata.obs["array_row"].to_numpy(), adata.obs["array_col"].to_numpy()
    adata.obs["ctr_prob"] = 1 / (1 + np.exp(-(cols - 64) / 12 - (rows - 40) / 12))
    adata.obs["ctr"] = pd.Categorical(
        np.where(adata.obs["ctr_prob"] >= 0.5, "cancer", "non-cancer"), categories=["non-cancer", "cancer"]
    )
    path = tmp_path / "ctr_spaceranger.png"
    ax = spacrd.pl.ctr(
        adata,
        img_res_key="lowres",
        spot_diameter_um=55,
        call_style="spots",
        return_ax=True,
        save=path,
        show=False,
    )
    outlines = [
        c for c in ax.collections if isinstance(c, PatchCollection) and c.get_label() == "_call_outline"
    ]
    assert len(outlines) == 1 and len(outlines[0].get_paths()) == (adata.obs["ctr"] == "cancer").sum() > 0
    assert ax.get_title() == "custom: cancer probability (ctr_prob)"
    # Visium spots are 55 µm: the scale bar is drawn from the spot diameter in pixels
    bars = [a for a in ax.artists if type(a).__name__ == "AnchoredSizeBar"]
    assert len(bars) == 1
    value, unit = bars[0].txt_label.get_text().split()
    bar_um = float(value) * {"µm": 1, "mm": 1000}[unit]
    spots = next(c for c in ax.collections if isinstance(c, PatchCollection) and c.get_array() is not None)
    spot = spots.get_paths()[0].vertices
    drawn_diameter = spot[:, 0].max() - spot[:, 0].min()
    bar_units = bars[0].size_bar.get_children()[0].get_width()
    assert bar_units / drawn_diameter == pytest.approx(bar_um / 55, rel=1e-3)
    plt.close(ax.figure)
    png = np.asarray(Image.open(path).convert("RGB"))
    assert png.shape[0] > 200 and png.shape[1] > 200
    assert png.std() > 20  # the H&E and the spots are drawn, not an empty figure


@pytest.mark.data("visium_spaceranger_tiny")
def test_spatialdata_io_visium_layout_of_the_folder():
    sdata = visium_sdata(SPACERANGER, "tiny")
    assert set(sdata.images) == {"tiny_hires_image", "tiny_lowres_image"} and set(sdata.shapes) == {"tiny"}
    table = sdata.tables["table"]
    assert get_table_keys(table) == ("tiny", "region", "spot_id")
    assert list(table.obs.columns) == ["in_tissue", "array_row", "array_col", "spot_id", "region"]
    spots = sdata.shapes["tiny"]
    np.testing.assert_array_equal(spots.index, table.obs["spot_id"])
    np.testing.assert_allclose(spots["radius"], SPOT_DIAMETER_FULLRES / 2)
    assert set(get_transformation(spots, get_all=True)) == {
        "tiny",
        "tiny_downscaled_hires",
        "tiny_downscaled_lowres",
    }
    assert set(get_transformation(sdata.images["tiny_lowres_image"], get_all=True)) == {
        "tiny",
        "tiny_downscaled_lowres",
    }


@pytest.mark.data("visium_spaceranger_tiny")
def test_image_features_spatialdata_route_matches_anndata_route():
    # the reader registers spots and images in two systems each, two equally short paths apart
    sdata = visium_sdata(SPACERANGER, "tiny")
    spacrd.pp.image_features(sdata, image_key="tiny_lowres_image", shapes_key="tiny")
    adata = _read("squidpy")
    spacrd.pp.image_features(adata, img_res_key="lowres")
    table = sdata.tables["table"]
    np.testing.assert_array_equal(table.obs_names, adata.obs_names)
    np.testing.assert_array_equal(table.obsm["X_histology"], adata.obsm["X_histology"])
    assert table.uns["X_histology"]["crop_size_px"] == {"tiny": 4}
    # the model's table set-up maps the spots into the lowres pixels through the same path (the
    # reader's own obsm["spatial"], in full-resolution pixels, is kept)
    prepared = prepare_table(sdata, shapes_key="tiny", image_key="tiny_lowres_image", spatial_key="lowres_px")
    np.testing.assert_allclose(prepared.obsm["lowres_px"], adata.obsm["spatial"] * LOWRES_SCALEF)
    np.testing.assert_array_equal(prepared.obsm["spatial"], adata.obsm["spatial"])


def _one_library(images: dict, scalefactors: dict) -> AnnData:
    adata = AnnData(sparse.csr_matrix(np.ones((2, 3), dtype=np.float32)))
    adata.obsm["spatial"] = np.array([[100.0, 100.0], [300.0, 200.0]])
    adata.uns["spatial"] = {
        "lib": {"images": images, "scalefactors": {"spot_diameter_fullres": 80, **scalefactors}}
    }
    return adata


def test_single_colour_image_falls_back_to_another_resolution():
    noise = np.random.default_rng(0).integers(0, 256, (60, 60, 3), dtype=np.uint8)
    scalefactors = {"tissue_hires_scalef": 0.4, "tissue_lowres_scalef": 0.1}
    black = np.zeros((160, 160, 4), dtype=np.uint8)
    black[..., 3] = 255  # opaque black, as the fixture's tissue_hires_image.png
    adata = _one_library({"hires": black, "lowres": noise}, scalefactors)
    with pytest.warns(UserWarning, match="single colour"):
        spacrd.pp.image_features(adata)
    reference = _one_library({"lowres": noise}, scalefactors)
    spacrd.pp.image_features(reference, img_res_key="lowres")
    np.testing.assert_array_equal(adata.obsm["X_histology"], reference.obsm["X_histology"])
    assert adata.uns["X_histology"]["image_source"] == {"lib": "lowres"}
    with pytest.warns(UserWarning, match="single colour"):
        crops = spacrd.pp.spot_crops(_one_library({"hires": black, "lowres": noise}, scalefactors))
    assert crops.shape == (2, 8, 8, 3) and crops.std() > 0

    # nothing to fall back to: the image is used, with a warning saying why the features are constant
    alone = _one_library({"hires": black}, scalefactors)
    with pytest.warns(UserWarning, match="no other image"):
        spacrd.pp.image_features(alone)
    assert alone.uns["X_histology"]["image_source"] == {"lib": "hires"}
    np.testing.assert_array_equal(alone.obsm["X_histology"][0], alone.obsm["X_histology"][1])


# ------------------------------------------------------------------------------------------------
# Visium HD layout
# ------------------------------------------------------------------------------------------------

HD_ID, HD_MPP = "visium_hd", 0.2738


@pytest.fixture(scope="module")
def hd():
    return visium_hd_sdata(dataset_id=HD_ID, microns_per_pixel=HD_MPP)


def _matrix(transformation) -> np.ndarray:
    return transformation.to_affine_matrix(input_axes=("x", "y"), output_axes=("x", "y"))


def test_visium_hd_elements_and_tables(hd):
    assert set(hd.images) == {f"{HD_ID}_full_image", f"{HD_ID}_hires_image", f"{HD_ID}_lowres_image"}
    assert set(hd.tables) == {"square_002um", "square_008um", "square_016um"}
    assert set(hd.shapes) == {f"{HD_ID}_square_{b:03d}um" for b in (2, 8, 16)}
    assert hd.attrs["spatialdata_io_reader"] == "visium_hd"
    for bin_um in (2, 8, 16):
        table = hd.tables[f"square_{bin_um:03d}um"]
        shapes_name = f"{HD_ID}_square_{bin_um:03d}um"
        region, region_key, instance_key = get_table_keys(table)
        assert (region, region_key, instance_key) == (shapes_name, "region", "location_id")
        assert list(table.obs.columns[:5]) == ["in_tissue", "array_row", "array_col", "location_id", "region"]
        assert isinstance(table.obs["region"].dtype, pd.CategoricalDtype)
        assert list(table.obs["region"].cat.categories) == [shapes_name]
        assert sparse.isspmatrix_csr(table.X) and table.X.dtype == np.float32
        assert list(table.var.columns) == ["gene_ids", "feature_types", "genome"]
        assert table.n_obs < 4000  # small enough for fast tests
        # barcodes encode the bin size and the array position
        parsed = table.obs_names.str.extract(r"^s_(\d{3})um_(\d{5})_(\d{5})-1$").astype(int)
        assert (parsed[0] == bin_um).all()
        np.testing.assert_array_equal(parsed[1], table.obs["array_row"])
        np.testing.assert_array_equal(parsed[2], table.obs["array_col"])
        # instance ids are the shapes' index, in table order
        shapes = hd.shapes[shapes_name]
        assert shapes.index.name == "location_id" and shapes.index.dtype == np.int64
        np.testing.assert_array_equal(table.obs["location_id"], np.arange(table.n_obs))
        np.testing.assert_array_equal(shapes.index, table.obs["location_id"])


def test_visium_hd_bins_are_squares_of_the_bin_size(hd):
    for bin_um in (2, 8, 16):
        table = hd.tables[f"square_{bin_um:03d}um"]
        shapes = hd.shapes[f"{HD_ID}_square_{bin_um:03d}um"]
        side = bin_um / HD_MPP  # full-resolution pixels
        assert (shapes.geom_type == "Polygon").all() and "radius" not in shapes.columns
        assert (shapes.geometry.apply(lambda p: len(p.exterior.coords)) == 5).all()
        bounds = shapes.geometry.bounds
        np.testing.assert_allclose(bounds["maxx"] - bounds["minx"], side)
        np.testing.assert_allclose(bounds["maxy"] - bounds["miny"], side)
        np.testing.assert_allclose(shapes.geometry.area, side**2)  # axis-aligned, so area = side²
        centres = np.column_stack([shapes.geometry.centroid.x, shapes.geometry.centroid.y])
        np.testing.assert_allclose(centres, table.obsm["spatial"])
        # neighbouring bins touch: one array step is one bin side
        step = np.diff(np.sort(np.unique(table.obsm["spatial"][:, 0])))
        np.testing.assert_allclose(step, side)


def test_visium_hd_transforms(hd):
    hires = 0.4
    for name in hd.shapes:
        transforms = get_transformation(hd.shapes[name], get_all=True)
        assert set(transforms) == {HD_ID, f"{HD_ID}_downscaled_hires", f"{HD_ID}_downscaled_lowres"}
        assert isinstance(transforms[HD_ID], Identity)
        np.testing.assert_allclose(
            _matrix(transforms[f"{HD_ID}_downscaled_hires"]), np.diag([hires, hires, 1])
        )
    full = hd.images[f"{HD_ID}_full_image"]
    assert isinstance(full, DataTree) and list(full.children) == [f"scale{i}" for i in range(5)]
    assert (
        tuple(full["scale0"]["image"].dims) == ("c", "y", "x") and full["scale0"]["image"].dtype == np.uint8
    )
    assert get_transformation(full, get_all=True).keys() == {HD_ID}
    image = hd.images[f"{HD_ID}_hires_image"]
    assert isinstance(image, DataArray)
    transforms = get_transformation(image, get_all=True)
    assert set(transforms) == {HD_ID, f"{HD_ID}_downscaled_hires"}
    np.testing.assert_allclose(_matrix(transforms[HD_ID]), np.diag([1 / hires, 1 / hires, 1]))
    assert image.shape[1:] == tuple(round(s * hires) for s in full["scale0"]["image"].shape[1:])


def _pixels_under(sdata, shapes_name, image_name, xy, via):
    """Channels of the image at the shapes-coordinate points ``xy``, mapped through coordinate system ``via``."""
    image = sdata.images[image_name]
    affine = _matrix(
        get_transformation_between_coordinate_systems(
            sdata, sdata.shapes[shapes_name], image, intermediate_coordinate_systems=via
        )
    )
    px = xy @ affine[:2, :2].T + affine[:2, 2]
    array = np.asarray(image["scale0"]["image"] if isinstance(image, DataTree) else image)
    cols, rows = np.floor(px[:, 0]).astype(int), np.floor(px[:, 1]).astype(int)
    assert (
        (cols >= 0).all()
        and (rows >= 0).all()
        and (cols < array.shape[2]).all()
        and (rows < array.shape[1]).all()
    )
    return array[:, rows, cols].T.astype(float)


def test_visium_hd_tumour_is_in_counts_and_under_the_image(hd):
    for image_name in (f"{HD_ID}_full_image", f"{HD_ID}_hires_image", f"{HD_ID}_lowres_image"):
        table = hd.tables["square_016um"]
        rgb = _pixels_under(hd, f"{HD_ID}_square_016um", image_name, table.obsm["spatial"], HD_ID)
        tumour = table.obs["cancer"].to_numpy()
        assert 0.1 < tumour.mean() < 0.5
        # darker purple: less green, less light, on (almost) every tumour bin
        assert np.median(rgb[tumour, 1]) < np.median(rgb[~tumour, 1]) - 40
    table = hd.tables["square_008um"]
    X, tumour = table.X.toarray(), table.obs["cancer"].to_numpy()
    markers = [table.var_names.get_loc(g) for g in MARKERS]
    assert (X[tumour][:, markers].mean(0) > 2 * X[~tumour][:, markers].mean(0)).all()


def test_visium_hd_larger_bins_sum_the_2um_bins(hd):
    two, eight = hd.tables["square_002um"], hd.tables["square_008um"]
    by_position = {
        (r, c): i for i, (r, c) in enumerate(zip(two.obs["array_row"], two.obs["array_col"], strict=True))
    }
    checked = 0
    for j, (r, c) in enumerate(zip(eight.obs["array_row"], eight.obs["array_col"], strict=True)):
        children = [by_position.get((4 * r + dr, 4 * c + dc)) for dr in range(4) for dc in range(4)]
        if None in children:  # at the tissue edge some 2 µm bins were filtered out
            continue
        np.testing.assert_array_equal(
            np.asarray(two.X[children].sum(0)).ravel(), eight.X[j].toarray().ravel()
        )
        checked += 1
    assert checked > 100


def test_visium_hd_builder_arguments():
    small = visium_hd_sdata(48, bin_sizes=[8], images=("hires",), truth_key=None, dataset_id="s1")
    assert set(small.images) == {"s1_hires_image"} and set(small.tables) == {"square_008um"}
    assert "cancer" not in small.tables["square_008um"].obs
    with pytest.raises(ValueError, match="multiple of every bin size"):
        visium_hd_sdata(100, bin_sizes=[8])


def test_shapes_to_image_through_a_shared_coordinate_system(hd):
    bins = f"{HD_ID}_square_008um"
    for res, scalef in (("hires", 0.4), ("lowres", 0.1)):
        image = f"{HD_ID}_{res}_image"
        with pytest.raises(RuntimeError, match="Multiple equal paths"):
            get_transformation_between_coordinate_systems(hd, hd.shapes[bins], hd.images[image])
        np.testing.assert_allclose(shapes_to_image(hd, bins, image), np.diag([scalef, scalef, 1]), atol=1e-12)
    np.testing.assert_allclose(shapes_to_image(hd, bins, f"{HD_ID}_full_image"), np.eye(3))


def test_image_features_on_visium_hd_bins_read_as_circles():
    # visium_hd(..., bins_as_squares=False): circles of one bin diameter, which spacrd.pp reads today
    hd = visium_hd_sdata(96, bin_sizes=[8], bins_as_squares=False, images=("hires",), dataset_id=HD_ID)
    bins = hd.shapes[f"{HD_ID}_square_008um"]
    assert (bins.geom_type == "Point").all()
    np.testing.assert_allclose(bins["radius"], 4 / HD_MPP)
    table = spacrd.pp.image_features(
        hd,
        image_key=f"{HD_ID}_hires_image",
        shapes_key=f"{HD_ID}_square_008um",
        table_key="square_008um",
        copy=True,
    )
    X = table.obsm["X_histology"]
    assert np.isfinite(X).all()
    # the crop is one bin side (8 µm) in hires pixels
    assert table.uns["X_histology"]["crop_size_px"] == {f"{HD_ID}_square_008um": round(8 / HD_MPP * 0.4)}
    names = table.uns["X_histology"]["feature_names"]
    hematoxylin = X[:, names.index("h_mean")]  # haematoxylin optical density
    tumour = table.obs["cancer"].to_numpy()
    assert hematoxylin[tumour].mean() > hematoxylin[~tumour].mean()


def test_image_features_on_visium_hd_bins(hd):
    """Square bins as the reader writes them: crops one bin side wide, darker where the tumour is drawn."""
    table = spacrd.pp.image_features(
        hd,
        image_key=f"{HD_ID}_hires_image",
        shapes_key=f"{HD_ID}_square_008um",
        table_key="square_008um",
        copy=True,
    )
    assert table.uns["X_histology"]["crop_size_px"] == {f"{HD_ID}_square_008um": round(8 / HD_MPP * 0.4)}
    names = table.uns["X_histology"]["feature_names"]
    hematoxylin = table.obsm["X_histology"][:, names.index("h_mean")]
    tumour = table.obs["cancer"].to_numpy()
    assert np.isfinite(hematoxylin).all() and hematoxylin[tumour].mean() > hematoxylin[~tumour].mean()


# ------------------------------------------------------------------------------------------------
# Xenium layout
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def xe():
    return xenium_sdata(n_cells=500)


def test_xenium_elements_and_table(xe):
    assert set(xe.images) == {"morphology_focus", "he_image"}
    assert set(xe.shapes) == {"cell_circles", "cell_boundaries", "nucleus_boundaries"}
    assert set(xe.tables) == {"table"} and xe.attrs["spatialdata_io_reader"] == "xenium"
    table = xe.tables["table"]
    assert get_table_keys(table) == ("cell_circles", "region", "cell_id")
    assert table.shape == (500, 300) and sparse.isspmatrix_csr(table.X) and table.X.dtype == np.float32
    assert list(table.obs.columns[:13]) == [
        "cell_id",
        "transcript_counts",
        "control_probe_counts",
        "control_codeword_counts",
        "unassigned_codeword_counts",
        "deprecated_codeword_counts",
        "total_counts",
        "cell_area",
        "nucleus_area",
        "nucleus_count",
        "segmentation_method",
        "region",
        "z_level",
    ]
    assert table.obs["nucleus_count"].dtype == np.float64 and table.obs["z_level"].dtype == np.float64
    np.testing.assert_array_equal(table.obs["transcript_counts"], np.asarray(table.X.sum(1)).ravel())
    assert all(re.fullmatch(r"[a-p]{8}-1", c) for c in table.obs["cell_id"])
    np.testing.assert_array_equal(table.obs_names, table.obs["cell_id"])
    # instance ids: the circles' and the cell boundaries' index; nuclei carry them as a column
    for name in ("cell_circles", "cell_boundaries"):
        assert xe.shapes[name].index.name == "cell_id"
        np.testing.assert_array_equal(xe.shapes[name].index, table.obs["cell_id"])
    nuclei = xe.shapes["nucleus_boundaries"]
    assert nuclei.index.name is None and nuclei.index.dtype == np.int64
    np.testing.assert_array_equal(nuclei.index, np.arange(1, 501))
    np.testing.assert_array_equal(nuclei["cell_id"], table.obs["cell_id"])


def test_xenium_shapes_geometry(xe):
    table = xe.tables["table"]
    circles, cells, nuclei = (xe.shapes[n] for n in ("cell_circles", "cell_boundaries", "nucleus_boundaries"))
    assert (circles.geom_type == "Point").all() and (cells.geom_type == "Polygon").all()
    assert (nuclei.geom_type == "Polygon").all()
    np.testing.assert_allclose(
        np.column_stack([circles.geometry.x, circles.geometry.y]), table.obsm["spatial"]
    )
    # circle radius from the cell area (µm²), which is the boundary polygon's
    np.testing.assert_allclose(np.pi * circles["radius"] ** 2, table.obs["cell_area"])
    np.testing.assert_allclose(cells.geometry.area, table.obs["cell_area"])
    np.testing.assert_allclose(nuclei.geometry.area, table.obs["nucleus_area"])
    assert cells.geometry.contains(circles.geometry).all()
    assert cells.geometry.contains(nuclei.geometry.centroid, align=False).all()
    # a few µm across: cells 6-12 µm wide
    assert 3 < circles["radius"].median() < 6


def test_xenium_transforms(xe):
    for name in xe.shapes:
        transforms = get_transformation(xe.shapes[name], get_all=True)
        assert set(transforms) == {"global"} and isinstance(transforms["global"], Scale)
        np.testing.assert_allclose(_matrix(transforms["global"]), np.diag([1 / XENIUM_PIXEL_SIZE] * 2 + [1]))
    morphology = xe.images["morphology_focus"]
    assert isinstance(morphology, DataTree) and len(morphology.children) == 5
    scale0 = morphology["scale0"]["image"]
    assert scale0.dtype == np.uint16 and list(scale0.coords["c"].values) == list(XENIUM_CHANNELS)
    assert isinstance(get_transformation(morphology), Identity)
    he = xe.images["he_image"]
    assert isinstance(he, DataTree) and len(he.children) == 5
    assert list(he["scale0"]["image"].coords["c"].values) == ["r", "g", "b"]
    alignment = get_transformation(he, get_all=True)
    assert set(alignment) == {"global"} and isinstance(alignment["global"], Affine)
    matrix = _matrix(alignment["global"])
    # rotation × (H&E µm/px ÷ 0.2125 µm/px), no shear
    linear = matrix[:2, :2]
    np.testing.assert_allclose(linear @ linear.T, np.eye(2) * (0.36 / XENIUM_PIXEL_SIZE) ** 2, atol=1e-12)
    assert np.degrees(np.arctan2(linear[1, 0], linear[0, 0])) == pytest.approx(4.0)


def test_xenium_images_show_cells_and_tumour_where_the_table_says(xe):
    table = xe.tables["table"]
    centroids = table.obsm["spatial"]
    tumour = table.obs["cancer"].to_numpy()
    assert 0.1 < tumour.mean() < 0.5
    # DAPI is bright at every centroid (a nucleus is drawn there), dim half a cell away
    inwards = np.sign(centroids.mean(0) - centroids) * 6.0  # half a cell towards the middle, in µm
    dapi = _pixels_under(xe, "cell_circles", "morphology_focus", centroids, "global")[:, 0]
    between = _pixels_under(xe, "cell_circles", "morphology_focus", centroids + inwards * [1, 0], "global")[
        :, 0
    ]
    assert np.median(dapi) > 5 * np.median(between)
    # the H&E, through its Affine: a nucleus at each centroid, darker purple stroma around tumour cells
    he = _pixels_under(xe, "cell_circles", "he_image", centroids, "global")
    assert (he.sum(1) < 400).mean() > 0.95
    around = _pixels_under(xe, "cell_circles", "he_image", centroids + inwards * [0, 1], "global")
    assert np.median(around[tumour, 1]) < np.median(around[~tumour, 1]) - 40
    markers = [table.var_names.get_loc(g) for g in MARKERS]
    X = table.X.toarray()
    assert (X[tumour][:, markers].mean(0) > 2 * X[~tumour][:, markers].mean(0)).all()


def test_image_features_on_xenium_circles_and_aligned_he(xe):
    table = spacrd.pp.image_features(
        xe, image_key="he_image", shapes_key="cell_circles", table_key="table", copy=True
    )
    X = table.obsm["X_histology"]
    assert X.shape == (500, 31) and np.isfinite(X).all()
    # crop = one cell diameter in H&E pixels: 2 × median radius (µm) / 0.36 µm per px
    expected = round(2 * np.median(xe.shapes["cell_circles"]["radius"]) / 0.36)
    assert table.uns["X_histology"]["crop_size_px"] == {"cell_circles": expected}
    names = table.uns["X_histology"]["feature_names"]
    tumour = table.obs["cancer"].to_numpy()
    hematoxylin = X[:, names.index("h_mean")]  # haematoxylin optical density
    assert hematoxylin[tumour].mean() > hematoxylin[~tumour].mean()


# ------------------------------------------------------------------------------------------------
# the layouts survive writing to and reading from Zarr
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("build", ["visium_hd", "xenium"])
def test_layouts_round_trip_through_zarr(build, tmp_path):
    sdata = (
        visium_hd_sdata(64, bin_sizes=(8, 16))
        if build == "visium_hd"
        else xenium_sdata(n_cells=120, n_genes=40)
    )
    sdata.write(tmp_path / "data.zarr")
    back = read_zarr(tmp_path / "data.zarr")
    assert set(back.images) == set(sdata.images) and set(back.shapes) == set(sdata.shapes)
    assert set(back.tables) == set(sdata.tables)
    for name, table in sdata.tables.items():
        assert get_table_keys(back.tables[name]) == get_table_keys(table)
        pd.testing.assert_frame_equal(back.tables[name].obs, table.obs, check_categorical=False)
    for name, shapes in sdata.shapes.items():
        pd.testing.assert_index_equal(back.shapes[name].index, shapes.index)
        for cs, transformation in get_transformation(shapes, get_all=True).items():
            np.testing.assert_allclose(
                _matrix(get_transformation(back.shapes[name], cs)), _matrix(transformation)
            )
    for name, image in sdata.images.items():
        for cs, transformation in get_transformation(image, get_all=True).items():
            np.testing.assert_allclose(
                _matrix(get_transformation(back.images[name], cs)), _matrix(transformation)
            )


# ------------------------------------------------------------------------------------------------
# the model on each platform: train on one object, predict another without labels, plot it
# ------------------------------------------------------------------------------------------------

QUICK = {"fuse_epochs": 2, "classify_epochs": 4, "batch_size": 64, "enable_progress_bar": False}
SMALL_NET = {"n_embed": 16, "n_heads": 2, "n_latent": 4}


def _auc(truth, prob) -> float:
    from sklearn.metrics import roc_auc_score

    return roc_auc_score(np.asarray(truth, dtype=bool), prob)


def _plotted(data, tmp_path, name, **kwargs) -> np.ndarray:
    path = tmp_path / f"{name}.png"
    spacrd.pl.ctr(data, show=False, save=path, **kwargs)
    plt.close("all")
    png = np.asarray(Image.open(path).convert("RGB"))
    assert png.std() > 20  # tissue and spots drawn
    return png


@pytest.mark.data("visium_spaceranger_tiny")
def test_spaceranger_folder_read_features_predict_plot(tmp_path):
    """read_visium → image features → a model trained on a labelled copy → predict → pl.ctr."""
    import scvi

    source, target = _read("squidpy"), _read("squidpy")
    for adata in (source, target):
        adata.var_names_make_unique()
        with pytest.warns(UserWarning, match="single colour"):
            spacrd.pp.image_features(adata)
    rows = source.obs["array_row"].to_numpy()
    source.obs["cancer"] = rows < np.median(rows)  # synthetic labels, only to have a model
    scvi.settings.seed = 0
    spacrd.model.SpaCRD.setup_anndata(source, labels_key="cancer", image_key="X_histology")
    model = spacrd.model.SpaCRD(source, n_top_genes=50, **SMALL_NET)
    model.train(align_epochs=2, **QUICK)
    prob = model.predict(target)
    assert prob.shape == (100,) and np.isfinite(prob).all()
    assert {"ctr_prob", "ctr"} <= set(target.obs) and "cancer" not in target.obs
    _plotted(target, tmp_path, "spaceranger", img_res_key="lowres")


@pytest.fixture(scope="module")
def hd_pair():
    """Two Visium HD slides (8 µm bins) in the reader's layout: one labelled, one to predict."""
    build = {"extent_um": 256.0, "bin_sizes": (8,), "dataset_id": HD_ID, "microns_per_pixel": HD_MPP}
    return visium_hd_sdata(**build, seed=0), visium_hd_sdata(**build, seed=1, truth_key=None)


def test_visium_hd_square_bins_train_predict_plot(hd_pair, tmp_path):
    import scvi

    source, target = hd_pair
    bins, image = f"{HD_ID}_square_008um", f"{HD_ID}_hires_image"
    scvi.settings.seed = 0
    spacrd.model.SpaCRD.setup_spatialdata(
        source, table_key="square_008um", shapes_key=bins, image_key=image, labels_key="cancer", n_neighbors=9
    )
    table = source.tables["square_008um"]
    # square bins: centres at the squares' centroids, crops one bin (8 µm) wide in hires pixels
    assert table.uns["X_histology"]["crop_size_px"] == {bins: round(8 / HD_MPP * 0.4)}
    assert table.obsm["spacrd_neighbors"].shape == (table.n_obs, 9)
    model = spacrd.model.SpaCRD(source, n_top_genes=30, **SMALL_NET)
    model.train(align_epochs=2, **QUICK)
    prob = model.predict(target, table_key="square_008um", image_key=image)
    truth = visium_hd_sdata(256.0, bin_sizes=(8,), dataset_id=HD_ID, microns_per_pixel=HD_MPP, seed=1)
    assert _auc(truth.tables["square_008um"].obs["cancer"], prob) > 0.8
    assert "ctr_prob" in target.tables["square_008um"].obs
    _plotted(target, tmp_path, "visium_hd", table_name="square_008um", image_key=image)


@pytest.fixture(scope="module")
def xenium_pair():
    return xenium_sdata(n_cells=700, seed=0), xenium_sdata(n_cells=700, seed=1)


def test_xenium_panel_train_predict_plot(xenium_pair, tmp_path):
    import scvi

    source, target = xenium_pair
    truth = target.tables["table"].obs["cancer"].to_numpy()
    target.tables["table"].obs = target.tables["table"].obs.drop(columns="cancer")
    scvi.settings.seed = 0
    spacrd.model.SpaCRD.setup_spatialdata(
        source, shapes_key="cell_circles", image_key="he_image", labels_key="cancer", n_neighbors=12
    )
    panel = list(source.tables["table"].var_names)
    model = spacrd.model.SpaCRD(source, genes=panel, **SMALL_NET)  # a targeted panel: all its genes
    model.train(align_epochs=2, **QUICK)
    prob = model.predict(target, image_key="he_image")
    assert _auc(truth, prob) > 0.8
    _plotted(target, tmp_path, "xenium", table_name="table", image_key="he_image")
    # a target measured with another panel shares too few of the model's genes: a clear error
    other = target.tables["table"][:, : len(panel) // 3].copy()
    other.obsm["spatial"] = target.tables["table"].obsm["spatial"]
    with pytest.raises(
        ValueError, match=r"Only \d+ of the model's 300 genes .* targeted panel, train on its genes"
    ):
        model.predict(other)
