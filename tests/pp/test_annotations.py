import json

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import shapely
from anndata import AnnData
from matplotlib.path import Path as MplPath
from shapely.geometry import MultiPolygon, Point, Polygon, box

import spacrd

CLASSES = {"Tumor": "cancer", "Stroma": "non-cancer"}


def _grid(n=10, step=100.0, sections=("S1",), diameter=60.0):
    """Spots on an n × n square grid per section, centres at step * (i, j) in full-resolution pixels."""
    xy = np.stack(np.meshgrid(np.arange(n), np.arange(n)), -1).reshape(-1, 2) * step
    obs = pd.DataFrame(
        {"section": pd.Categorical(np.repeat(sections, len(xy)))},
        index=[f"{s}_{i}" for s in sections for i in range(len(xy))],
    )
    spatial = {
        s: {"scalefactors": {"spot_diameter_fullres": diameter, "tissue_hires_scalef": 0.1}} for s in sections
    }
    return AnnData(
        np.ones((len(obs), 2), dtype=np.float32),
        obs=obs,
        obsm={"spatial": np.vstack([xy] * len(sections))},
        uns={"spatial": spatial},
    )


def _frame(classes, geometries):
    return gpd.GeoDataFrame({"classification": classes}, geometry=geometries)


def _at(adata, key, x, y, section="S1"):
    rows = (adata.obs["section"] == section).to_numpy()
    xy = adata.obsm["spatial"]
    hit = rows & (xy[:, 0] == x) & (xy[:, 1] == y)
    return adata.obs[key][hit].iloc[0]


# ------------------------------------------------------------------------------------- real A1
@pytest.fixture(scope="module")
def a1():
    adata = spacrd.datasets.her2st_ctr()
    return adata[adata.obs["section"] == "A1"].copy()


def _pathologist_geojson(adata, path):
    """One (Multi)Polygon per pathologist label, from the spots' tiles, written as QuPath GeoJSON."""
    parts = [
        spacrd.tl.ctr_regions(adata, call_key="label", category=label, class_name=label, min_tiles=0)
        for label in adata.obs["label"].unique()
    ]
    spacrd.io.write_geojson(gpd.GeoDataFrame(pd.concat(parts, ignore_index=True)), path)
    return path


@pytest.mark.parametrize("min_overlap", [None, 0.5])
def test_a1_pathologist_regions_come_back_as_the_labels(a1, tmp_path, min_overlap):
    path = _pathologist_geojson(a1, tmp_path / "A1.geojson")
    found = set(spacrd.io.read_annotations(path)["classification"])
    assert found == set(a1.obs["label"].unique())
    classes = {c: ("cancer" if c in ("invasive cancer", "cancer in situ") else "non-cancer") for c in found}
    classes["undetermined"] = None
    before = a1.obs.copy()
    spacrd.pp.labels_from_annotations(a1, path, classes=classes, key_added="drawn", min_overlap=min_overlap)
    labelled = (a1.obs["label"] != "undetermined").to_numpy()
    truth = np.where(a1.obs["cancer"].to_numpy(dtype=bool), "cancer", "non-cancer")
    agreement = (a1.obs["drawn"].astype(object).to_numpy()[labelled] == truth[labelled]).mean()
    assert agreement >= 0.99
    assert a1.obs["drawn"][~labelled].isna().all()  # "undetermined" was ignored
    assert list(a1.obs["drawn"].cat.categories) == ["non-cancer", "cancer"]
    pd.testing.assert_frame_equal(a1.obs.drop(columns="drawn"), before.drop(columns="drawn", errors="ignore"))
    record = a1.uns["spacrd_annotations"]["drawn"]["A1"]
    assert record["n_cancer"] == (truth[labelled] == "cancer").sum() and record["n_conflicting"] == 0
    assert record["assignment"] == ("centre" if min_overlap is None else "footprint")
    # the model takes the column as it is
    spacrd.model.SpaCRD.setup_anndata(a1, labels_key="drawn", batch_key="section")


