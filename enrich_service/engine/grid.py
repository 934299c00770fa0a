"""The fast path: a uniform grid whose cells answer without any test, and a compiled crossing test for the rest.

How it agrees with the exact path (exact.py), by construction:
- Every polygon edge marks the cells it passes within EPS of. A run of unmarked cells along a row touches no
  boundary, so every point in it has the same answer: one representative per run is classified and the run filled
  (a run inside two or more features is left to the band test instead, so a cell holds just one feature).
- A point in a marked cell gets a crossing-number test along its row (every edge that crosses the horizontal ray
  through the point lies in that row band): per feature, the parity of crossings. Layers of up to 127 features
  count against the band's edges on one side; larger ones hold, per special cell, a record of the edges of the run
  of special cells from it to the nearest resolved cell along the row, whose answer starts the parities. A record
  also answers the SUB x SUB sub-cells of its cell that no edge comes within EPS of (a byte each, naming the run's
  end feature or one of its edges' features): the answer at the sub-cell's centre holds throughout it, so most
  points in a special cell need none of the run's edges.
  Edges use the half-open rule (an edge counts when exactly one end lies above the ray), so a shared vertex is
  counted once, never twice or not at all.
- A point within EPS of any edge is *undecided*: the exact path (GEOS's robust predicates) answers it. Every point
  the grid does answer lies in the interior of the features holding it, so the rule reduces to: lowest rank wins,
  "overlap" when two or more hold it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import shapely
from numba import njit, prange

from ..layers.store import LayerVersion
from ..points import read_only
from ..server.disk_cache import cached, code_digest
from ..server.parallel import run_parallel
from .rules import RULE_OVERLAP

_CODE = code_digest(Path(__file__))

# Far above float64 error at these coordinates (~1e-14 deg), far below any real feature (1e-9 deg is 0.1 mm).
EPS = 1e-9
NONE, EDGE = -1, -2
SLOT0 = -3  # an int32 cell below EDGE is a special cell holding its record's place: SLOT0 - place
MAX_RUN_EDGES = 256  # a run listing more edges than this takes the band test instead
# A record also answers the SUB x SUB sub-cells of its cell that no edge comes within EPS of, one byte each (packed
# four to an int32 after the record's head): most points in a special cell then need none of the run's edges.
SUB = 4
SUB_WORDS = SUB * SUB // 4
HEAD = 3 + SUB_WORDS  # count, end feature, end column, the sub-cells' codes; then the run's edges
# A sub-cell's code: the run's end feature, or 1 + the place in the record of an edge whose feature holds the
# sub-cell, or one of these two.
SUB_NONE, SUB_TEST = 254, 255
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
def _mark_edges(seg, gx0, gy0, cw, ch, n, counting, count, slot, fill, cell_seg):
    """Every edge into the cells it passes within EPS of, in two passes. Counting: count[j, i] += 1. Then: the
    edge's index into cell_seg, the edge lists of the marked cells end to end (slot[j, i]: the cell's list, whose
    next free place is fill[slot])."""
    for k in range(seg.shape[0]):
        ax, ay, bx, by = seg[k, 0], seg[k, 1], seg[k, 2], seg[k, 3]
        i0, i1 = _cell_range(min(ax, bx), max(ax, bx), gx0, cw, n)
        j0, j1 = _cell_range(min(ay, by), max(ay, by), gy0, ch, n)
        for j in range(j0, j1 + 1):
            for i in range(i0, i1 + 1):
                if _touches(ax, ay, bx, by, gx0 + i * cw, gy0 + j * ch, gx0 + (i + 1) * cw, gy0 + (j + 1) * ch):
                    if counting:
                        count[j, i] += 1
                    else:
                        s = slot[j, i]
                        cell_seg[fill[s]] = k
                        fill[s] += 1


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
                n_touched = _toggle(seg_feature[k], parity, touched, n_touched)
    best, overlap = _verdict(rank, parity, touched, n_touched)
    return best, overlap, undecided


@njit(cache=True)
def _toggle(f, parity, touched, n_touched):
    """Flip feature f's crossing parity (bit 0); bit 1 marks it listed in touched, so each is listed once."""
    if parity[f] < 2:
        parity[f] = 2
        touched[n_touched] = f
        n_touched += 1
    parity[f] ^= 1
    return n_touched


