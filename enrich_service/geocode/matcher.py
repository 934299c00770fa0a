"""Match normalized addresses against the reference, most precise level first.

Levels: exact (an address point), interpolated (along the segment whose range holds the number, or between two
nearby address points of the same street side), intersection, hundred_block (the middle of the block "1000 FIRST
AVE" names; tried before interpolation for numbers ending in 00), street (the street is known, the number is not
covered), zip, none. Base scores in SCORES; docs/geocode.md has the table.
A street name found only by dropping its type/direction, or only by fuzzy matching, scores lower.

A batch is deduplicated twice (same text, then same normalized address) and each distinct address is matched once
in Python with dict lookups; the positions along segments are computed for the whole batch at once in numpy.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Container
from dataclasses import dataclass

import numpy as np
from rapidfuzz import fuzz, process

from ..server.cancellation import raise_if_cancelled
from .cache import ResultCache
from .normalize import FREEWAY, Parsed, parse
from .reference import M_PER_DEG_LAT, M_PER_DEG_LON, Reference
from .support import Extents

LEVELS = ("exact", "interpolated", "intersection", "hundred_block", "street", "zip", "none")
SCORES = {"exact": 1.0, "interpolated": 0.9, "intersection": 0.85, "hundred_block": 0.8, "street": 0.5,
          "zip": 0.3, "none": 0.0}
# Address points sit a median ~24 m from their street's centerline (measured: docs/geocode.md).
SETBACK_M = 24.0
# Between two address points of the same side at most this many numbers (and metres) apart: interpolate on them.
NEIGHBOR_MAX_GAP = 20
NEIGHBOR_MAX_M = 150.0
FUZZY_CUTOFF = 88.0
TYPE_DIFFERS = 0.95  # the street was found by its name alone (its type or direction left out)
OTHER_CITY_FACTOR = 0.5  # the address names another city (or a ZIP wholly outside San Diego)
OTHER_STREET = 0.8  # only a street of the same name with another type or direction: never matched by number
# San Diego's highest house numbers are 5 digits; a longer one is a typo or junk, never a place on the street (and
# beyond int64 it would overflow the numpy lookups).
MAX_HOUSE_NUMBER = 999_999


@dataclass
class Geocoded:
    """Columns, one row per input record, in input order. Flags and reasons are sparse: row -> text."""

    lon: np.ndarray
    lat: np.ndarray
    match: np.ndarray  # object: level name
    score: np.ndarray
    matched: list  # the reference address matched, or None
    reason: dict[int, str]
    flags: dict[int, str]
    support: np.ndarray | None = None  # object: per row, the locations consistent with the match (Result[8])

    def __len__(self) -> int:
        return len(self.lon)


class _Pending:
    """A match whose position is along a segment: filled in for the whole batch at once (Vertices.along)."""

    __slots__ = ("seg", "t", "side", "setback", "lon", "lat")

    def __init__(self, seg: int, t: float, side: int, setback: float):
        self.seg, self.t, self.side, self.setback = seg, t, side, setback  # side: +1 left, -1 right, 0 centerline
        self.lon = self.lat = float("nan")


# One result: (lon or _Pending, lat, level, score, matched_address, reason, flags, the matched reference ZIP,
# support). `support` names every location consistent with the match, for the tagging rule (support.py): None for a
# point (exact, interpolated: the point itself), ("at", (lon, lat) pairs) for an exact number found in several ZIPs
# with none given, ("unknown",) where the reference cannot say (a number or crossing beyond what it holds, a street
# found by a similar name), ("segs", segment ids) for a block, ("nodes", (lon, lat) pairs) for an
# intersection, ("line", (lon0, lat0, lon1, lat1)) for a block between two crossings, ("pts", point rows) for a
# block known only by its address points, ("street", street id, zip) for a street, ("zip", zip) for a ZIP,
# ("any", supports) for a number on several same-named streets (the type left out: every one of them).
Result = tuple


class Geocoder:
    def __init__(self, ref: Reference, cache: ResultCache | None = None, outside_zips: Container[str] = frozenset()):
        self.ref = ref
        self.cache = cache
        self.outside_zips = outside_zips  # ZIPs wholly outside the city: an address there is another city's
        self.extents = Extents(ref)
        self._fuzzy: dict[str, tuple[int, float] | None] = {}
        # Fuzzy candidates by first letter: a typo there is rare, and it cuts the comparisons to a few streets' worth.
        self._by_letter: dict[str, tuple[list[str], list[int]]] = {}
        for name, sid in ref.street_id.items():
            names, ids = self._by_letter.setdefault(name[0], ([], []))
            names.append(name)
            ids.append(sid)

    @property
    def sha256(self) -> str:
        return self.ref.sha256

    def describe(self) -> dict:
        out = self.ref.describe()
        if self.cache is not None:
            out["cache"] = self.cache.describe()
        return out

    # ---- batch -----------------------------------------------------------------------------------------------

    def geocode(self, addresses: list, zips: list | None = None, use_cache: bool = True) -> Geocoded:
        n = len(addresses)
        zips = zips if zips is not None else [None] * n
        cache = self.cache if use_cache else None
        slot: dict[tuple, int] = {}
        first_row: list[int] = []
        inverse = [0] * n
        for i, (address, zip_code) in enumerate(zip(addresses, zips)):
            # Not text: one result per type ("address must be text, got int"); lists and dicts are not hashable.
            key = (address if address.__class__ is str else ("not text", type(address).__name__),
                   zip_code if zip_code is None or zip_code.__class__ is str else str(zip_code)[:20])
            j = slot.get(key)
            if j is None:
                j = slot[key] = len(first_row)
                first_row.append(i)
            inverse[i] = j
        keys = list(slot)
        unique: list = [None] * len(keys)
        by_parsed: dict[tuple, Result] = {}
        memo: dict = {}  # this batch's street spellings, each normalized once
        fresh: list[int] = []
        for j, i in enumerate(first_row):
            if not j & 255:  # a request that timed out stops here (its answer, a 504, is already sent)
                raise_if_cancelled()
            if cache is not None:
                hit = cache.get(keys[j])
                if hit is not None:
                    unique[j] = hit
                    continue
                fresh.append(j)
            parsed = parse(addresses[i], None, zips[i], memo)
            pkey = parsed.key()
            result = by_parsed.get(pkey)
            if result is None:
                result = by_parsed[pkey] = self.match(parsed)
            unique[j] = result
        self._place(by_parsed.values())
        unique = [_resolved(r) for r in unique]
        if cache is not None:
            cache.put_many({keys[j]: unique[j] for j in fresh})
            cache.count(len(keys) - len(fresh), len(fresh))
        return _columns(unique, np.array(inverse, dtype=np.int64))

    def _place(self, results) -> None:
        """Positions along segments for every pending result at once: interpolate, then set back from the line."""
        pending = [r[0] for r in results if r[0].__class__ is _Pending]
        if not pending:
            return
        seg = np.fromiter((p.seg for p in pending), dtype=np.int64, count=len(pending))
        t = np.fromiter((p.t for p in pending), dtype=np.float64, count=len(pending))
        side = np.fromiter((p.side * p.setback for p in pending), dtype=np.float64, count=len(pending))
        point, direction = self.ref.vertices.along(seg, t)
        # Left of the direction of travel is (-dy, dx); side is +setback for left, -setback for right.
        lon = point[:, 0] - direction[:, 1] * side / M_PER_DEG_LON
        lat = point[:, 1] + direction[:, 0] * side / M_PER_DEG_LAT
        for p, x, y in zip(pending, lon.tolist(), lat.tolist()):
            p.lon, p.lat = x, y

    # ---- one distinct address ----------------------------------------------------------------------------------

    def match(self, p: Parsed) -> Result:
        got = self._match(p)
        if p.city or (p.zip and p.zip in self.outside_zips):
            # "..., Coronado", "..., 92118": a same-named San Diego street is a guess at another city's address.
            flags = f"{got[6]},other_city" if got[6] else "other_city"
            got = got[:3] + (round(got[3] * OTHER_CITY_FACTOR, 3),) + got[4:6] + (flags,) + got[7:]
        return got

    def _match(self, p: Parsed) -> Result:
        if p.kind == "address":
            return self._address(p)
        if p.kind == "intersection":
            return self._intersection(p)
        if p.kind == "between":
            return self._between(p)
        if p.kind == "street":
            return self._street_only(p)
        return self._zip_or_none(p, p.reason or "no street in the address")

    def _address(self, p: Parsed) -> Result:
        cands, factor, flag = self.resolve_street(p.street, p.base, p.zip)
        if not cands:
            return self._zip_or_none(p, _not_in_reference(p.street))
        ref = self.ref
        number = p.number
        if not 0 <= number <= MAX_HOUSE_NUMBER:
            return self._street_only(p, f"house number {number} is not a house number (more than "
                                        f"{len(str(MAX_HOUSE_NUMBER))} digits); placed on the street")
        if flag == "street_type_differs" and len(cands) > 1:
            return self._any_of(p, cands, factor, flag)
        for sid in cands if flag != "street_differs" else ():
            if p.block:  # "1000 block of X": somewhere on the block, never the point numbered 1000
                got = self._hundred_block(sid, number - number % 100, p.zip)
                if got is not None:
                    return _finish(got, factor, flag, p)
                continue
            got = self._exact(sid, number, p.zip)
            if got is not None and p.zip and got[7] != p.zip:
                # The point is in another ZIP: a range in the address's own ZIP is the better answer, if any.
                local = self._interpolate(sid, number, p.zip)
                got = local if local is not None and local[7] == p.zip else got
            if got is None and number % 100 == 0 and number > 0:
                got = self._hundred_block(sid, number, p.zip)
            if got is None:
                got = self._interpolate(sid, number, p.zip)
            if got is not None:
                return _finish(got, factor, flag, p)
        got = _beyond(self._street_fallback(cands[0], number, p.zip), p.zip)
        reason = f"house number {number} is not in the reference for {ref.streets[cands[0]]}; placed on the street"
        return _finish(got, factor, flag, p, reason)

    def _any_of(self, p: Parsed, cands: list[int], factor: float, flag: str) -> Result:
        """"7400 MIRAMAR" (the type left out) names MIRAMAR AV and MIRAMAR RD alike: the answer is the first street
        whose numbers hold it, but the locations consistent with it are on every street of that name."""
        best, parts = None, []
        for sid in cands:
            got = self._address_on(p, sid)
            if got is None:  # the number is on a part of that street the reference lacks
                parts.append(("street", sid, p.zip))
                continue
            best = best or got
            parts.append(_extent_of(got))
        if best is None:
            got = _beyond(self._street_fallback(cands[0], p.number, p.zip), p.zip)
            reason = f"house number {p.number} is not in the reference for {self.ref.streets[cands[0]]}; placed on " \
                     f"the street"
            return _finish(got[:8] + (("any", tuple(parts)),), factor, flag, p, reason)
        return _finish(best[:8] + (("any", tuple(parts)),), factor, flag, p)

    def _address_on(self, p: Parsed, sid: int):
        """The number on one street: block, exact, hundred block, interpolated; None when the reference lacks it."""
        number = p.number
        if p.block:
            return self._hundred_block(sid, number - number % 100, p.zip)
        got = self._exact(sid, number, p.zip)
        if got is None and number % 100 == 0 and number > 0:
            got = self._hundred_block(sid, number, p.zip)
        return got if got is not None else self._interpolate(sid, number, p.zip)

    def _exact(self, sid: int, number: int, zip5: str):
        rows = self.ref.exact.get((sid, number))
        if not rows:
            return None
        ref = self.ref
        zips = ref.pt_zip_list
        row = rows[0]
        flags = ""
        if len(rows) > 1:
            row = next((r for r in rows if zips[r] == zip5), row) if zip5 else row
            flags = "ambiguous" if not zip5 and len({zips[r] for r in rows}) > 1 else ""
        z = zips[row]
        return (ref.pt_lon_list[row], ref.pt_lat_list[row], "exact", 1.0,
                f"{ref.pt_label[row]}, {z}" if z else ref.pt_label[row], "", flags, z,
                ("at", tuple((ref.pt_lon_list[r], ref.pt_lat_list[r]) for r in rows)) if flags else None)

    def _hundred_block(self, sid: int, number: int, zip5: str):
        """The middle of the block: on the centerline where number + 50 would be."""
        ref = self.ref
        middle = number + 50
        block = ref.ranges_by_block.get((sid, number // 100), ())
        entries = [e for e in block if e[0] <= number + 99 and e[1] >= number]
        if entries:
            entries = _prefer_zip(entries, zip5)
            e = next((e for e in entries if e[0] <= middle <= e[1]), entries[0])
            lo, hi, _, _, seg, z = e
            t = min(max((middle - lo) / (hi - lo), 0.0), 1.0) if hi > lo else 0.5
            same = [x for x in entries if x[5] == z] if zip5 else entries
            return (_Pending(seg, t, 0, 0.0), None, "hundred_block", SCORES["hundred_block"],
                    f"{number} block of {ref.seg_label[seg]}, {z}".rstrip(", "), "", "", z,
                    ("segs", tuple(sorted({x[4] for x in same}))))
        rows = ref.points_of.get(sid)
        if rows is not None:
            nums = ref.pt_number[rows]
            inside = rows[(nums >= number) & (nums <= number + 99)]
            if len(inside):
                z = ref.pt_zip[inside[0]]
                return (float(np.mean(ref.pt_lon[inside])), float(np.mean(ref.pt_lat[inside])), "hundred_block",
                        SCORES["hundred_block"], f"{number} block of {ref.streets[sid]}, {z}".rstrip(", "),
                        "", "", z, ("pts", tuple(int(r) for r in inside)))
        return None

    def _interpolate(self, sid: int, number: int, zip5: str):
        ref = self.ref
        near = self._between_points(sid, number, NEIGHBOR_MAX_GAP)
        if near is not None:
            return near
        entries = [e for e in ref.ranges_by_block.get((sid, number // 100), ()) if e[0] <= number <= e[1]]
        if entries:
            parity = number % 2
            same_side = [e for e in entries if e[2] == parity or e[2] < 0]
            score = SCORES["interpolated"]
            if not same_side:
                score -= 0.05
            entries = _prefer_zip(same_side or entries, zip5)
            lo, hi, _, side, seg, z = entries[0]
            t = (number - lo) / (hi - lo) if hi > lo else 0.5
            return (_Pending(seg, t, side, SETBACK_M), None, "interpolated", score,
                    f"{number} {ref.seg_label[seg]} (range {lo}-{hi}), {z}".rstrip(", "), "", "", z, None)
        return self._between_points(sid, number, 100)

    def _between_points(self, sid: int, number: int, max_gap: int):
        """Between the nearest lower and higher address points of the same side, when close in number and space."""
        ref = self.ref
        side = ref.points_by_side.get((sid, number & 1))
        if side is None:
            return None
        nums, rows = side
        k = bisect.bisect_left(nums, number)
        if k == 0 or k >= len(nums):
            return None
        lo, hi = nums[k - 1], nums[k]
        if hi - lo > max_gap or hi == lo:
            return None
        a, b = rows[k - 1], rows[k]
        lons, lats = ref.pt_lon_list, ref.pt_lat_list
        if math.hypot((lons[b] - lons[a]) * M_PER_DEG_LON, (lats[b] - lats[a]) * M_PER_DEG_LAT) > NEIGHBOR_MAX_M:
            return None
        f = (number - lo) / (hi - lo)
        z = ref.pt_zip_list[a]
        return (lons[a] + f * (lons[b] - lons[a]), lats[a] + f * (lats[b] - lats[a]), "interpolated",
                SCORES["interpolated"],
                f"{number} {ref.streets[sid]} (between {ref.pt_label[a]} and {ref.pt_label[b]}), {z}".rstrip(", "),
                "", "", z, None)

    def _street_fallback(self, sid: int, number: int, zip5: str):
        """The street's nearest known number: the end of the closest range, or the closest address point."""
        ref = self.ref
        entries = _prefer_zip(ref.ranges_of.get(sid, []), zip5) if ref.ranges_of.get(sid) else []
        best: tuple[int, tuple] | None = None  # (gap to the number, answer)
        if entries:
            gap, e = min(((max(e[0] - number, number - e[1], 0), e) for e in entries), key=lambda g: g[0])
            lo, hi, _, _, seg, z = e
            best = (gap, (_Pending(seg, 0.0 if number < lo else 1.0, 0, 0.0), None, "street", _street_score(gap),
                          f"{ref.seg_label[seg]} (nearest range {lo}-{hi}), {z}".rstrip(", "), "", "", z,
                          ("street", sid, zip5)))
        rows = ref.points_of.get(sid)
        if rows is not None:
            nums = ref.pt_number[rows]
            k = int(np.argmin(np.abs(nums - number)))
            gap = abs(int(nums[k]) - number)
            if best is None or gap < best[0]:
                row = rows[k]
                z = ref.pt_zip[row]
                best = (gap, (float(ref.pt_lon[row]), float(ref.pt_lat[row]), "street", _street_score(gap),
                              f"{ref.streets[sid]} (nearest number {ref.pt_label[row]}), {z}".rstrip(", "), "", "",
                              z, ("street", sid, zip5)))
        return best[1] if best is not None else self._street_point(sid, zip5)

    def _street_point(self, sid: int, zip5: str):
        """A point in the middle of the street: the segment (or address point) nearest the street's median."""
        ref = self.ref
        segs = ref.segments_of.get(sid)
        if segs is not None and len(segs):
            if zip5 and (ref.seg_zip[segs] == zip5).any():
                segs = segs[ref.seg_zip[segs] == zip5]
            mids = ref.seg_mid[segs]
            k = int(np.argmin(np.abs(mids - np.median(mids, axis=0)).sum(axis=1)))
            seg = segs[k]
            return (float(mids[k, 0]), float(mids[k, 1]), "street", _extent_score(mids),
                    f"{ref.seg_label[seg]}, {ref.seg_zip[seg]}".rstrip(", "), "", "", ref.seg_zip[seg],
                    ("street", sid, zip5))
        rows = ref.points_of.get(sid)
        if rows is None:  # known only as a cross street: the middle of its crossings
            where = ref.crossings_of[sid]
            xy = np.array([(w[0], w[1]) for w in where])
            k = int(np.argmin(np.abs(xy - np.median(xy, axis=0)).sum(axis=1)))
            return (float(xy[k, 0]), float(xy[k, 1]), "street", _extent_score(xy),
                    f"{ref.streets[sid]} (cross street), {where[k][2]}".rstrip(", "), "", "", where[k][2],
                    ("street", sid, zip5))
        if zip5 and (ref.pt_zip[rows] == zip5).any():
            rows = rows[ref.pt_zip[rows] == zip5]
        xy = np.column_stack([ref.pt_lon[rows], ref.pt_lat[rows]])
        k = int(np.argmin(np.abs(xy - np.median(xy, axis=0)).sum(axis=1)))
        return (float(xy[k, 0]), float(xy[k, 1]), "street", _extent_score(xy),
                f"{ref.streets[sid]}, {ref.pt_zip[rows[k]]}".rstrip(", "), "", "", ref.pt_zip[rows[k]],
                ("street", sid, zip5))

    def _street_only(self, p: Parsed, reason: str = "no house number") -> Result:
        cands, factor, flag = self.resolve_street(p.street, p.base, p.zip)
        if not cands:
            return self._zip_or_none(p, _not_in_reference(p.street))
        return _finish(self._street_point(cands[0], p.zip), factor, flag, p, reason)

    def _intersection(self, p: Parsed) -> Result:
        a, fa, flag_a = self.resolve_street(p.street, p.base, p.zip)
        b, fb, flag_b = self.resolve_street(p.street2, p.base2, p.zip)
        if "street_differs" in (flag_a, flag_b):
            # "College Blvd & Adams St" is not where College Ave meets Adams Ave: another place, maybe another city.
            a, b = (a if flag_a != "street_differs" else []), (b if flag_b != "street_differs" else [])
            if a:
                got = _beyond(self._street_point(a[0], p.zip), p.zip)
                return _finish(got, fa * 0.8, flag_a, p, f"{p.street2 if b == [] else p.street} is not in the "
                                                         f"reference (only a street of that name with another type "
                                                         f"or direction); placed on the other street")
        if not a or not b:
            missing = p.street if not a else p.street2
            return self._zip_or_none(p, _not_in_reference(missing))
        # A type left out ("Mtn View Dr & Copley Ave": W and E MTN VIEW DR both cross it, 900 m apart): every pair
        # of same-named streets that meet is a location consistent with the answer.
        every = "street_type_differs" in (flag_a, flag_b)
        found = []
        for sa in a:
            for sb in b:
                where = self.ref.intersections.get((sa, sb))
                if where:
                    found.append((sa, sb, [w for w in where if w[2] == p.zip] or where))
                    if not every:
                        break
            if found and not every:
                break
        if found:
            sa, sb, matches = found[0]
            lon, lat, z = matches[0]
            nodes = [w for _, _, m in found for w in m]
            flags = "ambiguous" if len(nodes) > 1 and _spread_m(nodes) > 100 else ""
            label = f"{self.ref.streets[sa]} & {self.ref.streets[sb]}, {z}".rstrip(", ")
            got = (lon, lat, "intersection", SCORES["intersection"], label, "", flags, z,
                   ("nodes", tuple((w[0], w[1]) for w in nodes)))
            return _finish(got, fa * fb, ",".join(f for f in (flag_a, flag_b) if f), p)
        got = _beyond(self._street_point(a[0], p.zip), p.zip)
        # Somewhere along the first street, and nothing says where: below a street-only answer.
        return _finish(got, fa * 0.8, flag_a, p, f"{self.ref.streets[a[0]]} and {self.ref.streets[b[0]]} do not "
                                                 f"meet in the reference; placed on the first street")

    def _crossing(self, a: list[int], b: list[int], zip5: str):
        """Where streets a and b meet (the ZIP's crossing first), as (lon, lat, zip, street a, street b, all)."""
        for sa in a:
            for sb in b:
                where = self.ref.intersections.get((sa, sb))
                if where:
                    matches = [w for w in where if w[2] == zip5] or where
                    return (*matches[0], sa, sb, matches)
        return None

    def _between(self, p: Parsed) -> Result:
        """The middle of the block between two crossings; one crossing known: that corner; none: the street."""
        s, fs, flag = self.resolve_street(p.street, p.base, p.zip)
        if not s:
            return self._zip_or_none(p, _not_in_reference(p.street))
        a, fa, _ = self.resolve_street(p.street2, p.base2, p.zip)
        b, fb, _ = self.resolve_street(p.street3, p.base3, p.zip)
        one, two = self._crossing(s, a, p.zip) if a else None, self._crossing(s, b, p.zip) if b else None
        name = self.ref.streets
        if one and two:
            z = one[2] or two[2]
            block = ((one[0] + two[0]) / 2, (one[1] + two[1]) / 2, "hundred_block", SCORES["hundred_block"],
                     f"{name[one[3]]} between {name[one[4]]} and {name[two[4]]}, {z}".rstrip(", "), "", "", z,
                     ("line", (one[0], one[1], two[0], two[1])))
            return _finish(block, fs * fa * fb, flag, p)
        corner = one or two
        if corner:
            lon, lat, z, sa, sb, _ = corner
            missing = p.street3 if one else p.street2
            at_corner = (lon, lat, "intersection", SCORES["intersection"],
                         f"{name[sa]} & {name[sb]}, {z}".rstrip(", "), "", "", z, ("nodes", ((lon, lat),)))
            return _finish(at_corner, fs * 0.9, flag, p, f"{p.street} does not meet {missing} in the reference; "
                                                   f"placed at the known end of the block")
        got = _beyond(self._street_point(s[0], p.zip), p.zip)
        return _finish(got, fs * 0.8, flag, p, f"{p.street} meets neither {p.street2} nor {p.street3} in the "
                                               f"reference; placed on the street")

    def _zip_or_none(self, p: Parsed, reason: str) -> Result:
        where = self.ref.zips.get(p.zip) if p.zip else None
        flags = "parser_fallback" if p.parser == "usaddress" else ""
        if where is not None:
            return (where[0], where[1], "zip", SCORES["zip"], f"ZIP {p.zip}", reason, flags, p.zip, ("zip", p.zip))
        if p.zip:
            reason = f"{reason}; ZIP {p.zip} is not in the reference"
        return (float("nan"), float("nan"), "none", 0.0, None, reason, flags, "", None)

    # ---- street names ------------------------------------------------------------------------------------------

    def resolve_street(self, street: str, base: str, zip5: str = "") -> tuple[list[int], float, str]:
        """Street ids for a canonical name: exact, else by its name alone, else fuzzy; with a score factor.
        A South Bay street of the same name comes first when the ZIP says the address is there."""
        ref = self.ref
        if zip5 and street in ref.by_zip_only:
            local = [s for s in ref.by_zip_only[street] if zip5 in ref.street_zips.get(s, ())]
            if local:
                return local, 1.0, ""
        sid = ref.street_id.get(street)
        if sid is not None:
            return [sid], 1.0, ""
        cands = ref.by_base.get(base)
        if cands:
            # The name alone: fine when the address left the type or direction out ("Gardena" for "GARDENA AVE");
            # a different one ("WALNUT ST" for "W WALNUT AVE") names another street: only the street level.
            given = set(street.split()) - set(base.split())
            fits = [s for s in cands if given <= set(ref.streets[s].split())]
            if fits:
                return fits, TYPE_DIFFERS, "street_type_differs"
            return list(cands), OTHER_STREET, "street_differs"
        if street not in self._fuzzy:
            names, ids = self._by_letter.get(street[0], ((), ()))
            got = process.extractOne(street, names, scorer=fuzz.ratio, score_cutoff=FUZZY_CUTOFF) if names else None
            if got is not None and _digits(got[0]) != _digits(street):
                got = None  # "4TH ST" is not a typo of "49TH ST": a number in a name is never guessed
            self._fuzzy[street] = (ids[got[2]], got[1]) if got else None
        fuzzy = self._fuzzy[street]
        if fuzzy is None:
            return [], 0.0, ""
        return [fuzzy[0]], 0.9 * fuzzy[1] / 100.0, "fuzzy_street"


