import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import shapely
from anndata import AnnData

import spacrd


def _grid(n=10, step=100.0, mpp=0.5):
    xy = np.stack(np.meshgrid(np.arange(n), np.arange(n)), -1).reshape(-1, 2) * step
    obs = pd.DataFrame({"section": "S1"}, index=[f"s{i}" for i in range(len(xy))])
    spatial = {"S1": {"scalefactors": {"spot_diameter_fullres": 60.0}, "metadata": {}}}
    if mpp is not None:
        spatial["S1"]["metadata"]["microns_per_pixel"] = mpp
    return AnnData(obs=obs, obsm={"spatial": xy}, uns={"spatial": spatial})


def _same(a, b) -> bool:
    """Equal up to the millionth of a spacing the tiles' Voronoi diagram shifts spots by."""
    return shapely.symmetric_difference(a, b).area < 1e-6 * max(a.area, b.area)


def _call(adata, cells):
    xy = adata.obsm["spatial"] / 100
    called = np.zeros(adata.n_obs, dtype=bool)
    for x, y in cells:
        called |= (xy[:, 0] == x) & (xy[:, 1] == y)
    adata.obs["ctr"] = pd.Categorical(
        np.where(called, "cancer", "non-cancer"), categories=["non-cancer", "cancer"]
    )
    adata.obs["ctr_prob"] = np.where(called, 0.8, 0.1)
    return called


def test_region_is_the_union_of_tiles_with_its_hole_and_area():
    adata = _grid()
    ring = [(x, y) for x in range(2, 7) for y in range(2, 7) if (x, y) != (4, 4)]
    called = _call(adata, [*ring, (8, 8)])  # and a lone spot far away
    regions = spacrd.tl.ctr_regions(adata)
    assert list(regions.columns) == [
        "section",
        "classification",
        "area_um2",
        "n_spots",
        "mean_ctr_prob",
        "geometry",
    ]
    (row,) = regions.itertuples()
    assert row.section == "S1" and row.classification == "Tumor"
    polygon = row.geometry
    assert polygon.geom_type == "Polygon" and len(polygon.interiors) == 1  # the uncalled centre is a hole
    # interior tiles are the 100 px squares around each centre: 24 of them, at 0.5 µm per pixel
    assert polygon.area == pytest.approx(24 * 100**2)
    assert row.area_um2 == pytest.approx(24 * 100**2 * 0.25)
    assert row.n_spots == 24 and row.mean_ctr_prob == pytest.approx(0.8)
    assert _same(polygon, shapely.box(150, 150, 650, 650) - shapely.box(350, 350, 450, 450))
    # the lone spot is an island of one tile: dropped by default, kept with min_tiles=0
    kept = spacrd.tl.ctr_regions(adata, min_tiles=0).geometry.iloc[0]
    assert kept.geom_type == "MultiPolygon" and kept.contains(shapely.Point(800, 800))
    assert not polygon.contains(shapely.Point(800, 800))
    assert called.sum() == 25


def test_min_area_in_um2_and_unknown_pixel_size():
    adata = _grid(mpp=None)
    _call(adata, [(x, y) for x in range(2, 4) for y in range(2, 4)])
    regions = spacrd.tl.ctr_regions(adata)
    assert np.isnan(regions["area_um2"].iloc[0])
    with pytest.raises(ValueError, match="microns_per_unit"):
        spacrd.tl.ctr_regions(adata, min_area=100.0)
    # 4 tiles of 100 × 100 px at 2 µm per px = 160,000 µm²
    assert len(spacrd.tl.ctr_regions(adata, min_area=150_000, microns_per_unit=2.0)) == 1
    assert len(spacrd.tl.ctr_regions(adata, min_area=170_000, microns_per_unit=2.0)) == 0
    adata.obs["ctr"] = "non-cancer"
    assert len(spacrd.tl.ctr_regions(adata)) == 0  # no called spot: no row
    with pytest.raises(KeyError, match=r"model\.predict"):
        spacrd.tl.ctr_regions(adata, call_key="missing")


@pytest.fixture(scope="module")
def a1_called():
    adata = spacrd.datasets.her2st_ctr()
    adata = adata[adata.obs["section"].isin(["A1", "B1"])].copy()
    adata.obs["ctr"] = pd.Categorical(
        np.where(adata.obs["cancer"].to_numpy(dtype=bool), "cancer", "non-cancer"),
        categories=["non-cancer", "cancer"],
    )
    adata.obs["ctr_prob"] = np.random.default_rng(0).uniform(size=adata.n_obs)
    return adata