@njit(cache=True)
def _verdict(rank, parity, touched, n_touched):
    """(the lowest-ranked feature with odd parity or NONE, two or more of them); parity is left all zero."""
    best, inside = NONE, 0
    for t in range(n_touched):
        f = touched[t]
        if parity[f] & 1:
            inside += 1
            if best == NONE or rank[f] < rank[best]:
                best = f
        parity[f] = 0
    return best, inside >= 2


@njit(cache=True)
def _classify_runs(gx0, gy0, cw, ch, slot, start, cell_seg, seg, seg_feature, n_features, cells):
    """Fill `cells`, row by row from the right, where the row is outside every feature: the crossings of each marked
    cell's edges with the row's centre line flip the features' parities, and an unmarked cell holds the features of
    odd parity (a feature, NONE, or EDGE where two or more overlap: the walk or band test names the winner)."""
    n = slot.shape[0]
    parity = np.zeros(n_features, dtype=np.uint8)
    for j in range(n):
        yc = gy0 + (j + 0.5) * ch
        odd, xor = 0, 0  # how many features hold the current cell, and their ids xor-ed (the one, when odd == 1)
        for i in range(n - 1, -1, -1):
            s = slot[j, i]
            if s < 0:
                cells[j, i] = NONE if odd == 0 else (xor if odd == 1 else EDGE)
                continue
            cells[j, i] = EDGE
            for e in range(start[s], start[s + 1]):
                k = cell_seg[e]
                ax, ay, bx, by = seg[k, 0], seg[k, 1], seg[k, 2], seg[k, 3]
                if (ay > yc) != (by > yc):
                    xint = ax + (yc - ay) * (bx - ax) / (by - ay)
                    if int((xint - gx0) / cw) == i:  # each crossing counted in one cell only
                        f = seg_feature[k]
                        parity[f] ^= 1
                        odd += 1 if parity[f] else -1
                        xor ^= f
        if odd:  # every ring is crossed an even number of times; be safe all the same
            parity[:] = 0


@njit(cache=True)
def _band_cost(cx, cw, j, band_start, band_index, split, seg):
    """How many edges the band test scans for a point at x = cx (± a cell) in row band j before its early stop."""
    b0, b1 = band_start[j], band_start[j + 1]
    rightward = cx >= split[j]
    order = band_index[0] if rightward else band_index[1]
    a, b = b0, b1
    while a < b:
        mid = (a + b) // 2
        k = order[mid]
        past = (max(seg[k, 0], seg[k, 2]) < cx - cw) if rightward else (min(seg[k, 0], seg[k, 2]) > cx + cw)
        if past:
            b = mid
        else:
            a = mid + 1
    return a - b0


@njit(cache=True)
def _run_edges(s, step, lo, hi, edge_col, cell_start, cell_seg, stamp, mark, out, limit):
    """The distinct edges of special cell s and the special cells after it along its row (step +1: rightward, -1:
    leftward) up to the first resolved cell: (their count, that cell's column). Stops once more than `limit` are
    found. `out`, where it has room, receives them; stamp[k] == mark flags edge k as listed (mark: new per call)."""
    count = 0
    t = s
    while True:
        for e in range(cell_start[t], cell_start[t + 1]):
            k = cell_seg[e]
            if stamp[k] != mark:
                stamp[k] = mark
                if count < out.shape[0]:
                    out[count] = k
                count += 1
        if count > limit:
            return count, -1
        nxt = t + step
        if nxt < lo or nxt >= hi or edge_col[nxt] != edge_col[t] + step:
            return count, edge_col[t] + step
        t = nxt


