"""Regions as QuPath reads and writes them: GeoJSON features with an ``objectType`` and a classification.

The format matched is what QuPath 0.4–0.6 writes with *File → Export objects as GeoJSON* (its
``PathObjectTypeAdapters`` and ``GsonTools.PathClassTypeAdapter``): a ``FeatureCollection`` (or a bare
list of ``Feature``), each with a UUID ``id``, a ``Polygon`` or ``MultiPolygon`` ``geometry`` in pixels of
the full-resolution image (origin at its top left corner), and ``properties`` holding
``"objectType": "annotation"``, optionally ``name``, ``classification`` ``{"name": ..., "color": [r, g,
b]}`` (``"names"`` for derived classes such as ``Tumor: Positive``) and ``measurements`` as a flat
``{name: number}`` object. QuPath refuses a classification object without ``color``, so one is always
written. Older files (QuPath 0.2–0.3: ``colorRGB``, measurements as a list of ``{name, value}``) are read
as well.
"""

from __future__ import annotations

import json
import os
import tempfile
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from geopandas import GeoDataFrame

#: Column of :func:`read_annotations` (and :func:`spacrd.tl.ctr_regions`) with each region's class name.
CLASS_COLUMN = "classification"
#: Column with the class colour, ``(r, g, b)`` in 0–255.
COLOR_COLUMN = "color"
#: The class name QuPath shows for objects without a classification.
UNCLASSIFIED = "Unclassified"
#: QuPath's built-in classes and their colours (``PathClass.StandardPathClasses``), for regions whose
#: class QuPath knows; other classes get :data:`DEFAULT_COLOR`.
QUPATH_COLORS: dict[str, tuple[int, int, int]] = {
    "Tumor": (200, 0, 0),
    "Stroma": (150, 200, 150),
    "Immune cells": (160, 90, 160),
    "Necrosis": (50, 50, 50),
    "Other": (255, 200, 0),
    "Region*": (0, 0, 180),
    "Ignore*": (180, 180, 180),
}
DEFAULT_COLOR = (255, 200, 0)
_AREA_TYPES = ("Polygon", "MultiPolygon")


def _class_name(classification: Any) -> str:
    """The class name of a QuPath ``classification`` value (object, legacy object or plain string)."""
    if classification is None or (isinstance(classification, float) and np.isnan(classification)):
        return UNCLASSIFIED
    if isinstance(classification, str):
        return classification
    if isinstance(classification, Mapping):
        if classification.get("name"):
            return str(classification["name"])
        if classification.get("names"):
            return ": ".join(str(n) for n in classification["names"])  # QuPath's derived-class string
        return UNCLASSIFIED
    raise ValueError(f"Cannot read a class name from classification {classification!r}.")


def _class_color(classification: Any) -> tuple[int, int, int] | None:
    if not isinstance(classification, Mapping):
        return None
    color = classification.get("color", classification.get("colorRGB"))
    if isinstance(color, list | tuple) and len(color) >= 3:
        return int(color[0]), int(color[1]), int(color[2])
    if isinstance(color, int | np.integer):  # packed (A)RGB, as QuPath 0.2 wrote it
        value = int(color) & 0xFFFFFF
        return (value >> 16) & 255, (value >> 8) & 255, value & 255
    return None


def _measurements(value: Any) -> dict[str, float]:
    if isinstance(value, Mapping):
        return {str(k): v for k, v in value.items()}
    if isinstance(value, list):  # before QuPath 0.4: [{"name": ..., "value": ...}, ...]
        return {str(m["name"]): m["value"] for m in value if isinstance(m, Mapping) and "name" in m}
    return {}


def read_annotations(path: str | os.PathLike) -> GeoDataFrame:
    """Read a GeoJSON file of annotations, as QuPath exports them, into a GeoDataFrame.

    Parameters
    ----------
    path
        A ``.geojson`` (or ``.json``) file: a ``FeatureCollection``, a bare list of ``Feature`` objects
        (QuPath's export without the ``FEATURE_COLLECTION`` option) or a single ``Feature``. Coordinates
        are read as they are: for QuPath, pixels of the full-resolution image.

    Returns
    -------
    One row per feature, in file order: ``geometry`` (as written, any type; invalid outlines are kept as
    they are), ``classification`` (str: the class name, ``"Tumor: Positive"`` for derived classes,
    ``"Unclassified"`` without one), ``color`` (``(r, g, b)`` of the class, or ``None``), ``name``
    (``None`` when unnamed), ``object_type`` (``"annotation"``, ``"detection"``, …, ``"annotation"`` when
    the file says nothing) and ``measurements`` (dict of name to value); the index holds the
    features' ``id`` where every feature has a unique one.

    """
    import geopandas as gpd
    import shapely

    path = Path(path)
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise OSError(f"Cannot read annotations from {path}: {err.strerror or err}.") from err
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not a GeoJSON file ({err}); export it from QuPath as GeoJSON.") from err
    if isinstance(document, Mapping) and document.get("type") == "FeatureCollection":
        features = document.get("features", [])
    elif isinstance(document, Mapping) and document.get("type") == "Feature":
        features = [document]
    elif isinstance(document, list):
        features = document
    else:
        raise ValueError(
            f"{path} holds neither a GeoJSON FeatureCollection nor a list of Features; export the "
            "annotations from QuPath with File > Export objects as GeoJSON."
        )
    rows, geometries, ids = [], [], []
    for i, feature in enumerate(features):
        if not isinstance(feature, Mapping) or feature.get("geometry") is None:
            raise ValueError(f"Feature {i} of {path} has no geometry; every annotation needs an outline.")
        properties = feature.get("properties") or {}
        classification = properties.get("classification")
        geometries.append(shapely.from_geojson(json.dumps(feature["geometry"])))
        ids.append(feature.get("id"))
        rows.append(
            {
                CLASS_COLUMN: _class_name(classification),
                COLOR_COLUMN: _class_color(classification),
                "name": properties.get("name"),
                "object_type": properties.get("objectType", properties.get("object_type", "annotation")),
                "measurements": _measurements(properties.get("measurements")),
            }
        )
    frame = pd.DataFrame(rows, columns=[CLASS_COLUMN, COLOR_COLUMN, "name", "object_type", "measurements"])
    if ids and all(isinstance(i, str) for i in ids) and len(set(ids)) == len(ids):
        frame.index = pd.Index(ids, name="id")
    return gpd.GeoDataFrame(frame, geometry=gpd.GeoSeries(geometries, index=frame.index), crs=None)