def test_exported_real_regions_contain_exactly_the_called_spots(a1_called, tmp_path):
    adata = a1_called
    regions = spacrd.tl.ctr_regions(adata, min_tiles=0)
    spacrd.io.write_geojson(regions, tmp_path / "regions.geojson")
    back = gpd.read_file(tmp_path / "regions.geojson")  # plain geopandas, as any GIS tool would read it
    assert list(back["objectType"]) == ["annotation"] * 2 and back.is_valid.all()
    for section, geometry in zip(regions["section"], back.geometry, strict=True):
        rows = (adata.obs["section"] == section).to_numpy()
        xy = adata.obsm["spatial"][rows]
        called = (adata.obs["ctr"] == "cancer").to_numpy()[rows]
        inside = shapely.intersects_xy(geometry, xy[:, 0], xy[:, 1])
        np.testing.assert_array_equal(inside, called)
    # A1: 0.917 µm per pixel is recorded, so the area is in µm²; the tiles of a 200 µm grid are ~0.035 mm²
    a1 = regions.set_index("section").loc["A1"]
    assert a1["n_spots"] == (adata.obs["ctr"][adata.obs["section"] == "A1"] == "cancer").sum()
    per_spot = a1["area_um2"] / a1["n_spots"]
    assert 0.8 * 200**2 * np.sqrt(3) / 2 < per_spot < 1.3 * 200**2 * np.sqrt(3) / 2


def test_default_drops_only_small_islands(a1_called):
    adata = a1_called
    kept = spacrd.tl.ctr_regions(adata, library_id="A1").geometry.iloc[0]
    everything = spacrd.tl.ctr_regions(adata, library_id="A1", min_tiles=0).geometry.iloc[0]
    rows = (adata.obs["section"] == "A1").to_numpy()
    xy = adata.obsm["spatial"][rows]
    uncalled = (adata.obs["ctr"] != "cancer").to_numpy()[rows]
    assert not shapely.intersects_xy(kept, xy[uncalled, 0], xy[uncalled, 1]).any()
    dropped = shapely.get_parts(shapely.difference(everything, kept))
    tile = everything.area / (~uncalled).sum()
    assert all(part.area < 2.5 * tile * 1.5 for part in dropped)
    assert kept.area <= everything.area


def test_spatialdata_regions_stored_with_the_spots_transformations():
    from _layouts import visium_hd_sdata
    from spatialdata.transformations import get_transformation

    sdata = visium_hd_sdata(64, bin_sizes=[8, 16], images=(), dataset_id="hd")
    table = sdata.tables["square_008um"]
    table.obs["ctr"] = pd.Categorical(np.where(table.obs["cancer"], "cancer", "non-cancer"))
    regions = spacrd.tl.ctr_regions(sdata, table_key="square_008um", key_added="ctr_regions", min_tiles=0)
    assert list(regions["section"]) == ["hd_square_008um"]
    stored = sdata.shapes["ctr_regions"]
    assert shapely.equals(stored.geometry.iloc[0], regions.geometry.iloc[0])
    spots = sdata.shapes["hd_square_008um"]
    assert get_transformation(stored, get_all=True).keys() == get_transformation(spots, get_all=True).keys()
    # square bins: the region is the union of the called bins' own squares
    called = table.obs["ctr"].eq("cancer").to_numpy()
    squares = spots.geometry.to_numpy()[spots.index.get_indexer(table.obs["location_id"].to_numpy()[called])]
    assert _same(regions.geometry.iloc[0], shapely.union_all(squares))
    with pytest.raises(ValueError, match="AnnData gets only"):
        spacrd.tl.ctr_regions(table, key_added="x")


def test_regions_stay_within_one_spacing_of_their_spots(a1_called):
    """Edge tiles are cut to a disc of one spacing: no sliver of a long Voronoi cell may survive the cut."""
    from spacrd._tiles import spot_spacing

    a1 = a1_called[a1_called.obs["section"] == "A1"]
    spacing = spot_spacing(a1.obsm["spatial"])
    for label in a1.obs["label"].unique():
        (region,) = spacrd.tl.ctr_regions(a1, call_key="label", category=label, min_tiles=0).geometry
        members = a1.obsm["spatial"][(a1.obs["label"] == label).to_numpy()]
        assert region.is_valid
        farthest = shapely.distance(
            shapely.points(shapely.get_coordinates(region)), shapely.multipoints(members)
        )
        assert farthest.max() <= spacing * (1 + 1e-6), label