# ------------------------------------------------------------------------------------- geometry rules
def test_holes_are_outside_and_multipolygon_parts_inside():
    adata = _grid()
    ring = Polygon(
        [(-50, -50), (450, -50), (450, 450), (-50, 450)], [[(150, 150), (250, 150), (250, 250), (150, 250)]]
    )
    islands = MultiPolygon([box(550, 550, 650, 650), box(750, 50, 850, 150)])
    spacrd.pp.labels_from_annotations(adata, _frame(["Tumor", "Stroma"], [ring, islands]), classes=CLASSES)
    assert _at(adata, "cancer", 100, 100) == "cancer"
    assert pd.isna(_at(adata, "cancer", 200, 200))  # in the hole
    assert _at(adata, "cancer", 600, 600) == "non-cancer" and _at(adata, "cancer", 800, 100) == "non-cancer"
    assert pd.isna(_at(adata, "cancer", 900, 900))  # outside every annotation
    assert adata.obs["cancer"].notna().sum() == 25 - 1 + 2


def test_unmapped_class_lists_the_classes_found():
    adata = _grid()
    frame = _frame(
        ["Tumor", "Necrosis", None], [box(0, 0, 200, 200), box(300, 300, 400, 400), box(0, 500, 50, 550)]
    )
    with pytest.raises(ValueError, match=r"\['Necrosis', 'Unclassified'\].*'Tumor' \(1\)"):
        spacrd.pp.labels_from_annotations(adata, frame, classes=CLASSES)
    assert "cancer" not in adata.obs  # nothing written on failure
    spacrd.pp.labels_from_annotations(
        adata, frame, classes={**CLASSES, "Necrosis": None, "Unclassified": None}
    )
    assert pd.isna(_at(adata, "cancer", 300, 300))  # ignored class
    assert adata.obs["cancer"].notna().sum() == 9


def test_conflicting_classes_are_unlabelled_and_counted():
    adata = _grid()
    frame = _frame(
        ["Tumor", "Stroma", "Tumor"], [box(-10, -10, 210, 210), box(90, 90, 410, 410), box(95, 95, 105, 105)]
    )
    with pytest.warns(UserWarning, match=r"4 spot\(s\) lie in annotations of both"):
        spacrd.pp.labels_from_annotations(adata, frame, classes=CLASSES)
    assert pd.isna(_at(adata, "cancer", 100, 100)) and pd.isna(_at(adata, "cancer", 200, 200))
    assert _at(adata, "cancer", 0, 0) == "cancer" and _at(adata, "cancer", 300, 300) == "non-cancer"
    assert adata.uns["spacrd_annotations"]["cancer"]["S1"]["n_conflicting"] == 4


def test_min_overlap_uses_the_spot_disc():
    adata = _grid(diameter=60.0)
    # the edge x = 110 puts the centre of the spot at (100, 0) inside, but only 2/3 of its disc's width
    frame = _frame(["Tumor"], [box(-100, -100, 110, 50)])
    spacrd.pp.labels_from_annotations(adata, frame, classes=CLASSES, key_added="by_centre")
    spacrd.pp.labels_from_annotations(adata, frame, classes=CLASSES, key_added="by_area", min_overlap=0.5)
    spacrd.pp.labels_from_annotations(adata, frame, classes=CLASSES, key_added="strict", min_overlap=0.9)
    assert _at(adata, "by_centre", 100, 0) == "cancer"
    assert _at(adata, "by_area", 100, 0) == "cancer"  # area share of the disc is about 0.67 (> 0.5)
    assert pd.isna(_at(adata, "strict", 100, 0))
    assert _at(adata, "strict", 0, 0) == "cancer"
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        spacrd.pp.labels_from_annotations(adata, frame, classes=CLASSES, min_overlap=1.5)


def test_sections_are_labelled_one_at_a_time_and_others_kept():
    adata = _grid(sections=("S1", "S2"))
    frame = _frame(["Tumor"], [box(-10, -10, 110, 110)])
    with pytest.raises(ValueError, match="library_id="):
        spacrd.pp.labels_from_annotations(adata, frame, classes=CLASSES)
    spacrd.pp.labels_from_annotations(adata, frame, classes=CLASSES, library_id="S1")
    stroma = _frame(["Stroma"], [box(-10, -10, 110, 110)])
    spacrd.pp.labels_from_annotations(adata, stroma, classes=CLASSES, library_id="S2")
    assert _at(adata, "cancer", 0, 0, "S1") == "cancer" and _at(adata, "cancer", 0, 0, "S2") == "non-cancer"
    assert set(adata.uns["spacrd_annotations"]["cancer"]) == {"S1", "S2"}
    adata.obs["label"] = "x"
    with pytest.raises(ValueError, match="another key_added"):
        spacrd.pp.labels_from_annotations(adata, frame, classes=CLASSES, library_id="S1", key_added="label")