def _number(value: Any) -> float | int | None:
    """A measurement QuPath can hold: a finite number (NaN is written as JSON ``null`` by nobody: dropped)."""
    if isinstance(value, bool | np.bool_):
        return int(value)
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating) and np.isfinite(value):
        return float(value)
    return None


def _features(regions: GeoDataFrame, class_column: str, measurement_columns: list[str]) -> list[dict]:
    import shapely

    features = []
    for index, row in regions.iterrows():
        geometry = row.geometry
        name = str(row[class_column]) if class_column in regions else UNCLASSIFIED
        color = row.get(COLOR_COLUMN) if COLOR_COLUMN in regions else None
        if color is None or (isinstance(color, float) and np.isnan(color)):
            color = QUPATH_COLORS.get(name, DEFAULT_COLOR)
        measurements = {}
        for column in measurement_columns:
            value = _number(row[column])
            if value is not None:
                measurements[column] = value
        properties: dict[str, Any] = {"objectType": "annotation"}
        if "name" in regions and isinstance(row["name"], str):
            properties["name"] = row["name"]
        properties["classification"] = {"name": name, "color": [int(c) for c in color[:3]]}
        if measurements:
            properties["measurements"] = measurements
        feature_id = str(index) if _is_uuid(index) else str(uuid.uuid4())
        features.append(
            {
                "type": "Feature",
                "id": feature_id,
                "geometry": json.loads(shapely.to_geojson(geometry)),
                "properties": properties,
            }
        )
    return features


def _is_uuid(value: Any) -> bool:
    try:
        uuid.UUID(str(value))
    except ValueError:
        return False
    return True


def write_geojson(
    regions: GeoDataFrame,
    path: str | os.PathLike,
    *,
    class_column: str = CLASS_COLUMN,
    measurements: list[str] | None = None,
) -> Path:
    """Write regions as a GeoJSON FeatureCollection that QuPath imports as classified annotations.

    Each row becomes one ``Feature`` in QuPath 0.4–0.6's format (see :mod:`spacrd.io`): a new UUID as
    ``id``, the geometry as written (coordinates are not changed: QuPath reads them as pixels of the
    full-resolution image it shows), and ``properties`` ``{"objectType": "annotation", "classification":
    {"name", "color"}, "measurements": {...}}``. The file is written to a temporary file in the same
    folder and moved into place, so that a failed write leaves no partial file at ``path``.

    Parameters
    ----------
    regions
        Polygons or MultiPolygons, e.g. from :func:`spacrd.tl.ctr_regions`. A ``color`` column
        (``(r, g, b)``) sets the class colour; without it, QuPath's colour of its built-in classes
        (``Tumor`` ``(200, 0, 0)``, ``Stroma`` ``(150, 200, 150)``, …) or yellow is used. A string ``name``
        column names the annotations.
    path
        File to write (``.geojson`` by convention). Its folder must exist.
    class_column
        Column with the class name of each region; without such a column every region is
        ``"Unclassified"``.
    measurements
        Numeric columns written as QuPath measurements (non-finite values are left out). ``None``: every
        numeric column other than the class, colour and geometry.

    Returns
    -------
    pathlib.Path
        The path written.

    """
    from geopandas import GeoDataFrame

    if not isinstance(regions, GeoDataFrame):
        raise TypeError(
            f"`regions` must be a GeoDataFrame (e.g. from spacrd.tl.ctr_regions), got {type(regions).__name__}."
        )
    types = set(regions.geom_type.dropna()) - set(_AREA_TYPES)
    if types or regions.geometry.isna().any():
        raise ValueError(
            f"QuPath annotations written here are areas; `regions` holds {sorted(types) or 'missing'} "
            "geometries. Keep the Polygon and MultiPolygon rows."
        )
    if measurements is None:
        skip = {class_column, COLOR_COLUMN, regions.geometry.name}
        measurements = [
            str(c) for c in regions.columns if c not in skip and pd.api.types.is_numeric_dtype(regions[c])
        ]
    missing = [c for c in measurements if c not in regions]
    if missing:
        raise KeyError(f"`measurements` {missing} are not columns of `regions` ({list(regions.columns)}).")
    document = {"type": "FeatureCollection", "features": _features(regions, class_column, measurements)}
    return write_json_atomic(document, Path(path))


def write_json_atomic(document: Any, path: Path) -> Path:
    """Write ``document`` as JSON to ``path`` through a temporary file in the same folder and ``os.replace``."""
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise FileNotFoundError(f"Cannot write {path}: the folder {folder} does not exist; create it first.")
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            json.dump(document, stream, ensure_ascii=False)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException as err:
        Path(temporary).unlink(missing_ok=True)
        if isinstance(err, OSError):
            raise OSError(f"Cannot write {path}: {err.strerror or err}; nothing was written there.") from err
        raise
    return path
