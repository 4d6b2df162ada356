"""Image features that used to come out wrong without a word: odd scale factors, images and backbones."""

import copy
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from anndata import AnnData
from scipy import sparse

import spacrd


def _library(scalef=1.0, n=40, seed=0) -> AnnData:
    """One library: spots on a grid over a 200 x 200 px noise 'hires' image, spot diameter 12 px."""
    rng = np.random.default_rng(seed)
    xy = np.stack(np.meshgrid(np.linspace(20, 180, 8), np.linspace(20, 180, n // 8)), -1).reshape(-1, 2)
    adata = AnnData(
        sparse.csr_matrix(np.ones((len(xy), 2), dtype=np.float32)),
        obs=pd.DataFrame(
            {"section": pd.Categorical(["s1"] * len(xy))}, index=[f"spot{i}" for i in range(len(xy))]
        ),
    )
    adata.obsm["spatial"] = xy  # full-resolution pixels; the hires image is 1:1 here
    image = rng.integers(0, 256, size=(200, 200, 3), dtype=np.uint8)
    adata.uns["spatial"] = {
        "s1": {
            "images": {"hires": image},
            "scalefactors": {"tissue_hires_scalef": scalef, "spot_diameter_fullres": 12.0},
            "metadata": {},
        }
    }
    return adata


def _snapshot(adata):
    return copy.deepcopy(adata.uns["spatial"]), adata.obsm["spatial"].copy(), list(adata.obsm)


def _unchanged(adata, snapshot):
    uns, xy, keys = snapshot
    assert list(adata.obsm) == keys
    np.testing.assert_array_equal(adata.obsm["spatial"], xy)
    np.testing.assert_array_equal(adata.uns["spatial"]["s1"]["images"]["hires"], uns["s1"]["images"]["hires"])


@pytest.mark.parametrize(
    ("value", "error", "match"),
    [
        (0, ValueError, r"\['tissue_hires_scalef'\] must be a positive number, got 0"),
        (-1.0, ValueError, "must be a positive number"),
        (float("nan"), ValueError, "must be a positive number"),
        ("0.5", TypeError, r"\['tissue_hires_scalef'\] must be a number, got '0.5' \(str\)"),
        (None, TypeError, "must be a number, got None"),
    ],
)
def test_a_scale_factor_that_is_not_a_positive_number_is_named(value, error, match):
    adata = _library()
    adata.uns["spatial"]["s1"]["scalefactors"]["tissue_hires_scalef"] = value
    before = _snapshot(adata)
    with pytest.raises(error, match=match):
        spacrd.pp.image_features(adata)
    _unchanged(adata, before)


def test_a_spot_diameter_that_is_not_a_number_is_named():
    adata = _library()
    adata.uns["spatial"]["s1"]["scalefactors"]["spot_diameter_fullres"] = "wide"
    with pytest.raises(TypeError, match=r"\['spot_diameter_fullres'\] must be a number"):
        spacrd.pp.image_features(adata)


def test_a_scale_factor_for_another_resolution_warns_or_refuses_one_pixel_crops():
    adata = _library(scalef=0.1)  # ten times too small: spots in a corner, crops of 1.2 px
    with pytest.raises(ValueError, match=r"would be 1.2 px wide .* below 2 px.*tissue_hires_scalef"):
        spacrd.pp.image_features(adata)
    adata = _library(scalef=0.1)
    with pytest.warns(UserWarning, match="scale factor is likely that of another resolution"):
        spacrd.pp.image_features(adata, crop_diameter=60.0)  # crops of 6 px, spots within 16 x 16 px
    assert np.isfinite(adata.obsm["X_histology"]).all()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the right factor: no warning
        spacrd.pp.image_features(_library())


def test_an_img_res_key_no_library_has_is_an_error():
    adata = _library()
    before = _snapshot(adata)
    with pytest.raises(KeyError, match=r"img_res_key='hi_res' names no image of any library.*\['hires'\]"):
        spacrd.pp.image_features(adata, img_res_key="hi_res")
    _unchanged(adata, before)


def test_an_image_stored_as_a_nested_list_is_read_as_the_array():
    adata = _library()
    expected = spacrd.pp.spot_crops(adata)
    adata.uns["spatial"]["s1"]["images"]["hires"] = adata.uns["spatial"]["s1"]["images"]["hires"].tolist()
    np.testing.assert_array_equal(spacrd.pp.spot_crops(adata), expected)
    adata.uns["spatial"]["s1"]["images"]["hires"] = [["a", "b"], ["c", "d"]]
    with pytest.raises(TypeError, match="has dtype <U1; an image is a"):
        spacrd.pp.spot_crops(adata)


@pytest.mark.parametrize("size", [True, 0, 2.5, "24", 10**6])
def test_spot_crops_size_must_be_a_pixel_count(size):
    with pytest.raises((TypeError, ValueError), match=r"`size` must be an integer"):
        spacrd.pp.spot_crops(_library(), size=size)


class _FeatureMaps(torch.nn.Module):
    """A convolution without pooling: (b, 2, h, w) feature maps, not one vector per crop."""

    input_size = 16

    def __init__(self, pooled=False):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 2, 3, stride=4)
        self.pooled = pooled

    def forward(self, x):
        y = self.conv(x)
        return torch.nn.functional.adaptive_avg_pool2d(y, 1) if self.pooled else y


class _NaNForDarkCrops(torch.nn.Module):
    input_size = 8

    def forward(self, x):
        mean = x.mean(dim=(1, 2, 3))
        return torch.where(mean[:, None] < 0, torch.nan, mean[:, None]).repeat(1, 3)


def test_backbone_feature_maps_are_refused_not_flattened():
    adata = _library()
    with pytest.raises(
        ValueError, match=r"returned shape \(\d+, 2, 4, 4\).*one feature vector per crop.*pooling"
    ):
        spacrd.pp.image_features(adata, _FeatureMaps())
    assert "X_histology" not in adata.obsm
    spacrd.pp.image_features(adata, _FeatureMaps(pooled=True))  # pooled (b, d, 1, 1) maps are vectors
    assert adata.obsm["X_histology"].shape == (adata.n_obs, 2)


def test_nan_backbone_rows_warn_instead_of_passing_for_no_image():
    adata = _library()
    adata.uns["spatial"]["s1"]["images"]["hires"][:, :100] = 0  # dark left half: normalised mean < 0
    with pytest.warns(UserWarning, match=r"returned NaN features for \d+ of the 40 spots of library 's1'"):
        spacrd.pp.image_features(adata, _NaNForDarkCrops())
    assert np.isnan(adata.obsm["X_histology"]).any()


def test_identical_features_for_every_spot_warn():
    adata = _library()
    adata.uns["spatial"]["s1"]["images"]["hires"][:] = 128  # a blank image: a placeholder, not an H&E
    with pytest.warns(UserWarning, match="Every spot of library 's1' got the same image features"):
        spacrd.pp.image_features(adata)