def _finish(got: tuple, factor: float, flag: str, p: Parsed, reason: str = "") -> Result:
    lon, lat, level, score, matched, _, flags, ref_zip, support = got
    score *= factor
    if level == "street" and flag in ("fuzzy_street", "street_differs"):
        support = ("unknown",)  # a street like the one named, not it: where the named one runs is unknown
    extra = [flags] if flags else []
    if flag:
        extra.append(flag)
    if p.zip and ref_zip and ref_zip != p.zip:
        extra.append("zip_mismatch")
        score *= 0.9
    if p.parser == "usaddress":
        extra.append("parser_fallback")
        score *= 0.95
    return (lon, lat, level, round(score, 3), matched, reason, ",".join(extra), ref_zip, support)


def _not_in_reference(street: str) -> str:
    if FREEWAY.match(street):
        return f"{street!r} is a freeway: the reference holds city streets, not freeway mileposts"
    return f"street {street!r} is not in the reference"


def _digits(name: str) -> str:
    return "".join(c for c in name if c.isdigit())


def _beyond(got: tuple, zip5: str) -> tuple:
    """A street-level answer for a place the reference does not hold (a number outside its ranges, a crossing it
    lacks): the place is on a part of the street the reference does not have (it is a subset), so its segments say
    nothing about where. Only the ZIP, when given, bounds it; without one, the street's known part gives the
    candidates (never a key: support.py)."""
    if zip5:
        return got[:8] + (("zip", zip5),)
    return got[:8] + (got[8] if got[8] is not None and got[8][0] == "street" else ("unknown",),)