@njit(cache=True)
def _sub_codes(p, s, j, col, gx0, gy0, cw, ch, rec, cell_start, cell_seg, seg, seg_feature, rank, found):
    """The codes of special cell s's sub-cells into its record at rec[p] (a run's, not the band test's): a sub-cell
    that no edge comes within EPS of lies in the same features throughout, those of its centre (the run test
    there, which may name several: then SUB_TEST, as for a sub-cell an edge comes near). The edges that may come
    near are the cell's own (marked by the same test on the whole cell)."""
    rec[p + 3:p + HEAD] = 0
    for b in range(SUB):
        for a in range(SUB):
            x0, y0 = gx0 + (col + a / SUB) * cw, gy0 + (j + b / SUB) * ch
            x1, y1 = gx0 + (col + (a + 1) / SUB) * cw, gy0 + (j + (b + 1) / SUB) * ch
            code = SUB_TEST
            near = False
            for e in range(cell_start[s], cell_start[s + 1]):
                k = cell_seg[e]
                if _touches(seg[k, 0], seg[k, 1], seg[k, 2], seg[k, 3], x0, y0, x1, y1):
                    near = True
                    break
            if not near:
                f, overlap, undecided = _run_test((x0 + x1) / 2, (y0 + y1) / 2, p, gx0, cw, rec, seg, seg_feature,
                                                  rank, found)
                if not overlap and not undecided:
                    if f == NONE:
                        code = SUB_NONE
                    elif f == rec[p + 1]:
                        code = 0
                    else:
                        for e in range(min(rec[p], SUB_NONE - 1)):
                            if seg_feature[rec[p + HEAD + e]] == f:
                                code = e + 1
                                break
            sub = b * SUB + a
            rec[p + 3 + sub // 4] |= code << (8 * (sub % 4))


@njit(cache=True)
def _sub_code(rec, p, fi, fj):
    """The code of the sub-cell holding the point at grid coordinates (fi, fj) in the special cell of record p."""
    sub = int((fj - int(fj)) * SUB) * SUB + int((fi - int(fi)) * SUB)
    return (rec[p + 3 + sub // 4] >> (8 * (sub % 4))) & 0xFF


@njit(cache=True)
def _run_records(row_start, edge_col, cell_start, cell_seg, n_seg, cells, band_start, band_index, split, seg,
                 seg_feature, rank, gx0, gy0, cw, ch, max_edges, filling, pos, rec):
    """Per special cell, a record answering any point in it from one block of memory (no walk from cell to cell):
    rec[pos] = how many edges, or -1 for the band test; rec[pos + 1] the resolved cell ending the run (its feature
    or NONE); rec[pos + 2] that cell's column; rec[pos + 3:pos + HEAD] the sub-cells' codes (_sub_codes); then the
    run's distinct edges. A run goes right or left along the row from the cell to the nearest resolved cell,
    whichever lists fewer edges, unless the band test scans fewer.
    Counting pass (filling False): pos[s + 1] = the record's length. Filling pass: the records at pos[s]."""
    n = cells.shape[1]
    stamp = np.full(n_seg, -1, dtype=np.int64)
    none = np.empty(0, dtype=np.int32)
    found = np.empty(MAX_RUN_EDGES + 2, dtype=np.int32)
    mark = 0
    for j in range(row_start.shape[0] - 1):
        lo, hi = row_start[j], row_start[j + 1]
        for s in range(lo, hi):
            cx = gx0 + (edge_col[s] + 0.5) * cw
            limit = min(max_edges, _band_cost(cx, cw, j, band_start, band_index, split, seg))
            right = _run_edges(s, 1, lo, hi, edge_col, cell_start, cell_seg, stamp, mark, none, limit)[0]
            left = _run_edges(s, -1, lo, hi, edge_col, cell_start, cell_seg, stamp, mark + 1, none, limit)[0]
            mark += 2
            if min(right, left) > limit:
                step, count = 0, -1
            elif right <= left:
                step, count = 1, right
            else:
                step, count = -1, left
            if not filling:
                pos[s + 1] = HEAD + max(count, 0)
                continue
            p = pos[s]
            rec[p] = count
            rec[p + 1] = NONE
            rec[p + 2] = -1
            # Every sub-cell takes the band test (all bits set) unless the run's record answers it.
            rec[p + 3:p + HEAD] = -1
            if step != 0:
                end = _run_edges(s, step, lo, hi, edge_col, cell_start, cell_seg, stamp, mark,
                                 rec[p + HEAD:p + HEAD + count], count)[1]
                mark += 1
                rec[p + 1] = cells[j, end] if 0 <= end < n else NONE
                rec[p + 2] = end
                _sub_codes(p, s, j, edge_col[s], gx0, gy0, cw, ch, rec, cell_start, cell_seg, seg, seg_feature, rank,
                           found)


@njit(cache=True, inline="always")
def _run_test(px, py, p, gx0, cw, rec, seg, seg_feature, rank, found):
    """(feature or NONE, overlap flag, undecided flag) for a point in the special cell whose record is at rec[p]:
    the crossings of the ray from the point along its row to the centre of the run's resolved cell with the run's
    edges, and that cell's feature, give each feature's parity. Every edge crossing the ray lies within EPS of a
    cell of the run, so it is listed; every edge within EPS of the point is in its own cell's list, which is part
    of the run: a point that near one is undecided.
    Written without branches on the geometry (a mispredicted branch also discards the next points' memory reads,
    which is what a special point cost): each edge's crossing appends its feature to `found` or is overwritten."""
    xb = gx0 + (rec[p + 2] + 0.5) * cw
    rightward = xb > px
    near = False
    m = 0
    for e in range(p + HEAD, p + HEAD + rec[p]):
        k = rec[e]
        ax, ay, bx, by = seg[k, 0], seg[k, 1], seg[k, 2], seg[k, 3]
        dx, dy = bx - ax, by - ay
        u = dx * (py - ay)
        cross = u - dy * (px - ax)  # (x where the edge meets the row's line - px) * dy
        cross_b = u - dy * (xb - ax)  # the same against xb, which no edge comes within EPS of
        # Within EPS of the edge's line (a superset of within EPS of the edge): undecided.
        near |= cross * cross <= EPS * EPS * (dx * dx + dy * dy)
        beyond_p = (cross > 0.0) == (dy > 0.0)
        beyond_b = (cross_b > 0.0) == (dy > 0.0)
        found[m] = seg_feature[k]
        m += ((ay > py) != (by > py)) & (beyond_p != beyond_b) & (beyond_p == rightward)
    if near:
        return NONE, False, True
    found[m] = rec[p + 1]
    m += rec[p + 1] >= 0
    if m <= 1:  # most points: the run's own feature, no crossing
        return (found[0] if m else NONE), False, False
    # The features found an odd number of times hold the point; the lowest rank wins.
    best, inside = NONE, 0
    for a in range(m):
        f = found[a]
        times, first = 0, True
        for b in range(m):
            times += found[b] == f
            first &= not (b < a and found[b] == f)
        if first and times & 1:
            inside += 1
            if best == NONE or rank[f] < rank[best]:
                best = f
    return best, inside >= 2, False


BLOCK = 256  # points per block: every cell read first, then the special points, whose memory reads then overlap


@njit(cache=True)
def _lookup_range(lo, hi, x, y, gx0, gy0, cw, ch, cells, rec, start, index, split, seg, seg_feature, rank,
                  n_features, feature, rule, undecided):
    n = cells.shape[0]
    parity = np.zeros(n_features, dtype=np.uint8)
    touched = np.empty(n_features, dtype=np.int32)
    found = np.empty(MAX_RUN_EDGES + 2, dtype=np.int32)
    queue = np.empty(BLOCK, dtype=np.int64)
    where = np.empty(BLOCK, dtype=np.int64)
    value = np.empty(BLOCK, dtype=np.int64)
    code = np.empty(BLOCK, dtype=np.int64)
    flat = cells.reshape(-1)
    for b0 in range(lo, hi, BLOCK):
        b1 = min(b0 + BLOCK, hi)
        for p in range(b0, b1):
            fi = (x[p] - gx0) / cw
            fj = (y[p] - gy0) / ch
            inside = (fi >= 0.0) & (fi < n) & (fj >= 0.0) & (fj < n)  # outside the padded bbox: no feature
            value[p - b0] = int(fj) * n + int(fi) if inside else -1
        for q in range(b1 - b0):  # the cell reads alone: nothing waits on them, so they overlap
            c = value[q]
            value[q] = flat[c] if c >= 0 else NONE
        nq = 0
        for p in range(b0, b1):
            v = value[p - b0]
            feature[p] = v if v >= NONE else NONE
            rule[p] = 0
            undecided[p] = False
            queue[nq] = p
            where[nq] = v
            nq += v < NONE
        # Read ahead what the special points will test: the loads of these short loops overlap, where the test's
        # own loop would wait for each in turn (a special point cost several memory latencies).
        sink = 0.0
        for q in range(nq):
            if where[q] < EDGE:
                sink += rec[SLOT0 - where[q]]
        for q in range(nq):
            code[q] = SUB_TEST
            if where[q] < EDGE:
                p, a = queue[q], SLOT0 - where[q]
                code[q] = _sub_code(rec, a, (x[p] - gx0) / cw, (y[p] - gy0) / ch)
                if code[q] == SUB_TEST and rec[a] > 0:  # a run's edges lie near each other (row-major order)
                    sink += seg[rec[a + HEAD], 1] + seg[rec[a + HEAD - 1 + rec[a]], 1]
                elif 0 < code[q] < SUB_NONE:
                    sink += seg_feature[rec[a + HEAD - 1 + code[q]]]
        for q in range(nq):
            p, v, c = queue[q], where[q], code[q]
            if c != SUB_TEST:  # a sub-cell no edge comes near: its record names the feature
                a = SLOT0 - v
                feature[p] = NONE if c == SUB_NONE else (rec[a + 1] if c == 0 else seg_feature[rec[a + HEAD - 1 + c]])
                continue
            j = int((y[p] - gy0) / ch)
            # int8 cells (up to 127 features): the band test, measured faster there than records. int32 cells hold
            # the place of their special cell's record, which says whether a run or the band test answers.
            if v == EDGE or rec[SLOT0 - v] < 0:
                f, o, u = _band_test(x[p], y[p], j, start, index, split, seg, seg_feature, rank, parity, touched)
            else:
                f, o, u = _run_test(x[p], y[p], SLOT0 - v, gx0, cw, rec, seg, seg_feature, rank, found)
            feature[p] = f
            rule[p] = OVERLAP_CODE if o else 0
            undecided[p] = u
        if sink == 1e300:  # never: keeps the reads ahead from being optimized away (and would only cost a retest)
            undecided[b0] = True


@njit(parallel=True, cache=True, nogil=True)  # nogil: the event loop answers single lookups meanwhile
def _lookup_parallel(x, y, gx0, gy0, cw, ch, cells, rec, start, index, split, seg, seg_feature, rank, n_features,
                     feature, rule, undecided):
    m = x.shape[0]
    chunks = 64
    for c in prange(chunks):
        _lookup_range(c * m // chunks, (c + 1) * m // chunks, x, y, gx0, gy0, cw, ch, cells, rec, start, index,
                      split, seg, seg_feature, rank, n_features, feature, rule, undecided)


@njit(cache=True, nogil=True)
def _lookup_serial(x, y, gx0, gy0, cw, ch, cells, rec, start, index, split, seg, seg_feature, rank, n_features,
                   feature, rule, undecided):
    _lookup_range(0, x.shape[0], x, y, gx0, gy0, cw, ch, cells, rec, start, index, split, seg, seg_feature, rank,
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
        # Edges in row-major order of their midpoints' cells: a walk's few edges lie near each other in memory.
        mid_row = np.floor(((seg[:, 1] + seg[:, 3]) / 2 - self.y0) / self.ch)
        order = np.lexsort(((seg[:, 0] + seg[:, 2]) / 2, mid_row))
        self.seg, self.seg_feature = np.ascontiguousarray(seg[order]), np.ascontiguousarray(seg_feature[order])
        self.rank = version.rank.astype(np.int32)
        self.n_features = version.n_features
        # Each cell's edge list (cells no edge comes within EPS of have none): counted, then filled.
        count = np.zeros((cells, cells), dtype=np.int32)
        none = np.empty((1, 1), dtype=np.int32)
        _mark_edges(self.seg, self.x0, self.y0, self.cw, self.ch, cells, True, count, none, none[0], none[0])
        marked = count.ravel() > 0
        slot = np.cumsum(marked, dtype=np.int32).reshape(cells, cells) - 1
        slot[count == 0] = -1
        start = np.zeros(int(marked.sum()) + 1, dtype=np.int64)
        np.cumsum(count.ravel()[marked], out=start[1:])
        cell_seg = np.empty(int(start[-1]), dtype=np.int32)
        _mark_edges(self.seg, self.x0, self.y0, self.cw, self.ch, cells, False, count, slot, start[:-1].copy(),
                    cell_seg)
        # A cell holds a feature, NONE or EDGE: int8 up to 127 features (a quarter of int32's cache footprint);
        # int32 beyond, where a special cell holds its slot too.
        dtype = np.int8 if self.n_features <= 127 else np.int32
        self.cells = np.empty((cells, cells), dtype=dtype)
        _classify_runs(self.x0, self.y0, self.cw, self.ch, slot, start, cell_seg, self.seg, self.seg_feature,
                       self.n_features, self.cells)
        del slot
        self.band_start, self.band_index, self.band_split = _bands(self.seg, self.y0, self.ch, cells)
        self.rec = np.empty(0, dtype=np.int32)
        if self.cells.dtype == np.int32:
            # The special cells (marked, or where features overlap), row-major, each with its edge list; a record
            # per special cell, whose place the cell holds: one read leads a point to everything that answers it.
            special = np.flatnonzero(self.cells.ravel() == EDGE)
            row_start = np.searchsorted(special, np.arange(cells + 1, dtype=np.int64) * cells)
            edge_col = (special % cells).astype(np.int32)
            cell_start = np.zeros(len(special) + 1, dtype=np.int64)
            np.cumsum(count.ravel()[special], out=cell_start[1:])  # the marked cells' lists keep their order
            pos = np.zeros(len(special) + 1, dtype=np.int64)
            args = (row_start, edge_col, cell_start, cell_seg, len(self.seg), self.cells, self.band_start,
                    self.band_index, self.band_split, self.seg, self.seg_feature, self.rank, self.x0, self.y0,
                    self.cw, self.ch, MAX_RUN_EDGES)
            _run_records(*args, False, pos, self.rec)
            np.cumsum(pos, out=pos)
            if pos[-1] >= -(np.iinfo(np.int32).min - SLOT0):
                raise ValueError(f"{version.layer}: too many edges in special cells for int32 records")
            self.rec = np.empty(int(pos[-1]), dtype=np.int32)
            _run_records(*args, True, pos, self.rec)
            self.cells.ravel()[special] = (SLOT0 - pos[:-1]).astype(np.int32)
        del count, marked, cell_seg  # the per-cell lists served the build only

    @classmethod
    def build(cls, version: LayerVersion, cells: int = 2048, cache_dir: Path | None = None) -> GridIndex:
        """The grid, read from the disk cache when `cache_dir` holds one built from the same geometry by the same
        code (a layer of 50,000 small polygons takes about a second of CPU to build, a few ms to read). Keyed by
        LayerVersion.cache_key: the digest of the geometry read, not a pass over the polygons at each start."""
        key = version.cache_key(_CODE, cells, version.n_features) if cache_dir is not None else None
        if cache_dir is None or key is None:
            return cls(version, cells)
        grid, _ = cached(Path(cache_dir) / "grids" / f"{key}.pickle", lambda: cls(version, cells))
        grid.rank = version.rank.astype(np.int32)  # the rule's order, not the geometry: always the version's own
        return grid

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.cells, self.seg, self.seg_feature, self.band_index, self.band_start,
                                      self.band_split, self.rec))

    def lookup(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        m = len(x)
        # Every output is written by the kernel for every point: no zero-filling pass over 1M-row columns.
        feature = np.empty(m, dtype=np.int32)
        rule = np.empty(m, dtype=np.int8)
        undecided = np.empty(m, dtype=np.bool_)
        args = (read_only(x), read_only(y), self.x0,
                self.y0, self.cw, self.ch, self.cells, self.rec, self.band_start, self.band_index, self.band_split,
                self.seg, self.seg_feature,
                self.rank, self.n_features, feature, rule, undecided)
        if m < SERIAL_BELOW:
            _lookup_serial(*args)
        else:
            run_parallel(_lookup_parallel, *args)
        return feature, rule, undecided