def test_hires_pixel_annotations_and_misplaced_ones():
    adata = _grid()
    # drawn on the hires image (scale 0.1): the first 2 × 2 spots
    hires = _frame(["Tumor"], [box(-1, -1, 11, 11)])
    spacrd.pp.labels_from_annotations(adata, hires, classes=CLASSES, img_res_key="hires")
    assert adata.obs["cancer"].eq("cancer").sum() == 4
    far = _frame(["Tumor"], [box(5000, 5000, 6000, 6000)])
    with pytest.raises(ValueError, match="No spot of 'S1' lies in any annotation"):
        spacrd.pp.labels_from_annotations(adata, far, classes=CLASSES, key_added="far")
    with pytest.raises(KeyError, match="tissue_lowres_scalef"):
        spacrd.pp.labels_from_annotations(adata, hires, classes=CLASSES, img_res_key="lowres")


def test_non_areas_bad_classes_and_self_crossing_outlines():
    adata = _grid()
    with pytest.raises(ValueError, match="not areas"):
        spacrd.pp.labels_from_annotations(adata, _frame(["Tumor"], [Point(0, 0)]), classes=CLASSES)
    # a point annotation of an ignored class is fine
    frame = _frame(["Tumor", "Marker"], [box(-10, -10, 110, 110), Point(0, 0)])
    spacrd.pp.labels_from_annotations(adata, frame, classes={**CLASSES, "Marker": None})
    with pytest.raises(ValueError, match="'cancer', 'non-cancer' or None"):
        spacrd.pp.labels_from_annotations(adata, frame, classes={"Tumor": "tumour", "Marker": None})
    with pytest.raises(TypeError, match="classes"):
        spacrd.pp.labels_from_annotations(adata, frame, classes=["Tumor"])
    bowtie = Polygon([(-10, -10), (210, 210), (210, -10), (-10, 210)])  # crosses itself
    spacrd.pp.labels_from_annotations(adata, _frame(["Tumor"], [bowtie]), classes=CLASSES, key_added="bow")
    assert _at(adata, "bow", 0, 0) == "cancer" and _at(adata, "bow", 200, 0) == "cancer"
    assert adata.uns["spacrd_annotations"]["bow"]["S1"]["n_repaired"] == 1
    assert frame.geometry.iloc[1].equals(Point(0, 0))  # the user's frame is not changed


def test_reads_a_qupath_file(tmp_path):
    adata = _grid()
    ring = [[-10, -10], [210, -10], [210, 210], [-10, 210], [-10, -10]]
    features = [
        {
            "type": "Feature",
            "id": "6b3a1f0e-8d8a-4c55-9a52-7d2a3c0b9e11",
            "geometry": {"type": "Polygon", "coordinates": [ring]},
            "properties": {
                "objectType": "annotation",
                "classification": {"name": "Tumor", "color": [200, 0, 0]},
            },
        }
    ]
    (tmp_path / "a.geojson").write_text(json.dumps(features))
    spacrd.pp.labels_from_annotations(adata, tmp_path / "a.geojson", classes=CLASSES)
    assert adata.obs["cancer"].eq("cancer").sum() == 9
    assert adata.uns["spacrd_annotations"]["cancer"]["S1"]["source"] == str(tmp_path / "a.geojson")


# ------------------------------------------------------------------------------------- SpatialData
@pytest.fixture
def hd():
    from _layouts import visium_hd_sdata
    from spatialdata.transformations import Affine, get_transformation, set_transformation

    sdata = visium_hd_sdata(64, bin_sizes=[8], images=(), dataset_id="hd")
    theta = np.deg2rad(20)
    matrix = np.array(
        [
            [1.5 * np.cos(theta), -1.5 * np.sin(theta), 300.0],
            [1.5 * np.sin(theta), 1.5 * np.cos(theta), -40.0],
            [0, 0, 1],
        ]
    )
    shapes = sdata.shapes["hd_square_008um"]
    transformations = dict(get_transformation(shapes, get_all=True))
    transformations["global"] = Affine(matrix, input_axes=("x", "y"), output_axes=("x", "y"))
    set_transformation(shapes, transformations, set_all=True)
    return sdata, matrix


def _expected(table, matrix, polygon):
    """Independent check: bin centres (obsm['spatial'], full-resolution pixels) through the matrix, in the polygon."""
    xy = np.c_[table.obsm["spatial"], np.ones(table.n_obs)] @ matrix.T
    return MplPath(np.asarray(polygon.exterior.coords)).contains_points(xy[:, :2])


