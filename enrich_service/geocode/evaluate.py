"""Accuracy of the geocoder against ground truth on real data: held-back address points, and the parking meters'
hundred-block addresses with the meters' own coordinates. Used by bench/geocode.py (the table) and the tests
(the floors).

"Covered" is decided from the reference itself, independently of the matcher's answer: the street is known and
the reference has an address point with that number, a segment whose range holds the number (for a hundred block
"1000 FIRST AVE": overlaps 1000-1099), or, for an intersection, both streets are known and meet.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .matcher import LEVELS, M_PER_DEG_LAT, M_PER_DEG_LON, Geocoded, Geocoder
from .normalize import parse
from .reference import ReferenceFiles, load_reference, read_points, read_segments

HOLDOUT_EVERY = 10  # one address point in ten is held back from the reference and geocoded
WITHIN_M = 100.0
EXACT_MAX_M = 250.0


@dataclass
class Evaluation:
    name: str
    addresses: list[str]
    result: Geocoded
    error_m: np.ndarray  # distance to the truth (NaN where no match)
    covered: np.ndarray  # bool

    def table(self) -> list[dict]:
        rows = []
        for level in LEVELS + ("all", "covered"):
            if level == "all":
                mask = np.ones(len(self.error_m), dtype=bool)
            elif level == "covered":
                mask = self.covered
            else:
                mask = self.result.match == level
            err = self.error_m[mask & np.isfinite(self.error_m)]
            rows.append({"set": self.name, "level": level, "n": int(mask.sum()),
                         "share": round(float(mask.mean()), 4) if len(mask) else 0.0,
                         "median_m": round(float(np.median(err)), 1) if len(err) else None,
                         "p95_m": round(float(np.percentile(err, 95)), 1) if len(err) else None,
                         f"within_{WITHIN_M:g}m": round(float((err <= WITHIN_M).mean()), 4) if len(err) else None})
        return rows

    @property
    def covered_within(self) -> float:
        """Share of covered addresses that land within WITHIN_M of the truth (a miss counts as outside)."""
        err = self.error_m[self.covered]
        return float((np.nan_to_num(err, nan=np.inf) <= WITHIN_M).mean()) if len(err) else 0.0

    @property
    def exact_max_m(self) -> float:
        err = self.error_m[self.result.match == "exact"]
        return float(np.nanmax(err)) if len(err) else 0.0

    @property
    def match_rate(self) -> float:
        return float((self.result.match != "none").mean())


def distance_m(lon1, lat1, lon2, lat2) -> np.ndarray:
    return np.hypot((np.asarray(lon1) - lon2) * M_PER_DEG_LON, (np.asarray(lat1) - lat2) * M_PER_DEG_LAT)


def holdout_mask(points: pd.DataFrame) -> np.ndarray:
    """Held-back rows: a stable hash of the point's id, so every run holds back the same points."""
    ids = points["osm_node_id"] if "osm_node_id" in points.columns else points.index.astype(str)
    return np.array([zlib.crc32(str(v).encode()) % HOLDOUT_EVERY == 0 for v in ids])


def covered(geocoder: Geocoder, addresses: list[str]) -> np.ndarray:
    ref = geocoder.ref
    out = np.zeros(len(addresses), dtype=bool)
    for i, address in enumerate(addresses):
        p = parse(address)
        if p.kind == "intersection":
            a, b = ref.street_id.get(p.street), ref.street_id.get(p.street2)
            out[i] = a is not None and b is not None and (a, b) in ref.intersections
            continue
        sid = ref.street_id.get(p.street)
        if p.kind != "address" or sid is None:
            continue
        n = p.number
        top = n + 99 if n % 100 == 0 else n
        out[i] = (sid, n) in ref.exact or any(lo <= top and n <= hi for lo, hi, *_ in ref.ranges_of.get(sid, ()))
    return out


def held_back_points(files: ReferenceFiles, zip_points: dict | None = None) -> Evaluation:
    points = read_points(files.points.path)
    held = holdout_mask(points)
    geocoder = Geocoder(load_reference(files, zip_points, keep_points=~held))
    test = points[held]
    test = test[test["housenumber"].str.fullmatch(r"\d+")]
    addresses = [f"{h} {s}" for h, s in zip(test["housenumber"], test["street"])]
    result = geocoder.geocode(addresses, test["postcode"].tolist(), use_cache=False)
    err = distance_m(result.lon, result.lat, test["lon"].astype(float).to_numpy(), test["lat"].astype(float).to_numpy())
    return Evaluation("held-back address points", addresses, result, err, covered(geocoder, addresses))


