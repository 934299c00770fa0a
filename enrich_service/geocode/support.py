"""The tagging rule of geocode answers: a layer key only where the match supports it.

A geocode is a place the address could be, not the place: "University Ave, 92104" is any point of that street in
that ZIP. A key is given only when every location consistent with the match lies in one polygon of the layer:

- exact or interpolated point: the point and every point within POINT_TOLERANCE_M of it (8 points on a circle,
  tagged by the engine like the point itself, so the edge/overlap rule is the same);
- hundred block: the block's segment(s), or its address points when it has no segment;
- intersection: the node (every node when the streets meet at several places);
- street: with a ZIP, the ZIP's area (as the zip level: the reference holds only part of most streets, so its
  segments are not where the rest of the street runs); without one, never a key: the street's known segments and
  address points give the candidates, which may be incomplete;
- several streets of one name (the type left out: "7400 MIRAMAR"): the union of the match's extent on each;
- zip: the ZIP area (the ZCTA widened by ZIP_MARGIN_M: a postal ZIP is not exactly its ZCTA).

An extent (every level but the point ones) is sampled: points every SAMPLE_M along its lines, less END_TRIM_M at
each end (a block's addresses lie along it, not in the crossing where a boundary street may run), its address points,
each with the same 8 points around it; a node, as a disk. The samples are tagged by the engine, in one vectorized
call per layer version for a batch, so the edge/overlap rule is the engine's. A ZIP is its polygon (shapely). When
the samples disagree or one falls outside every polygon, the key is null, `<layer>_rule` is "ambiguous" and
`<layer>_candidates` lists the keys found. Verdicts are cached per (layer version, extent): streets and blocks
repeat across batches.
"""

from __future__ import annotations

import math
import threading

import numpy as np
import shapely

from ..engine.rules import RULE_AMBIGUOUS, RULE_NONE, RULE_OUTSIDE
from ..layers.store import LayerVersion
from .reference import M_PER_DEG_LAT, M_PER_DEG_LON, Reference

POINT_TOLERANCE_M = 5.0  # an address point or interpolated point: this close to a boundary is on it
ZIP_MARGIN_M = 250.0  # a ZIP's area: the ZCTA and this much around it
NODE_TOLERANCE_M = 30.0  # an intersection: the crossing is an area (a collision, a stop on one of its corners)
END_TRIM_M = 15.0  # a block's or street's segments, less this much at each end (the crossing street's half)
SAMPLE_M = 10.0  # spacing of the samples along an extent's lines
_ANGLES = np.linspace(0, 2 * np.pi, 8, endpoint=False)
OFFSET_LON = np.cos(_ANGLES) * POINT_TOLERANCE_M / M_PER_DEG_LON
OFFSET_LAT = np.sin(_ANGLES) * POINT_TOLERANCE_M / M_PER_DEG_LAT
ZIP_LAYER = "zip"
_MAX_CACHE = 200_000

Verdict = tuple  # (feature index in the version or -1, rule code, candidate keys)


