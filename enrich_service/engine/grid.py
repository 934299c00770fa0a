"""The fast path: a uniform grid whose cells answer without any test, and a compiled crossing test for the rest.

How it agrees with the exact path (exact.py), by construction:
- Every polygon edge marks the cells it passes within EPS of. A run of unmarked cells along a row touches no
  boundary, so every point in it has the same answer: one representative per run is classified and the run filled
  (a run inside two or more features is left to the band test instead, so a cell holds just one feature).
- A point in a marked cell gets a crossing-number test against the edges of its row band (every edge that crosses
  the horizontal ray through the point lies in that band): per feature, the parity of crossings to the right.
  Edges use the half-open rule (an edge counts when exactly one end lies above the ray), so a shared vertex is
  counted once, never twice or not at all.
- A point within EPS of any edge is *undecided*: the exact path (GEOS's robust predicates) answers it. Every point
  the grid does answer lies in the interior of the features holding it, so the rule reduces to: lowest rank wins,
  "overlap" when two or more hold it.
"""

from __future__ import annotations

import numpy as np
import shapely
from numba import njit, prange

from ..layers.store import LayerVersion
from ..server.parallel import run_parallel
from .rules import RULE_OVERLAP

# Far above float64 error at these coordinates (~1e-14 deg), far below any real feature (1e-9 deg is 0.1 mm).
EPS = 1e-9
NONE, EDGE = -1, -2
OVERLAP_CODE = np.int8(RULE_OVERLAP)


def _segments(version: LayerVersion) -> tuple[np.ndarray, np.ndarray]:
    """Every ring edge of every part as (ax, ay, bx, by), with its feature."""
    rings, ring_part = shapely.get_rings(version.parts, return_index=True)
    coords, ring_of = shapely.get_coordinates(rings, return_index=True)
    same_ring = ring_of[1:] == ring_of[:-1]
    a, b = coords[:-1][same_ring], coords[1:][same_ring]
    feature = version.part_feature[ring_part[ring_of[:-1][same_ring]]].astype(np.int32)
    keep = (a != b).any(axis=1)  # repeated vertices make zero-length edges
    return np.column_stack([a[keep], b[keep]]), feature[keep]


@njit(cache=True)
def _cell_range(lo, hi, origin, size, n):
    i0 = int(np.floor((lo - EPS - origin) / size))
    i1 = int(np.floor((hi + EPS - origin) / size))
    return max(i0, 0), min(i1, n - 1)


@njit(cache=True)
def _touches(ax, ay, bx, by, x0, y0, x1, y1):
    """Does segment a-b come within EPS of the box? (Liang-Barsky clip against the padded box.)"""
    x0 -= EPS
    y0 -= EPS
    x1 += EPS
    y1 += EPS
    t0, t1 = 0.0, 1.0
    dx, dy = bx - ax, by - ay
    for p, q in ((-dx, ax - x0), (dx, x1 - ax), (-dy, ay - y0), (dy, y1 - ay)):
        if p == 0.0:
            if q < 0.0:
                return False
        else:
            t = q / p
            if p < 0.0:
                if t > t1:
                    return False
                t0 = max(t0, t)
            else:
                if t < t0:
                    return False
                t1 = min(t1, t)
    return t0 <= t1


@njit(cache=True)
def _mark_edges(seg, gx0, gy0, cw, ch, n, edge):
    for k in range(seg.shape[0]):
        ax, ay, bx, by = seg[k, 0], seg[k, 1], seg[k, 2], seg[k, 3]
        i0, i1 = _cell_range(min(ax, bx), max(ax, bx), gx0, cw, n)
        j0, j1 = _cell_range(min(ay, by), max(ay, by), gy0, ch, n)
        for j in range(j0, j1 + 1):
            for i in range(i0, i1 + 1):
                if not edge[j, i] and _touches(ax, ay, bx, by, gx0 + i * cw, gy0 + j * ch,
                                               gx0 + (i + 1) * cw, gy0 + (j + 1) * ch):
                    edge[j, i] = True


