"""Reading and writing regions: QuPath GeoJSON annotations in, called cancer regions out.

The GeoJSON matched is QuPath 0.4–0.6's (*File → Export objects as GeoJSON*; files of QuPath 0.2–0.3
are read too): ``Feature`` objects with ``"objectType": "annotation"``, ``classification`` ``{"name",
"color"}`` and ``measurements`` in ``properties``, coordinates in pixels of the full-resolution image.
"""

from ._geojson import read_annotations, write_geojson

__all__ = ["read_annotations", "write_geojson"]
