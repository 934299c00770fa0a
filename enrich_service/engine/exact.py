"""The exact path, and the source of truth: an R-tree over polygon parts, exact shapely tests, the rule in rules.py.

Everything is vectorized: one bulk R-tree query for all points, one shapely call over all (point, part) candidate
pairs, one lexsort to apply the rule. Single-point lookups take the same path with n = 1.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import rtree
import shapely

from ..layers.store import LayerVersion
from ..server.disk_cache import cached, code_digest
from . import rules
from .rules import RULE_EDGE, RULE_NEAREST, RULE_NONE, RULE_OVERLAP

_CODE = code_digest(Path(__file__))

# Large parts are indexed as the tiles of their bbox that touch them: a city-sized polygon's bbox would otherwise be
# a candidate for every point. Tiles only narrow candidates; the exact test always runs on the whole part.
_TILES_PER_SIDE = 16
_MIN_TILE_DEG = 0.005

# Degrees per metre, bounded above for San Diego's latitudes (1 deg lon = 93 km at 33N): candidate boxes for
# nearest_within_m are widened by this much so no polygon within the distance is missed.
_DEG_PER_M = 1.0 / 90_000.0


def _tile_boxes(parts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(part index, box bounds) of the tiles of each part's bbox that intersect the part. Tiles are `step` wide from
    the bbox's low corner, the last ending on its high edge exactly (summing steps can end an ulp short of it: a
    point on the part's far bbox edge then fell outside every tile, and the part was never a candidate for it).
    Vectorized over all parts: a Python loop per part took seconds for a layer of 50,000 small polygons."""
    bounds = shapely.bounds(parts)
    x0, y0, x1, y1 = bounds.T
    step = np.maximum(np.maximum(x1 - x0, y1 - y0) / _TILES_PER_SIDE, _MIN_TILE_DEG)
    nx = np.where(x1 > x0, np.maximum(1, np.ceil((x1 - x0) / step)), 1).astype(np.int64)
    ny = np.where(y1 > y0, np.maximum(1, np.ceil((y1 - y0) / step)), 1).astype(np.int64)
    per = nx * ny
    owner = np.repeat(np.arange(len(parts), dtype=np.int64), per)
    t = np.arange(int(per.sum()), dtype=np.int64) - np.repeat(np.cumsum(per) - per, per)  # tile number in its part
    a, b = t % nx[owner], t // nx[owner]
    sx, sy = x0[owner], y0[owner]
    st = step[owner]
    bx0 = np.minimum(sx + a * st, x1[owner])
    bx1 = np.where(a == nx[owner] - 1, x1[owner], np.minimum(sx + (a + 1) * st, x1[owner]))
    by0 = np.minimum(sy + b * st, y1[owner])
    by1 = np.where(b == ny[owner] - 1, y1[owner], np.minimum(sy + (b + 1) * st, y1[owner]))
    boxes = np.column_stack([bx0, by0, bx1, by1])
    # A part of one tile is its bbox, kept without a test: the many small polygons of a layer of census blocks.
    split = per[owner] > 1
    keep = np.ones(len(owner), dtype=bool)
    keep[split] = shapely.intersects(parts[owner[split]], shapely.box(bx0[split], by0[split], bx1[split],
                                                                      by1[split]))
    return owner[keep], boxes[keep]


