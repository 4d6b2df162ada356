"""SpaCRD on SpatialData objects built from the real HER2ST A1 (with its H&E) and B1 (no image) sections."""

import numpy as np
import pandas as pd
import pytest
import scvi
import spatialdata as sd
from anndata import AnnData
from scipy import sparse
from shapely.geometry import Polygon
from spatialdata.models import Image2DModel, ShapesModel, TableModel
from spatialdata.transformations import Scale

import spacrd
from spacrd.model import SpaCRD
from spacrd.model._spatialdata import prepare_table, target_table

SMALL = {"n_top_genes": 200, "n_hidden": (64,), "n_embed": 32, "n_heads": 4, "n_latent": 8}
EPOCHS = {"align_epochs": 2, "fuse_epochs": 2, "classify_epochs": 3, "enable_progress_bar": False}


@pytest.fixture(scope="module")
def adata(her2st_root):
    return spacrd.datasets.her2st(["A1", "B1"], path=her2st_root)


@pytest.fixture(scope="module")
def a1(adata):
    """A1 as AnnData, with its histology embeddings from the AnnData path."""
    a1 = adata[adata.obs["section"] == "A1"].copy()
    a1.obs["section"] = a1.obs["section"].cat.remove_unused_categories()
    spacrd.pp.image_features(a1)
    return a1


def _section(adata, section, image, table_order):
    """Elements of one section: its H&E, its spots in µm and its counts table rows.

    Both elements map into the section's coordinate system of full-resolution pixels, the PNG by its
    scale factor and the spots by 1 / (µm per pixel), so the spot centres reach the image only through
    the transformations. Shapes rows are shuffled (each instance id keeps its spot); table rows follow
    ``table_order``.
    """
    part = adata[adata.obs["section"] == section]
    lib = adata.uns["spatial"][section]
    mpp = lib["metadata"]["microns_per_pixel"]
    xy, n = part.obsm["spatial"], part.n_obs
    ids = 1000 + np.arange(n)
    shuffle = np.random.default_rng(0).permutation(n)
    region = f"{section}_spots"
    shapes = ShapesModel.parse(
        xy[shuffle] * mpp,
        geometry=0,
        radius=np.full(n, lib["scalefactors"]["spot_diameter_fullres"] / 2 * mpp),
        index=pd.Index(ids[shuffle]),
        transformations={section: Scale([1 / mpp, 1 / mpp], axes=("x", "y"))},
    )
    order = np.arange(n) if table_order is None else table_order
    table = AnnData(
        part.layers["counts"][order].copy(),
        obs=pd.DataFrame(
            {"cancer": part.obs["cancer"].to_numpy()[order], "region": region, "spot_id": ids[order]},
            index=part.obs_names[order],
        ),
        var=pd.DataFrame(index=part.var_names),
    )
    images = {}
    if image:
        scale = lib["scalefactors"]["tissue_hires_scalef"]
        images[f"{section}_he"] = Image2DModel.parse(
            np.moveaxis(lib["images"]["hires"], -1, 0),
            dims=("c", "y", "x"),
            transformations={section: Scale([1 / scale, 1 / scale], axes=("x", "y"))},
        )
    return images, {region: shapes}, table


def _spatialdata(adata, sections=("A1",), images=("A1",), table_order=None):
    parts = [_section(adata, s, s in images, table_order) for s in sections]
    tables = [table for _, _, table in parts]
    regions = [key for _, shapes, _ in parts for key in shapes]
    obs = pd.concat([t.obs for t in tables])
    obs["region"] = pd.Categorical(obs["region"], categories=regions)
    table = AnnData(sparse.vstack([t.X for t in tables]).tocsr(), obs=obs, var=tables[0].var.copy())
    return sd.SpatialData(
        images={k: v for image, _, _ in parts for k, v in image.items()},
        shapes={k: v for _, shapes, _ in parts for k, v in shapes.items()},
        tables={
            "table": TableModel.parse(table, region=regions, region_key="region", instance_key="spot_id")
        },
    )


def _a1_pixels(adata, names):
    """A1 spot centres, in pixels of the PNG, for the spots ``names``."""
    scale = adata.uns["spatial"]["A1"]["scalefactors"]["tissue_hires_scalef"]
    return adata[names].obsm["spatial"] * scale


# ------------------------------------------------------------------------------------------------
# the table: spot centres and embeddings from the elements
# ------------------------------------------------------------------------------------------------


