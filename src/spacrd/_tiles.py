"""Spot tiles: the part of a section each spot stands for, and the regions that unions of tiles make.

A spot's tile is its Voronoi cell among the section's spots, cut to the disc of one spot spacing (the
median distance to the nearest other spot) around it: every point of the section belongs to its nearest
spot, within one spacing of it, so that a region of spots runs half-way to the spots outside it and
gaps in the tissue wider than two spacings stay open. Tiles cover the section without overlaps, so a
region is a coverage union (fast) and every spot's centre lies inside its own tile only. On a
square grid of bins the tiles are the bins; on the hexagonal grid of Visium and legacy ST they are
hexagons touching their six neighbours.

:func:`spacrd.tl.ctr_regions` and :func:`spacrd.pl.ctr` both outline called regions with these tiles,
so the exported outline and the drawn one are the same polygons.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import shapely
from scipy.spatial import cKDTree

from ._constants import SCANPY_IMAGE_KEYS

#: Segments per quarter circle of the discs tiles are cut to.
DISC_QUAD_SEGS = 16
#: Shift of the spots, in spacings, for the Voronoi diagram only (see :func:`section_tiles`).
JITTER = 1e-6
#: Islands smaller than this many median tiles are dropped by default. A lone spot is one tile inside
#: the tissue and up to about two at its edge (edge tiles reach one spacing out), a pair inside is two:
#: both are dropped, three neighbouring spots are kept.
DEFAULT_MIN_TILES = 2.5


def spot_spacing(centres: np.ndarray, fallback: float = 1.0) -> float:
    """Median distance from a spot to its nearest other spot; ``fallback`` for fewer than two spots."""
    if len(centres) < 2:
        return float(fallback)
    distance = cKDTree(centres).query(centres, k=2)[0][:, 1]
    distance = distance[distance > 0]
    return float(np.median(distance)) if len(distance) else float(fallback)


#: Grid, in spacings, that the tiles at the tissue's edge are snapped to when they join the others.
SNAP = 1e-9


@dataclass(frozen=True)
class Tiles:
    """The tiles of one section's spots.

    Attributes
    ----------
    centres
        ``(n, 2)`` float64 spot centres, in the section's coordinates.
    tiles
        ``(n,)`` shapely Polygons: each spot's Voronoi cell, cut to the disc of ``reach`` around it
        (spots at the same position share one).
    cut
        ``(n,)`` bool: whether the tile was cut (the spot is at the tissue's edge); the others are whole
        Voronoi cells, which share their edges exactly.
    reach
        Radius of the discs tiles are cut to: the spot spacing, in the same units.

    """

    centres: np.ndarray
    tiles: np.ndarray
    cut: np.ndarray
    reach: float

    @property
    def median_area(self) -> float:
        """Median tile area, in squared units (``reach²`` without spots)."""
        return float(np.median(shapely.area(self.tiles))) if len(self.tiles) else self.reach**2

    def region(self, members: np.ndarray) -> shapely.Geometry:
        """The union of the tiles of the spots where ``members`` (``(n,)`` bool) is true, holes kept."""
        members = np.asarray(members, dtype=bool)
        if not members.any():
            return shapely.Polygon()
        # whole cells form an exact coverage (fast union); cut ones join it on a fine grid, so that
        # their edges, recomputed by the cut, meet the cells' without slivers
        union = shapely.coverage_union_all(self.tiles[members & ~self.cut])
        edge = self.tiles[members & self.cut]
        if len(edge):
            union = shapely.union_all([union, *edge], grid_size=self.reach * SNAP)
        return shapely.make_valid(union) if not shapely.is_valid(union) else union


def section_tiles(centres: np.ndarray, fallback_reach: float = 1.0) -> Tiles:
    """:class:`Tiles` of the spots at ``centres`` ``(n, 2)``, one section, in any one unit.

    ``fallback_reach`` is the disc radius when the section has fewer than two distinct spots.
    """
    centres = np.asarray(centres, dtype=np.float64).reshape(-1, 2)
    reach = spot_spacing(centres, fallback_reach)
    if not len(centres):
        return Tiles(centres, np.zeros(0, dtype=object), np.zeros(0, dtype=bool), reach)
    unique, inverse = np.unique(centres, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    discs = shapely.buffer(shapely.points(unique), reach, quad_segs=DISC_QUAD_SEGS)
    if len(unique) == 1:
        return Tiles(centres, discs[inverse], np.ones(len(centres), dtype=bool), reach)
    lo, hi = unique.min(axis=0) - 2 * reach, unique.max(axis=0) + 2 * reach
    # GEOS builds wrong, overlapping cells where four spots lie on one circle, as on square grids of
    # bins in floating point; a shift of a millionth of a spacing breaks those ties.
    jitter = np.random.default_rng(0).uniform(-1, 1, unique.shape) * reach * JITTER
    diagram = shapely.voronoi_polygons(
        shapely.multipoints(unique + jitter), extend_to=shapely.box(*lo, *hi), ordered=True
    )
    cells = _in_point_order(np.asarray(shapely.get_parts(diagram), dtype=object), unique)
    # only cells reaching farther than the disc need cutting: spots at the tissue's edge
    coords, owner = shapely.get_coordinates(cells, return_index=True)
    farthest = np.zeros(len(unique))
    np.maximum.at(farthest, owner, np.hypot(*(coords - unique[owner]).T))
    cut = farthest > reach * (1 + 1e-9)
    tiles = cells.copy()
    tiles[cut] = shapely.intersection(cells[cut], discs[cut])
    return Tiles(centres, tiles[inverse], cut[inverse], reach)


def _in_point_order(cells: np.ndarray, points: np.ndarray) -> np.ndarray:
    """The Voronoi ``cells`` reordered to match ``points`` ``(n, 2)``, by which cell holds which point.

    GEOS returns them in input order, except at times on regular grids, where four spots share each
    Voronoi vertex; the cell that contains a point is its own either way.
    """
    if len(cells) == len(points) and shapely.contains_xy(cells, points[:, 0], points[:, 1]).all():
        return cells
    point, cell = shapely.STRtree(cells).query(shapely.points(points), predicate="within")
    if len(point) != len(points) or len(np.unique(point)) != len(points):
        raise RuntimeError("Could not match the spots to their Voronoi cells; are some spots duplicated?")
    ordered = np.empty(len(points), dtype=object)
    ordered[point] = cells[cell]
    return ordered


def drop_islands(region: shapely.Geometry, min_area: float) -> shapely.Geometry:
    """``region`` without its polygons smaller than ``min_area`` (holes of the kept ones stay)."""
    parts = shapely.get_parts(region)
    parts = parts[shapely.get_type_id(parts) == 3]  # polygons only (no slivers of lines)
    kept = parts[shapely.area(parts) >= min_area]
    if not len(kept):
        return shapely.Polygon()
    return kept[0] if len(kept) == 1 else shapely.MultiPolygon(list(kept))


def microns_per_pixel(library: Mapping, spot_diameter_um: float | None = None) -> float | None:
    """µm per full-resolution pixel of a ``uns["spatial"]`` library: recorded, or from the spot diameter.

    ``microns_per_pixel`` in ``scalefactors`` (Space Ranger for Visium HD) or ``metadata``
    (:func:`spacrd.datasets.her2st`); else ``spot_diameter_um / spot_diameter_fullres``; else ``None``.
    """
    scalefactors = library.get(SCANPY_IMAGE_KEYS.SCALEFACTORS, {})
    for recorded in (scalefactors, library.get(SCANPY_IMAGE_KEYS.METADATA, {})):
        if "microns_per_pixel" in recorded:
            return float(recorded["microns_per_pixel"])
    if spot_diameter_um is not None and SCANPY_IMAGE_KEYS.SPOT_DIAMETER in scalefactors:
        return float(spot_diameter_um) / float(scalefactors[SCANPY_IMAGE_KEYS.SPOT_DIAMETER])
    return None