def test_visium_hd_bins_with_an_affine_are_labelled_in_global_coordinates(hd):
    sdata, matrix = hd
    table = sdata.tables["square_008um"]
    tumour = Polygon([(450, 150), (700, 250), (600, 480), (420, 400)])
    spacrd.pp.labels_from_annotations(
        sdata, _frame(["Tumor"], [tumour]), classes=CLASSES, table_key="square_008um"
    )
    expected = _expected(table, matrix, tumour)
    assert 10 < expected.sum() < table.n_obs - 10
    np.testing.assert_array_equal(table.obs["cancer"].eq("cancer").to_numpy(), expected)
    assert table.obs["cancer"][~expected].isna().all()
    assert "global" in table.uns["spacrd_annotations"]["cancer"]


def test_visium_hd_annotation_element_and_bin_squares(hd):
    from spatialdata.models import ShapesModel
    from spatialdata.transformations import Identity, Scale

    sdata, matrix = hd
    table = sdata.tables["square_008um"]
    tumour = Polygon([(450, 150), (700, 250), (600, 480), (420, 400)])
    # the same outline stored at half scale, mapped to global by Scale(2)
    half = Polygon(np.asarray(tumour.exterior.coords) / 2)
    sdata.shapes["pathology"] = ShapesModel.parse(
        _frame(["Tumor"], [half]), transformations={"global": Scale([2.0, 2.0], axes=("x", "y"))}
    )
    spacrd.pp.labels_from_annotations(sdata, "pathology", classes=CLASSES, key_added="from_element")
    np.testing.assert_array_equal(
        table.obs["from_element"].eq("cancer").to_numpy(), _expected(table, matrix, tumour)
    )
    # footprints: the squares, rotated and scaled like the bins; a full-overlap rule keeps only inner bins
    spacrd.pp.labels_from_annotations(sdata, "pathology", classes=CLASSES, key_added="inner", min_overlap=1.0)
    inner = table.obs["inner"].eq("cancer").to_numpy()
    assert 0 < inner.sum() < table.obs["from_element"].eq("cancer").sum()
    assert not (inner & ~table.obs["from_element"].eq("cancer").to_numpy()).any()
    sdata.shapes["elsewhere"] = ShapesModel.parse(
        _frame(["Tumor"], [half]), transformations={"other": Identity()}
    )
    with pytest.raises(ValueError, match="share"):
        spacrd.pp.labels_from_annotations(sdata, "elsewhere", classes=CLASSES)


def test_xenium_cell_circles_in_microns_are_mapped_to_global_pixels():
    from _layouts import XENIUM_PIXEL_SIZE, xenium_sdata

    sdata = xenium_sdata(200, n_genes=20)
    table = sdata.tables["table"]
    # cells are in µm with Scale(1 / pixel_size) to "global" (morphology pixels): annotate in pixels
    tumour = Polygon([(200, 200), (1100, 250), (900, 1000), (250, 900)])
    spacrd.pp.labels_from_annotations(sdata, _frame(["Tumor"], [tumour]), classes=CLASSES)
    circles = sdata.shapes["cell_circles"]
    centres_px = np.c_[circles.geometry.x, circles.geometry.y] / XENIUM_PIXEL_SIZE
    expected = MplPath(np.asarray(tumour.exterior.coords)).contains_points(centres_px)
    order = circles.index.get_indexer(table.obs["cell_id"])
    assert 20 < expected.sum() < len(expected) - 20
    np.testing.assert_array_equal(table.obs["cancer"].eq("cancer").to_numpy(), expected[order])
    # footprints: each cell's disc (radius in µm, scaled like the centres); full cover is stricter
    spacrd.pp.labels_from_annotations(
        sdata, _frame(["Tumor"], [tumour]), classes=CLASSES, key_added="full", min_overlap=1.0
    )
    full = table.obs["full"].eq("cancer").to_numpy()
    radius_px = circles["radius"].to_numpy()[order] / XENIUM_PIXEL_SIZE
    distance = shapely.distance(shapely.points(centres_px[order]), tumour.exterior)
    np.testing.assert_array_equal(
        full[distance > radius_px * 1.01], expected[order][distance > radius_px * 1.01]
    )
    assert not (full & ~expected[order]).any() and full.sum() < expected.sum()