def _extent_of(got: tuple) -> tuple:
    """A result's extent as a support (a point result has None: its point, or the segment it is placed on)."""
    if got[8] is not None:
        return got[8]
    if got[0].__class__ is _Pending:
        return ("segs", (got[0].seg,))
    return ("at", ((got[0], got[1]),))


def _street_score(gap: int) -> float:
    """Placed at the street's nearest known number: the farther that number, the less the street level says."""
    return SCORES["street"] if gap <= 1000 else SCORES["street"] - 0.1


def _extent_score(xy: np.ndarray) -> float:
    """The middle of a street stands for all of it: the longer the street, the less the point says."""
    extent = math.hypot(np.ptp(xy[:, 0]) * M_PER_DEG_LON, np.ptp(xy[:, 1]) * M_PER_DEG_LAT)
    return SCORES["street"] if extent <= 1000 else SCORES["street"] - (0.1 if extent <= 5000 else 0.2)


def _resolved(result: Result) -> Result:
    if isinstance(result[0], _Pending):
        p = result[0]
        return (p.lon, p.lat) + result[2:]
    return result


def _prefer_zip(entries: list[tuple], zip5: str) -> list[tuple]:
    if not zip5:
        return entries
    same = [e for e in entries if e[5] == zip5]
    return same + [e for e in entries if e[5] != zip5] if same else entries


