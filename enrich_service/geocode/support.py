"""The tagging rule of geocode answers: a layer key only where the match supports it.

A geocode is a place the address could be, not the place: "University Ave, 92104" is any point of that street in
that ZIP. A key is given only when every location consistent with the match lies in one polygon of the layer:

- exact or interpolated point: the point and every point within POINT_TOLERANCE_M of it (8 points on a circle,
  tagged by the engine like the point itself, so the edge/overlap rule is the same);
- hundred block: the block's segment(s), or its address points when it has no segment;
- intersection: the node (every node when the streets meet at several places);
- street: every segment and address point of the street, within the given ZIP when there is one;
- zip: the ZIP area (the ZCTA widened by ZIP_MARGIN_M: a postal ZIP is not exactly its ZCTA).

Extents (every level but the point ones) are shapely geometries, buffered by the same tolerance; their ends are
trimmed by END_TRIM_M first, as a block's addresses lie along it, not at the crossing where a boundary street runs.
Otherwise the key is null, `<layer>_rule` is "ambiguous" and `<layer>_candidates` lists the keys the extent touches.
The verdict for an extent is cached per (layer version, extent): streets and blocks repeat across batches.
"""

from __future__ import annotations

import threading

import numpy as np
import shapely
from shapely.ops import substring

from ..engine.rules import RULE_AMBIGUOUS, RULE_NONE, RULE_OUTSIDE
from ..layers.store import LayerVersion
from .reference import M_PER_DEG_LAT, M_PER_DEG_LON, Reference

POINT_TOLERANCE_M = 5.0  # an address point or interpolated point: this close to a boundary is on it
ZIP_MARGIN_M = 250.0  # a ZIP's area: the ZCTA and this much around it
NODE_TOLERANCE_M = 30.0  # an intersection: the crossing is an area (a collision, a stop on one of its corners)
END_TRIM_M = 15.0  # a block's or street's segments, less this much at each end (the crossing street's half)
_TOL_DEG = POINT_TOLERANCE_M / M_PER_DEG_LAT
_TRIM_DEG = END_TRIM_M / M_PER_DEG_LAT
_ANGLES = np.linspace(0, 2 * np.pi, 8, endpoint=False)
OFFSET_LON = np.cos(_ANGLES) * POINT_TOLERANCE_M / M_PER_DEG_LON
OFFSET_LAT = np.sin(_ANGLES) * POINT_TOLERANCE_M / M_PER_DEG_LAT
ZIP_LAYER = "zip"
_MAX_CACHE = 200_000

Verdict = tuple  # (feature index in the version or -1, rule code, candidate keys)