@njit(cache=True)
def _bands(seg, gy0, ch, n):
    """CSR of edge indices per row band (edges within EPS of the band), in two orders: index[0] by decreasing max x
    (a ray to +x stops at the first edge ending left of the point), index[1] by increasing min x (a ray to -x stops
    at the first edge starting right of it); split[j], the median x of band j's edges, picks the shorter ray."""
    counts = np.zeros(n + 1, dtype=np.int64)
    for k in range(seg.shape[0]):
        j0, j1 = _cell_range(min(seg[k, 1], seg[k, 3]), max(seg[k, 1], seg[k, 3]), gy0, ch, n)
        for j in range(j0, j1 + 1):
            counts[j + 1] += 1
    start = np.cumsum(counts)
    index = np.empty((2, start[-1]), dtype=np.int32)
    maxx = np.maximum(seg[:, 0], seg[:, 2])
    minx = np.minimum(seg[:, 0], seg[:, 2])
    for side, order in ((0, np.argsort(-maxx)), (1, np.argsort(minx))):
        fill = start[:-1].copy()
        for k in order:
            j0, j1 = _cell_range(min(seg[k, 1], seg[k, 3]), max(seg[k, 1], seg[k, 3]), gy0, ch, n)
            for j in range(j0, j1 + 1):
                index[side, fill[j]] = k
                fill[j] += 1
    split = np.zeros(n, dtype=np.float64)
    for j in range(n):
        if start[j + 1] > start[j]:
            band = index[0, start[j]:start[j + 1]]
            split[j] = np.median((minx[band] + maxx[band]) * 0.5)
    return start, index, split


@njit(cache=True)
def _band_test(px, py, j, start, index, split, seg, seg_feature, rank, parity, touched):
    """(feature or NONE, overlap flag, undecided flag) for a point in row band j. parity/touched are scratch.
    The horizontal line through the point crosses every ring an even number of times (half-open rule), so the
    crossings on either side of the point have the same parity per feature: count on the side with fewer edges.
    An edge that does not reach the point's side cannot cross that ray or lie within EPS of the point."""
    n_touched = 0
    undecided = False
    rightward = px >= split[j]
    order = index[0] if rightward else index[1]
    for e in range(start[j], start[j + 1]):
        k = order[e]
        ax, ay, bx, by = seg[k, 0], seg[k, 1], seg[k, 2], seg[k, 3]
        if rightward:
            if max(ax, bx) < px - EPS:  # this and every later edge of the band end left of the point
                break
        elif min(ax, bx) > px + EPS:  # this and every later edge start right of the point
            break
        # Near the edge (within EPS of the segment): leave it to the exact path.
        if min(ax, bx) - EPS <= px <= max(ax, bx) + EPS and min(ay, by) - EPS <= py <= max(ay, by) + EPS:
            dx, dy = bx - ax, by - ay
            cross = dx * (py - ay) - dy * (px - ax)
            if cross * cross <= EPS * EPS * (dx * dx + dy * dy):
                undecided = True
                break
        if (ay > py) != (by > py):
            xint = ax + (py - ay) * (bx - ax) / (by - ay)
            if (xint > px) if rightward else (xint < px):
                f = seg_feature[k]
                if parity[f] == 0:
                    touched[n_touched] = f
                    n_touched += 1
                parity[f] ^= 1
    best, inside = NONE, 0
    for t in range(n_touched):
        f = touched[t]
        if parity[f] == 1:
            inside += 1
            if best == NONE or rank[f] < rank[best]:
                best = f
        parity[f] = 0
    return best, inside >= 2, undecided


@njit(cache=True)
def _classify_runs(edge, gx0, gy0, cw, ch, start, index, split, seg, seg_feature, rank, n_features, cells):
    """Fill `cells`: one band test per run of unmarked cells along a row."""
    n = edge.shape[0]
    parity = np.zeros(n_features, dtype=np.uint8)
    touched = np.empty(n_features, dtype=np.int32)
    for j in range(n):
        value = EDGE
        for i in range(n):
            if edge[j, i]:
                cells[j, i] = EDGE
                value = EDGE
                continue
            if value == EDGE:  # a new run: classify its first cell's centre
                f, overlap, undecided = _band_test(gx0 + (i + 0.5) * cw, gy0 + (j + 0.5) * ch, j, start, index,
                                                   split, seg, seg_feature, rank, parity, touched)
                # A run where features overlap is left to the band test, which names the winner and the overlap:
                # rare in real layers, and a cell then holds just a feature (int8 up to 127 features).
                value = NONE if f == NONE else (EDGE if overlap else f)
                if undecided:  # cannot happen for an unmarked cell's centre; be safe all the same
                    value = EDGE
            cells[j, i] = value