class ExactIndex:
    """R-tree candidates + exact shapely tests for one layer version.

    Not safe to share between threads as it stands: libspatialindex queries and GEOS prepared geometries (which
    build their point locator lazily) crash when used concurrently. Requests run in a threadpool, so every call
    holds this index's lock; the grid fast path answers nearly all points without coming here.
    """

    def __init__(self, version: LayerVersion, cache_dir: Path | None = None):
        self.version = version
        self._lock = threading.Lock()
        # The tiles, read from the disk cache when it holds them for the same geometry and code: a large part's tiles
        # are each tested against it (0.1 s for the ZIPs), and a layer of 50,000 polygons has 63,000 tiles.
        key = version.cache_key(_CODE) if cache_dir is not None else None
        if cache_dir is None or key is None:
            owners, boxes = _tile_boxes(version.parts)
        else:
            (owners, boxes), _ = cached(Path(cache_dir) / "tiles" / f"{key}.pickle", lambda: _tile_boxes(version.parts))
        self._tile_part = owners
        props = rtree.index.Property()
        props.dimension = 2
        # Bulk-load from arrays (ids, mins, maxs): far faster than inserting one box at a time.
        self.tree = rtree.index.Index(
            (np.arange(len(boxes), dtype=np.int64), boxes[:, :2].copy(), boxes[:, 2:].copy()), properties=props
        )

    def candidates(self, x: np.ndarray, y: np.ndarray, pad_deg: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
        """Unique (point index, part index) pairs whose boxes hold the point (widened by pad_deg)."""
        pts = np.column_stack([x, y])
        ids, counts = self.tree.intersection_v(pts - pad_deg, pts + pad_deg)
        point = np.repeat(np.arange(len(x), dtype=np.int64), counts.astype(np.int64))
        part = self._tile_part[ids.astype(np.int64)]
        # A point on a border between two tiles of one part finds that part twice.
        pair = np.unique(point * len(self.version.parts) + part)
        return pair // len(self.version.parts), pair % len(self.version.parts)

    def tag(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For each point: the winning feature (-1: none) and the rule that decided it."""
        with self._lock:
            return self._tag(x, y)

    def _tag(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        n = len(x)
        feature = np.full(n, -1, dtype=np.int32)
        rule = np.zeros(n, dtype=np.int8)
        point, part = self.candidates(x, y)
        if len(point) == 0:
            return feature, rule
        parts = self.version.parts
        covers = shapely.intersects_xy(parts[part], x[point], y[point])
        point, part = point[covers], part[covers]
        if len(point) == 0:
            return feature, rule
        inside = shapely.contains_xy(parts[part], x[point], y[point])
        feat = self.version.part_feature[part]
        win = rules.winners(point, inside, self.version.rank[feat])
        feature[point[win]] = feat[win]
        rule[point[win]] = np.where(inside[win], RULE_NONE, RULE_EDGE)
        interiors = np.bincount(point[inside], minlength=n)
        rule[interiors >= 2] = RULE_OVERLAP
        return feature, rule

    def nearest(self, x: np.ndarray, y: np.ndarray, xm: np.ndarray, ym: np.ndarray,
                within_m: float) -> tuple[np.ndarray, np.ndarray]:
        """For points no feature covers: the nearest feature within `within_m` metres (-1: none) and its distance.
        x, y are lon/lat (for candidates); xm, ym the same points in the metric CRS (for distances)."""
        with self._lock:
            return self._nearest(x, y, xm, ym, within_m)

    def _nearest(self, x: np.ndarray, y: np.ndarray, xm: np.ndarray, ym: np.ndarray,
                 within_m: float) -> tuple[np.ndarray, np.ndarray]:
        n = len(x)
        feature = np.full(n, -1, dtype=np.int32)
        distance = np.full(n, np.nan)
        point, part = self.candidates(x, y, pad_deg=within_m * _DEG_PER_M)
        if len(point) == 0:
            return feature, distance
        d = shapely.distance(self.version.parts_metric[part], shapely.points(xm[point], ym[point]))
        keep = d <= within_m
        point, part, d = point[keep], part[keep], d[keep]
        feat = self.version.part_feature[part]
        order = np.lexsort((self.version.rank[feat], d, point))
        first = np.ones(len(order), dtype=bool)
        first[1:] = point[order][1:] != point[order][:-1]
        win = order[first]
        feature[point[win]] = feat[win]
        distance[point[win]] = d[win]
        return feature, distance


__all__ = ["ExactIndex", "RULE_NEAREST"]