class Extents:
    """Each extent's samples (per reference) and verdicts (per layer version), cached."""

    def __init__(self, ref: Reference):
        self.ref = ref
        self._samples: dict = {}
        self._verdict: dict = {}
        self._zip_parts: dict = {}
        self._lock = threading.Lock()  # GEOS prepared geometries are not safe to share between threads

    def verdicts(self, engine, layer: str, version: LayerVersion, offset: int, supports: list,
                 zip_version: LayerVersion | None) -> list[Verdict]:
        """(code in the engine's layer dictionary or -1, rule, candidate keys) for each extent, tagged with
        `version` (whose features start at `offset` in the dictionary)."""
        vkey = (layer, version.version, version.source.sha256)
        out: list = [self._verdict.get((vkey, s)) for s in supports]
        todo = [k for k, v in enumerate(out) if v is None]
        lons, lats, owner = [], [], []
        for k in todo:
            s = supports[k]
            if s[0] == "street" and s[2]:
                # The reference holds only part of most streets (a residential subset): "University Ave, 92104" is
                # anywhere on that street in that ZIP, most of it not in the reference. All that is known is the ZIP.
                s = ("zip", s[2])
            if s[0] == "zip":
                out[k] = self._zip_verdict(s[1], version, offset, zip_version)
                continue
            if s[0] == "any":  # several streets of one name: one key only if every one of them gives it
                parts = self.verdicts(engine, layer, version, offset, list(s[1]), zip_version)
                codes = {c for c, r, _ in parts}
                if len(codes) == 1 and -1 not in codes:
                    out[k] = parts[0]
                    continue
                keys = {key for _, _, ks in parts for key in ks}
                keys |= {str(version.keys[c - offset]) for c in codes if c >= 0}
                out[k] = (-1, RULE_AMBIGUOUS, tuple(sorted(keys)))
                continue
            got = self.samples(s)
            if got is None:  # nothing says where the match lies
                out[k] = (-1, RULE_AMBIGUOUS, ())
                continue
            lons.append(got[0])
            lats.append(got[1])
            owner.append(np.full(len(got[0]), k, dtype=np.int64))
        if owner:
            lon, lat, who = np.concatenate(lons), np.concatenate(lats), np.concatenate(owner)
            codes = engine.tag(lon, lat, np.ones(len(lon), dtype=bool), [layer],
                               as_of=version.effective_from).layers[layer].codes
            key = np.unique(who * (1 << 32) + (codes.astype(np.int64) + 1))  # (extent, code) pairs, in one sort
            pairs = np.column_stack([key >> 32, (key & 0xFFFFFFFF) - 1])
            starts = np.flatnonzero(np.r_[True, pairs[1:, 0] != pairs[:-1, 0]])
            for a, b in zip(starts.tolist(), np.r_[starts[1:], len(pairs)].tolist()):
                k, found = int(pairs[a, 0]), pairs[a:b, 1]
                whole = supports[k][0] != "street"  # a street without a ZIP: its known part is not all of it
                if whole and len(found) == 1 and found[0] >= 0:
                    out[k] = (int(found[0]), RULE_NONE, ())
                else:
                    held = tuple(sorted({str(version.keys[c - offset]) for c in found.tolist() if c >= 0}))
                    out[k] = (-1, RULE_AMBIGUOUS if held else RULE_OUTSIDE, held)
        if len(self._verdict) > _MAX_CACHE:
            self._verdict.clear()
        for k in todo:
            self._verdict[vkey, supports[k]] = out[k]
        return out

    # ---- samples of an extent --------------------------------------------------------------------------------------

    def samples(self, support: tuple):
        got = self._samples.get(support, False)
        if got is False:
            got = self._samples[support] = self._sample(support)
        return got

    def _sample(self, support: tuple):
        ref = self.ref
        kind = support[0]
        if kind == "nodes":  # a disk around each node: the centre and rings at a third, two thirds and all of it
            xy = np.asarray(support[1], dtype=float)
            rings = [np.zeros((1, 2))] + [np.column_stack([OFFSET_LON, OFFSET_LAT]) * NODE_TOLERANCE_M / POINT_TOLERANCE_M
                                          * f for f in (1 / 3, 2 / 3, 1.0)]
            disk = np.concatenate(rings)
            pts = (xy[:, None, :] + disk[None, :, :]).reshape(-1, 2)
            return pts[:, 0], pts[:, 1]
        lines: list = []
        lengths: list = []
        points: list = []
        if kind == "segs":
            segs = np.asarray(support[1], dtype=np.int64)
            lines, lengths = list(ref.seg_geom[segs]), ref.vertices.length_m[segs].tolist()
        elif kind == "line":
            x0, y0, x1, y1 = support[1]
            lines = [shapely.LineString([(x0, y0), (x1, y1)])]
            lengths = [math.hypot((x1 - x0) * M_PER_DEG_LON, (y1 - y0) * M_PER_DEG_LAT)]
        elif kind in ("pts", "at"):
            points = list(support[1]) if kind == "at" else [(ref.pt_lon_list[r], ref.pt_lat_list[r])
                                                            for r in support[1]]
        elif kind == "street":
            _, sid, zip5 = support
            if sid not in ref.segments_of and sid not in ref.points_of:
                return None  # known only where it crosses other streets: its extent is unknown
            street = ref.segments_of.get(sid)
            if street is not None and len(street):
                if zip5 and (ref.seg_zip[street] == zip5).any():
                    street = street[ref.seg_zip[street] == zip5]
                lines, lengths = list(ref.seg_geom[street]), ref.vertices.length_m[street].tolist()
            rows = ref.points_of.get(sid)
            if rows is not None and len(rows):
                if zip5 and (ref.pt_zip[rows] == zip5).any():
                    rows = rows[ref.pt_zip[rows] == zip5]
                points = [(ref.pt_lon_list[r], ref.pt_lat_list[r]) for r in rows.tolist()]
        else:
            return None
        parts = [np.asarray(points, dtype=float).reshape(-1, 2)]
        if lines:
            length = np.asarray(lengths, dtype=float)
            cut = np.where(length > 0, np.minimum(0.25, END_TRIM_M / np.maximum(length, 1e-9)), 0.5)
            n = np.maximum(2, np.ceil(length * (1 - 2 * cut) / SAMPLE_M).astype(np.int64) + 1)
            line = np.repeat(np.arange(len(length)), n)
            k = np.arange(int(n.sum())) - np.repeat(np.cumsum(n) - n, n)
            fraction = cut[line] + (1 - 2 * cut[line]) * k / (n[line] - 1)
            geoms = np.empty(len(lines), dtype=object)
            geoms[:] = lines
            at = shapely.line_interpolate_point(geoms[line], fraction, normalized=True)
            parts.append(shapely.get_coordinates(at))
        xy = np.concatenate(parts)
        if not len(xy):
            return None
        ring = np.concatenate([np.zeros((1, 2)), np.column_stack([OFFSET_LON, OFFSET_LAT])])
        pts = (xy[:, None, :] + ring[None, :, :]).reshape(-1, 2)
        return pts[:, 0], pts[:, 1]

    # ---- a ZIP's area ------------------------------------------------------------------------------------------------

    def _zip_verdict(self, zip5: str, v: LayerVersion, offset: int, zip_version: LayerVersion | None) -> Verdict:
        if zip_version is None:
            return (-1, RULE_AMBIGUOUS, ())
        mine = zip_version.geoms[zip_version.keys == zip5]
        if not len(mine):
            return (-1, RULE_AMBIGUOUS, ())
        # A caller's ZIP is a postal ZIP, the layer a Census ZCTA: 1-2% of addresses lie in a neighbouring ZCTA,
        # near its edge (measured: docs/geocode.md). The area is widened by ZIP_MARGIN_M for that.
        area = shapely.buffer(shapely.union_all(mine), ZIP_MARGIN_M / M_PER_DEG_LAT, quad_segs=2)
        with self._lock:
            tree, parts = self._index(v)
            cand = tree.query(area)
            if len(cand):
                cand = cand[shapely.intersects(parts[cand], area)]
            if not len(cand):
                return (-1, RULE_OUTSIDE, ())
            feats = np.unique(v.part_feature[cand])
            best = int(feats[np.argmin(v.rank[feats])])
            if shapely.covers(parts[cand[v.part_feature[cand] == best]], area).any():
                return (best + offset, RULE_NONE, ())
        return (-1, RULE_AMBIGUOUS, tuple(sorted({str(k) for k in v.keys[feats]})))

    def _index(self, v: LayerVersion):
        key = (v.layer, v.version, v.source.sha256)
        got = self._zip_parts.get(key)
        if got is None:
            parts = shapely.from_wkb(shapely.to_wkb(v.parts))  # our own copies, prepared under our own lock
            shapely.prepare(parts)
            got = self._zip_parts[key] = (shapely.STRtree(parts), parts)
        return got