def _spread_m(matches: list[tuple]) -> float:
    xy = np.array([(m[0], m[1]) for m in matches])
    return float(np.hypot(np.ptp(xy[:, 0]) * M_PER_DEG_LON, np.ptp(xy[:, 1]) * M_PER_DEG_LAT))


def _columns(unique: list[Result], inverse: np.ndarray) -> Geocoded:
    """Columns for every row from the results of the distinct addresses (row i has result inverse[i])."""
    m = len(unique)
    lon = np.fromiter((r[0] for r in unique), dtype=np.float64, count=m)[inverse]
    lat = np.fromiter((r[1] for r in unique), dtype=np.float64, count=m)[inverse]
    match = np.array([r[2] for r in unique], dtype=object)[inverse]
    score = np.fromiter((r[3] for r in unique), dtype=np.float64, count=m)[inverse]
    matched = np.array([r[4] for r in unique], dtype=object)[inverse].tolist()
    support = np.empty(m, dtype=object)
    for j, r in enumerate(unique):  # (not a slice assignment: numpy would unpack equal-length tuples)
        support[j] = r[8]
    return Geocoded(lon=lon, lat=lat, match=match, score=score, matched=matched,
                    reason=_sparse(unique, inverse, 5), flags=_sparse(unique, inverse, 6), support=support[inverse])


def _sparse(unique: list[Result], inverse: np.ndarray, field: int) -> dict[int, str]:
    has = np.fromiter((bool(r[field]) for r in unique), dtype=bool, count=len(unique))
    rows = np.flatnonzero(has[inverse])
    return {row: unique[j][field] for row, j in zip(rows.tolist(), inverse[rows].tolist())}