def test_prepare_table_matches_anndata_and_writes_only_its_keys(adata, a1):
    order = np.random.default_rng(1).permutation(a1.n_obs)  # table rows in yet another order
    sdata = _spatialdata(adata, table_order=order)
    table = sdata.tables["table"]
    before = table.copy()
    geometry = sdata.shapes["A1_spots"].geometry.copy()

    returned = prepare_table(sdata, image_key="A1_he")

    assert returned is table
    assert set(table.obsm) == {"spatial", "X_histology"} and set(table.uns) - set(before.uns) == {
        "X_histology"
    }
    pd.testing.assert_frame_equal(table.obs, before.obs)
    assert (table.X != before.X).nnz == 0
    assert sdata.shapes["A1_spots"].geometry.equals(geometry)
    # centres in pixels of the PNG, matched to rows by instance id
    np.testing.assert_allclose(table.obsm["spatial"], _a1_pixels(adata, table.obs_names), rtol=0, atol=1e-9)
    np.testing.assert_array_equal(table.obsm["X_histology"], a1[table.obs_names].obsm["X_histology"])
    assert table.uns["X_histology"]["crop_size_px"] == {"A1_spots": 31}

    # entries already there are kept, not recomputed
    table.obsm["spatial"] = np.zeros((table.n_obs, 2))
    table.obsm["X_histology"] = np.ones((table.n_obs, 3), dtype=np.float32)
    prepare_table(sdata, image_key="A1_he")
    assert (table.obsm["spatial"] == 0).all() and table.obsm["X_histology"].shape == (table.n_obs, 3)


def test_section_without_image(adata, a1):
    sdata = _spatialdata(adata, sections=("A1", "B1"), images=("A1",))
    SpaCRD.setup_spatialdata(sdata, image_key={"A1_spots": "A1_he"}, labels_key="cancer")
    table = sdata.tables["table"]
    is_a1 = (table.obs["region"] == "A1_spots").to_numpy()
    np.testing.assert_allclose(
        table.obsm["spatial"][is_a1], _a1_pixels(adata, table.obs_names[is_a1]), atol=1e-9
    )
    # without an image, B1's centres stay in its spots' own units (µm)
    b1 = adata[table.obs_names[~is_a1]]
    mpp = adata.uns["spatial"]["B1"]["metadata"]["microns_per_pixel"]
    np.testing.assert_allclose(table.obsm["spatial"][~is_a1], b1.obsm["spatial"] * mpp, rtol=1e-12)
    features = table.obsm["X_histology"]
    np.testing.assert_array_equal(features[is_a1], a1[table.obs_names[is_a1]].obsm["X_histology"])
    assert np.isnan(features[~is_a1]).all()
    # the region column is the section: neighbours never cross from A1 to B1
    assert SpaCRD(sdata).setup_args["batch_key"] == "region"
    neighbors = table.obsm["spacrd_neighbors"]
    assert is_a1[neighbors[is_a1]].all() and not is_a1[neighbors[~is_a1]].any()


def test_expression_only_setup(adata):
    sdata = _spatialdata(adata)
    SpaCRD.setup_spatialdata(sdata, labels_key="cancer", batch_key="region")
    table = sdata.tables["table"]
    assert "X_histology" not in table.obsm and "X_histology" not in table.uns
    model = SpaCRD(sdata, **SMALL)
    assert model.adata is table and model.setup_args["image_key"] is None
    assert model.module.image_encoder is None


# ------------------------------------------------------------------------------------------------
# training and prediction
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(adata):
    sdata = _spatialdata(adata)
    scvi.settings.seed = 0
    SpaCRD.setup_spatialdata(sdata, image_key="A1_he", labels_key="cancer")
    model = SpaCRD(sdata, **SMALL)
    model.train(**EPOCHS)
    return model, sdata


def test_train_and_predict_on_spatialdata(trained):
    model, sdata = trained
    table = sdata.tables["table"]
    assert model.adata is table and model.setup_args["image_key"] == "X_histology"
    assert model.module.n_image_features == table.obsm["X_histology"].shape[1]
    prob = model.predict(sdata)
    assert prob.shape == (table.n_obs,) and ((prob >= 0) & (prob <= 1)).all()
    np.testing.assert_array_equal(table.obs["ctr_prob"].to_numpy(), prob)
    assert list(table.obs["ctr"].cat.categories) == ["non-cancer", "cancer"]
    assert table.uns["spacrd"]["prob_key"] == "ctr_prob"
    latent = model.get_latent_representation(sdata)
    assert latent.shape == (table.n_obs, 8) and np.isfinite(latent).all()