def read_meters(path: Path) -> pd.DataFrame:
    """One row per meter pole with its block address; placeholder coordinates (32.0, -117.0 and the like) dropped."""
    m = pd.read_csv(path, dtype=str, keep_default_na=False)
    m["lat"] = pd.to_numeric(m["lat"], errors="coerce")
    m["lng"] = pd.to_numeric(m["lng"], errors="coerce")
    real = (m["lat"].between(32.5, 33.2) & m["lng"].between(-117.4, -116.8)
            & (m["lat"] != m["lat"].round(0)) & (m["lng"] != m["lng"].round(0)) & (m["sub_area"].str.strip() != ""))
    return m[real].drop_duplicates("pole")


def parking_meters(geocoder: Geocoder, meters_csv: Path) -> Evaluation:
    m = read_meters(meters_csv)
    addresses = m["sub_area"].tolist()
    result = geocoder.geocode(addresses, use_cache=False)
    err = distance_m(result.lon, result.lat, m["lng"].to_numpy(), m["lat"].to_numpy())
    return Evaluation("parking meters (hundred blocks)", addresses, result, err, covered(geocoder, addresses))


def read_stops(path: Path) -> pd.DataFrame:
    """Transit stops named for an intersection ("Garnet Av & Cass St"), except mid-block stops (intersec "M-...")."""
    import json

    rows = []
    for f in json.loads(Path(path).read_text())["features"]:
        p = f.get("properties") or {}
        geom = f.get("geometry") or {}
        name, where = p.get("stop_name") or "", p.get("intersec") or ""
        if "&" in name and not where.startswith("M") and geom.get("coordinates"):
            rows.append({"name": name, "lon": geom["coordinates"][0], "lat": geom["coordinates"][1]})
    return pd.DataFrame(rows)


def transit_intersections(geocoder: Geocoder, stops_geojson: Path) -> Evaluation:
    stops = read_stops(stops_geojson)
    addresses = stops["name"].tolist()
    result = geocoder.geocode(addresses, use_cache=False)
    err = distance_m(result.lon, result.lat, stops["lon"].to_numpy(float), stops["lat"].to_numpy(float))
    return Evaluation("transit stops (intersections)", addresses, result, err, covered(geocoder, addresses))


def reference_points(geocoder: Geocoder, files: ReferenceFiles) -> Evaluation:
    """The reference's own address points, asked for without their ZIP: exact matches, where a number and street
    found in two ZIPs (and picked without one) shows as distance."""
    points = read_points(files.points.path)
    points = points[points["housenumber"].str.fullmatch(r"\d+")]
    addresses = [f"{h} {s}" for h, s in zip(points["housenumber"], points["street"])]
    result = geocoder.geocode(addresses, use_cache=False)
    err = distance_m(result.lon, result.lat, points["lon"].astype(float).to_numpy(),
                     points["lat"].astype(float).to_numpy())
    return Evaluation("reference address points, no ZIP given", addresses, result, err, covered(geocoder, addresses))


def mixed_addresses(files: ReferenceFiles, meters_csv: Path, stops_geojson: Path, n: int,
                    seed: int = 11) -> tuple[list[str], list[str]]:
    """Real addresses as city data writes them (the address points in three spellings, numbers inside segment
    ranges, the meters' blocks, the stops' intersections, junk): n of them drawn with repeats, and the distinct."""
    rng = np.random.default_rng(seed)
    pts = read_points(files.points.path)
    out = [f"{h} {s}" for h, s in zip(pts["housenumber"], pts["street"])]
    out += [f"{h} {s.upper()}, SAN DIEGO CA {z}" for h, s, z in zip(pts["housenumber"], pts["street"], pts["postcode"])]
    out += [f"{h} {s}, Apt {rng.integers(1, 40)}, San Diego, CA" for h, s in zip(pts["housenumber"], pts["street"])]
    seg = read_segments(files.segments.path)
    seg = seg[(seg["lhighaddr"] > seg["llowaddr"]) & (seg["llowaddr"] > 0)]
    lo, hi = seg["llowaddr"].to_numpy(), seg["lhighaddr"].to_numpy()
    numbers = lo + 2 * rng.integers(0, np.maximum((hi - lo) // 2, 1))
    out += [f"{n} {name}" for n, name in zip(numbers.tolist(), seg["rd20full"])]
    out += read_meters(meters_csv)["sub_area"].drop_duplicates().tolist()
    out += read_stops(stops_geojson)["name"].drop_duplicates().tolist()
    out += ["", "n/a", "UNKNOWN", "PO BOX 1234", "see attached", "x" * 400]
    distinct = list(dict.fromkeys(out))
    return [distinct[i] for i in rng.integers(0, len(distinct), n)], distinct