@njit(cache=True)
def _lookup_range(lo, hi, x, y, gx0, gy0, cw, ch, cells, start, index, split, seg, seg_feature, rank, n_features,
                  feature, rule, undecided):
    n = cells.shape[0]
    parity = np.zeros(n_features, dtype=np.uint8)
    touched = np.empty(n_features, dtype=np.int32)
    for p in range(lo, hi):
        fi = (x[p] - gx0) / cw
        fj = (y[p] - gy0) / ch
        undecided[p] = False
        if not (0.0 <= fi < n and 0.0 <= fj < n):  # outside the padded bbox: no feature
            feature[p] = NONE
            rule[p] = 0
            continue
        i, j = int(fi), int(fj)
        v = cells[j, i]
        if v >= 0:
            feature[p] = v
            rule[p] = 0
        elif v == NONE:
            feature[p] = NONE
            rule[p] = 0
        else:
            f, o, u = _band_test(x[p], y[p], j, start, index, split, seg, seg_feature, rank, parity, touched)
            feature[p] = f
            rule[p] = OVERLAP_CODE if o else 0
            undecided[p] = u


@njit(parallel=True, cache=True)
def _lookup_parallel(x, y, gx0, gy0, cw, ch, cells, start, index, split, seg, seg_feature, rank, n_features, feature,
                     rule, undecided):
    m = x.shape[0]
    chunks = 64
    for c in prange(chunks):
        _lookup_range(c * m // chunks, (c + 1) * m // chunks, x, y, gx0, gy0, cw, ch, cells, start, index, split,
                      seg, seg_feature, rank, n_features, feature, rule, undecided)


@njit(cache=True)
def _lookup_serial(x, y, gx0, gy0, cw, ch, cells, start, index, split, seg, seg_feature, rank, n_features, feature,
                   rule, undecided):
    _lookup_range(0, x.shape[0], x, y, gx0, gy0, cw, ch, cells, start, index, split, seg, seg_feature, rank,
                  n_features, feature, rule, undecided)


# Below this many points one thread is faster: waking the parallel workers costs more than a small batch's lookups
# (measured: docs/engine.md).
SERIAL_BELOW = 20_000


class GridIndex:
    """The fast path for one layer version; see the module docstring for why it agrees with the exact path."""

    def __init__(self, version: LayerVersion, cells: int):
        seg, seg_feature = _segments(version)
        x0, y0, x1, y1 = version.bbox
        pad = max(x1 - x0, y1 - y0) * 1e-6 + 10 * EPS
        self.x0, self.y0 = x0 - pad, y0 - pad
        self.cw, self.ch = (x1 - x0 + 2 * pad) / cells, (y1 - y0 + 2 * pad) / cells
        self.seg, self.seg_feature = np.ascontiguousarray(seg), seg_feature
        self.rank = version.rank.astype(np.int32)
        self.n_features = version.n_features
        edge = np.zeros((cells, cells), dtype=np.bool_)
        _mark_edges(self.seg, self.x0, self.y0, self.cw, self.ch, cells, edge)
        self.band_start, self.band_index, self.band_split = _bands(self.seg, self.y0, self.ch, cells)
        # A cell holds a feature, NONE or EDGE: int8 up to 127 features (a quarter of int32's cache footprint).
        self.cells = np.empty((cells, cells), dtype=np.int8 if self.n_features <= 127 else np.int16)
        _classify_runs(edge, self.x0, self.y0, self.cw, self.ch, self.band_start, self.band_index, self.band_split,
                       self.seg, self.seg_feature, self.rank, self.n_features, self.cells)
        self.edge_share = float(edge.mean())

    @classmethod
    def build(cls, version: LayerVersion, cells: int = 2048) -> GridIndex:
        return cls(version, cells)

    @property
    def nbytes(self) -> int:
        return (self.cells.nbytes + self.seg.nbytes + self.band_index.nbytes + self.band_start.nbytes
                + self.band_split.nbytes)

    def lookup(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        m = len(x)
        # Every output is written by the kernel for every point: no zero-filling pass over 1M-row columns.
        feature = np.empty(m, dtype=np.int32)
        rule = np.empty(m, dtype=np.int8)
        undecided = np.empty(m, dtype=np.bool_)
        args = (np.ascontiguousarray(x, dtype=np.float64), np.ascontiguousarray(y, dtype=np.float64), self.x0,
                self.y0, self.cw, self.ch, self.cells, self.band_start, self.band_index, self.band_split, self.seg,
                self.seg_feature, self.rank, self.n_features, feature, rule, undecided)
        if m < SERIAL_BELOW:
            _lookup_serial(*args)
        else:
            run_parallel(_lookup_parallel, *args)
        return feature, rule, undecided