def test_spatialdata_and_anndata_paths_agree(trained, adata, a1):
    model, sdata = trained
    prob = model.predict(sdata)
    table = sdata.tables["table"]
    # the same spots as AnnData: coordinates in full-resolution pixels, embeddings from the AnnData path
    target = a1.copy()
    np.testing.assert_allclose(model.predict(target), prob, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(target.obs_names, table.obs_names)
    np.testing.assert_allclose(
        model.get_latent_representation(target), model.get_latent_representation(sdata), rtol=1e-5, atol=1e-6
    )

    # a SpatialData target without embeddings: computed from the image named, rows matched by instance id
    order = np.random.default_rng(2).permutation(a1.n_obs)
    fresh = _spatialdata(adata, table_order=order)
    fresh_prob = model.predict(fresh, image_key="A1_he")
    fresh_table = fresh.tables["table"]
    assert "X_histology" in fresh_table.obsm and "ctr_prob" in fresh_table.obs
    np.testing.assert_allclose(fresh_prob, prob[order], rtol=1e-5, atol=1e-6)

    # the same model trained through setup_anndata gives the same predictions
    source = a1.copy()
    scvi.settings.seed = 0
    SpaCRD.setup_anndata(
        source, layer="counts", labels_key="cancer", batch_key="section", image_key="X_histology"
    )
    twin = SpaCRD(source, **SMALL)
    twin.train(**EPOCHS)
    np.testing.assert_array_equal(twin.gene_names, model.gene_names)
    np.testing.assert_allclose(twin.predict(), prob, rtol=1e-4, atol=1e-5)


def test_target_without_image(trained, adata):
    model, _ = trained
    b1 = _spatialdata(adata, sections=("B1",), images=())
    table = target_table(model.input_spec, model.adata, b1, "table", None)
    # no image to embed: the table gets its centres only, and the model predicts it from expression
    assert table is b1.tables["table"]
    assert set(table.obsm) == {"spatial"} and "X_histology" not in table.uns
    assert (
        target_table(model.input_spec, model.adata, table, "table", None) is table
    )  # AnnData passes through


# ------------------------------------------------------------------------------------------------
# errors
# ------------------------------------------------------------------------------------------------


def test_errors(adata, trained):
    model, _ = trained
    sdata = _spatialdata(adata)
    with pytest.raises(KeyError, match="no table 'counts'"):
        prepare_table(sdata, "counts")
    with pytest.raises(KeyError, match="no image 'he'"):
        prepare_table(sdata, image_key="he")
    with pytest.raises(TypeError, match="Expected a SpatialData"):
        prepare_table(sdata.tables["table"])
    with pytest.raises(ValueError, match="set up for SpaCRD"):
        SpaCRD(sdata)

    sdata.shapes["other"] = sdata.shapes["A1_spots"].copy()
    with pytest.raises(ValueError, match=r"annotates \['A1_spots'\], not shapes 'other'"):
        prepare_table(sdata, shapes_key="other")
    sdata.tables["table"].uns["spatialdata_attrs"]["region"] = ["A1_spots", "other"]
    with pytest.raises(ValueError, match=r"annotate \['A1_spots'\], which shapes_key=\['other'\] leaves out"):
        prepare_table(sdata, shapes_key="other")
    with pytest.raises(ValueError, match="image_key maps shapes"):
        prepare_table(sdata, image_key={"B1_spots": "A1_he"})

    sdata = _spatialdata(adata)
    spots = sdata.shapes["A1_spots"]
    spots.loc[spots.index[:2], "radius"] = np.nan
    with pytest.raises(ValueError, match="missing or infinite radii"):
        prepare_table(sdata)
    spots.drop(columns="radius", inplace=True)  # spatialdata's parser refuses this; an edit can do it
    with pytest.raises(ValueError, match="not circles"):
        prepare_table(sdata)
    # square polygons are spots too (Visium HD bins), centred on their centroid
    square = Polygon([(0, 0), (1, 0), (1, 1), (0, 1)])
    sdata.shapes["A1_spots"] = ShapesModel.parse(spots.assign(geometry=[square] * len(spots)))
    np.testing.assert_allclose(prepare_table(sdata).obsm["spatial"], 0.5)

    sdata = _spatialdata(adata)
    table = sdata.tables["table"]
    table.obs["spot_id"] = table.obs["spot_id"].to_numpy() + 5
    with pytest.raises(ValueError, match=r"5 row\(s\) of table 'table' point to instances missing"):
        prepare_table(sdata)
    table.obs["spot_id"] = 1000
    with pytest.raises(ValueError, match=r"several rows for instance\(s\) \[1000\]"):
        prepare_table(sdata)
    del table.uns["spatialdata_attrs"]
    with pytest.raises(ValueError, match="does not say which shapes it annotates"):
        prepare_table(sdata)
    assert "spatial" not in table.obsm and "X_histology" not in table.obsm  # nothing written on failure

    # embeddings are computed only when an image is named: without, expression alone, as for an AnnData
    two = _spatialdata(adata)
    two.images["A1_copy"] = two.images["A1_he"]
    with pytest.warns(UserWarning, match=r"no obsm\['X_histology'\].*pass its H&E image as `image_key=`"):
        model.predict(two)
    assert "X_histology" not in two.tables["table"].obsm
    model.predict(two, image_key="A1_copy")
    assert "X_histology" in two.tables["table"].obsm
    with pytest.raises(KeyError, match="no table 'counts'"):
        model.predict(two, table_key="counts")
