import json
import uuid

import geopandas as gpd
import numpy as np
import pytest
import shapely
from shapely.geometry import MultiPolygon, Point, Polygon

import spacrd
from spacrd.io import _geojson

SQUARE_WITH_HOLE = Polygon([(0, 0), (10, 0), (10, 10), (0, 10)], [[(4, 4), (6, 4), (6, 6), (4, 6)]])
TWO_PARTS = MultiPolygon([Polygon([(20, 0), (30, 0), (30, 5)]), Polygon([(40, 0), (50, 0), (50, 5)])])


@pytest.fixture
def regions():
    return gpd.GeoDataFrame(
        {
            "section": ["A1", "A1"],
            "classification": ["Tumor", "my class"],
            "area_um2": [96.0, np.nan],
            "n_spots": [3, 2],
        },
        geometry=[SQUARE_WITH_HOLE, TWO_PARTS],
    )


def test_written_file_has_qupaths_annotation_format(regions, tmp_path):
    path = spacrd.io.write_geojson(regions, tmp_path / "regions.geojson")
    document = json.loads(path.read_text())
    assert document["type"] == "FeatureCollection"
    first, second = document["features"]
    for feature in (first, second):
        assert feature["type"] == "Feature"
        uuid.UUID(feature["id"])  # QuPath 0.4+ reads the id as a UUID
        assert feature["properties"]["objectType"] == "annotation"
    # QuPath refuses a classification without a colour; its own Tumor colour for its own class
    assert first["properties"]["classification"] == {"name": "Tumor", "color": [200, 0, 0]}
    assert second["properties"]["classification"]["name"] == "my class"
    assert len(second["properties"]["classification"]["color"]) == 3
    # measurements: a flat object of numbers, non-finite ones left out; strings are not measurements
    assert first["properties"]["measurements"] == {"area_um2": 96.0, "n_spots": 3}
    assert second["properties"]["measurements"] == {"n_spots": 2}
    assert first["geometry"]["type"] == "Polygon" and len(first["geometry"]["coordinates"]) == 2
    assert second["geometry"]["type"] == "MultiPolygon"


def test_round_trip_keeps_geometry_class_and_holes(regions, tmp_path):
    spacrd.io.write_geojson(regions, tmp_path / "r.geojson")
    back = spacrd.io.read_annotations(tmp_path / "r.geojson")
    assert list(back["classification"]) == ["Tumor", "my class"]
    assert back["color"].iloc[0] == (200, 0, 0)
    assert list(back["object_type"]) == ["annotation", "annotation"]
    assert back["measurements"].iloc[0] == {"area_um2": 96.0, "n_spots": 3}
    for got, want in zip(back.geometry, regions.geometry, strict=True):
        assert shapely.equals(got, want)
    assert not back.geometry.iloc[0].contains(Point(5, 5))  # the hole
    assert back.index.name == "id"


def test_reads_what_qupath_versions_write(tmp_path):
    ring = [[0, 0], [4, 0], [4, 4], [0, 4], [0, 0]]
    features = [
        {  # 0.4-0.6: UUID id, classification object with colour, measurements as an object
            "type": "Feature",
            "id": "0b9e2e6a-7c43-4b0e-9a57-7b0b8b0f1a11",
            "geometry": {"type": "Polygon", "coordinates": [ring]},
            "properties": {
                "objectType": "annotation",
                "name": "lobe 1",
                "classification": {"name": "Tumor", "color": [200, 0, 0]},
                "measurements": {"Area µm^2": 16.0},
            },
        },
        {  # derived class
            "type": "Feature",
            "geometry": {"type": "Polygon", "coordinates": [ring]},
            "properties": {
                "objectType": "annotation",
                "classification": {"names": ["Tumor", "Positive"], "color": [1, 2, 3]},
            },
        },
        {  # 0.2: packed colour, measurements as a list, no objectType
            "type": "Feature",
            "id": "PathAnnotationObject",
            "geometry": {"type": "Polygon", "coordinates": [ring]},
            "properties": {
                "classification": {"name": "Stroma", "colorRGB": -6895466},
                "measurements": [{"name": "Area", "value": 16.0}],
            },
        },
        {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring]}, "properties": {}},
    ]
    (tmp_path / "bare.geojson").write_text(json.dumps(features))  # exported without FEATURE_COLLECTION
    (tmp_path / "fc.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    for name in ("bare.geojson", "fc.geojson"):
        frame = spacrd.io.read_annotations(tmp_path / name)
        assert list(frame["classification"]) == ["Tumor", "Tumor: Positive", "Stroma", "Unclassified"]
        assert frame["color"].iloc[2] == (150, 200, 150)  # -6895466 is QuPath's Stroma colour, packed
        assert frame["measurements"].iloc[2] == {"Area": 16.0}
        assert frame["name"].iloc[0] == "lobe 1"
        assert frame.geometry.area.tolist() == [16.0] * 4


def test_bad_files_are_refused_with_the_fix(tmp_path):
    (tmp_path / "x.geojson").write_text("not json")
    with pytest.raises(ValueError, match="not a GeoJSON"):
        spacrd.io.read_annotations(tmp_path / "x.geojson")
    (tmp_path / "y.geojson").write_text(json.dumps({"type": "Polygon", "coordinates": []}))
    with pytest.raises(ValueError, match="FeatureCollection"):
        spacrd.io.read_annotations(tmp_path / "y.geojson")
    with pytest.raises(OSError, match="Cannot read"):
        spacrd.io.read_annotations(tmp_path / "missing.geojson")


def test_write_refuses_non_areas(tmp_path):
    points = gpd.GeoDataFrame({"classification": ["Tumor"]}, geometry=[Point(0, 0)])
    with pytest.raises(ValueError, match="Polygon and MultiPolygon"):
        spacrd.io.write_geojson(points, tmp_path / "p.geojson")
    with pytest.raises(TypeError, match="GeoDataFrame"):
        spacrd.io.write_geojson(points.drop(columns="geometry"), tmp_path / "p.geojson")
    assert not list(tmp_path.iterdir())


def test_write_is_atomic(regions, tmp_path, monkeypatch):
    target = tmp_path / "regions.geojson"
    target.write_text("previous")

    def broken_dump(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(_geojson.json, "dump", broken_dump)
    with pytest.raises(OSError, match="No space left on device; nothing was written"):
        spacrd.io.write_geojson(regions, target)
    assert target.read_text() == "previous"  # the old file is intact
    assert [p.name for p in tmp_path.iterdir()] == ["regions.geojson"]  # no temporary file left
    monkeypatch.undo()
    with pytest.raises(FileNotFoundError, match="does not exist"):
        spacrd.io.write_geojson(regions, tmp_path / "no" / "such" / "folder.geojson")