class Extents:
    """The geometry of each extent (per reference) and each extent's verdict per layer version."""

    def __init__(self, ref: Reference):
        self.ref = ref
        self._geom: dict = {}
        self._verdict: dict = {}
        self._parts: dict = {}  # version key -> (STRtree, prepared copies of the parts)
        self._lock = threading.Lock()  # GEOS prepared geometries are not safe to share between threads

    # ---- geometry of an extent -----------------------------------------------------------------------------------

    def geometry(self, support: tuple, zip_version: LayerVersion | None):
        got = self._geom.get(support)
        if got is None:
            got = self._geom[support] = self._build(support, zip_version)
        return got

    def _build(self, support: tuple, zip_version: LayerVersion | None):
        ref = self.ref
        kind = support[0]
        if kind == "zip":
            if zip_version is None:
                return None
            mine = zip_version.geoms[zip_version.keys == support[1]]
            if not len(mine):
                return None
            # A caller's ZIP is a postal ZIP, the layer a Census ZCTA: 1-2% of addresses lie in a neighbouring
            # ZCTA, near its edge (measured: docs/geocode.md). The area is widened by ZIP_MARGIN_M for that.
            return shapely.buffer(shapely.union_all(mine), ZIP_MARGIN_M / M_PER_DEG_LAT, quad_segs=2)
        parts = []
        if kind == "segs":
            parts.extend(_trimmed(ref.seg_geom[list(support[1])]))
        elif kind == "line":
            x0, y0, x1, y1 = support[1]
            parts.extend(_trimmed([shapely.LineString([(x0, y0), (x1, y1)])]))
        elif kind == "nodes":
            return shapely.buffer(shapely.multipoints(np.asarray(support[1], dtype=float)),
                                  NODE_TOLERANCE_M / M_PER_DEG_LAT, quad_segs=4)
        elif kind in ("pts", "at"):
            xy = support[1] if kind == "at" else [(ref.pt_lon_list[r], ref.pt_lat_list[r]) for r in support[1]]
            parts.append(shapely.multipoints(np.asarray(xy, dtype=float)))
        elif kind == "street":
            _, sid, zip5 = support
            if zip5 and zip5 not in ref.street_zips.get(sid, ()):
                # The street is known, but not in the given ZIP (the reference is a subset): all that is known is
                # that the address lies in that ZIP.
                return self._build(("zip", zip5), zip_version)
            if sid not in ref.segments_of and sid not in ref.points_of:
                return None  # known only where it crosses other streets: its extent is unknown
            segs = ref.segments_of.get(sid)
            if segs is not None and len(segs):
                if zip5 and (ref.seg_zip[segs] == zip5).any():
                    segs = segs[ref.seg_zip[segs] == zip5]
                parts.extend(_trimmed(ref.seg_geom[segs]))
            rows = ref.points_of.get(sid)
            if rows is not None and len(rows):
                if zip5 and (ref.pt_zip[rows] == zip5).any():
                    rows = rows[ref.pt_zip[rows] == zip5]
                parts.append(shapely.multipoints(np.column_stack([ref.pt_lon[rows], ref.pt_lat[rows]])))
        if not parts:
            return None
        return shapely.buffer(shapely.union_all(parts), _TOL_DEG, quad_segs=2)

    # ---- verdict per layer version -------------------------------------------------------------------------------

    def verdict(self, support: tuple, layer: str, version: LayerVersion,
                zip_version: LayerVersion | None) -> Verdict:
        key = (layer, version.version, version.source.sha256, support)
        got = self._verdict.get(key)
        if got is not None:
            return got
        geom = self.geometry(support, zip_version)
        if geom is None:  # nothing says where the match lies (a ZIP the zip layer lacks)
            got = (-1, RULE_AMBIGUOUS, ())
        else:
            with self._lock:
                got = self._decide(geom, version)
        if len(self._verdict) > _MAX_CACHE:
            self._verdict.clear()
        self._verdict[key] = got
        return got

    def _decide(self, geom, v: LayerVersion) -> Verdict:
        tree, parts = self._index(v)
        cand = tree.query(geom)
        if len(cand):
            cand = cand[shapely.intersects(parts[cand], geom)]
        if not len(cand):
            return (-1, RULE_OUTSIDE, ())
        feats = np.unique(v.part_feature[cand])
        best = int(feats[np.argmin(v.rank[feats])])
        # The best-ranked feature touching the extent holds all of it: every location gets that key.
        own = cand[v.part_feature[cand] == best]
        if shapely.covers(parts[own], geom).any():
            return (best, RULE_NONE, ())
        keys = sorted({str(k) for k in v.keys[feats]})
        if len(keys) == 1 and shapely.covers(shapely.union_all(v.geoms[feats]), geom):
            return (best, RULE_NONE, ())  # one key, its polygon in several features or parts
        return (-1, RULE_AMBIGUOUS, tuple(keys))

    def _index(self, v: LayerVersion):
        key = (v.layer, v.version, v.source.sha256)
        got = self._parts.get(key)
        if got is None:
            parts = shapely.from_wkb(shapely.to_wkb(v.parts))  # our own copies, prepared under our own lock
            shapely.prepare(parts)
            got = self._parts[key] = (shapely.STRtree(parts), parts)
        return got


def _trimmed(lines) -> list:
    """Each line less END_TRIM_M at both ends (at most a quarter of its length)."""
    out = []
    for line in lines:
        length = line.length
        cut = min(_TRIM_DEG, 0.25 * length)
        out.append(substring(line, cut, length - cut) if cut > 0 else line)
    return out
