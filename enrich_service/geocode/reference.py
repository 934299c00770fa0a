"""The geocoder's reference: address points and street segments with address ranges, read and indexed by street.

Both files are resolved like layer files (a folder, or a download checked against the manifest sha256). Street
names are normalized with the same code as the addresses asked for, so the spelled-out points ("Mount Acadia
Boulevard") and the abbreviated centerlines ("MT ACADIA BL") land on one street id.

Facts about the centerline file that the matcher relies on (measured on the real file, see docs/geocode.md):
the low address of a range sits at the line's first vertex; the left range lies left of the direction of travel;
`xstrt1` is the cross street at the first vertex, `xstrt2` at the last.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import shapely

from ..errors import LayerSourceError
from ..layers.manifest import load_manifest
from ..layers.sources import ResolvedFile, resolve
from ..server.disk_cache import cached, code_digest
from ..settings import Settings
from .normalize import _TOKENS, _street, clean_zip

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

POINTS_FILE = "address_points"
SEGMENTS_FILE = "street_segments"
_MAX_BLOCKS = 200  # a range spanning more hundreds than this is indexed on its first 200 only
_NODE_DIGITS = 6  # segment ends closer than ~0.1 m are one node
_PARENS = re.compile(r"\([^)]*\)")
# "15TH (SB) ST": a South Bay street that shares its name with one in the central city. It is a street of its own,
# matched by its plain name only when the address's ZIP is one of its ZIPs.
SOUTH_BAY = "(SB)"


@dataclass(frozen=True)
class ReferenceFiles:
    points: ResolvedFile
    segments: ResolvedFile

    @property
    def sha256(self) -> str:
        """One digest for the pair: it changes when either file changes (and keys the result cache)."""
        return hashlib.sha256(f"{self.points.sha256}:{self.segments.sha256}".encode()).hexdigest()

    def describe(self) -> dict:
        return {"sha256": self.sha256, POINTS_FILE: self.points.describe(), SEGMENTS_FILE: self.segments.describe()}


def reference_configured(settings: Settings) -> bool:
    """A folder is set, or the manifest says where to download every reference file."""
    specs = load_manifest(settings.manifest).reference
    return bool(specs) and (settings.reference_dir is not None or all(s.url for s in specs.values()))


def resolve_reference(settings: Settings) -> ReferenceFiles:
    specs = load_manifest(settings.manifest).reference
    missing = {POINTS_FILE, SEGMENTS_FILE} - set(specs)
    if missing:
        raise LayerSourceError(f"manifest {settings.manifest}: geocode_reference lacks {sorted(missing)}")
    folder = settings.reference_dir
    cache = Path(settings.cache_dir) / "reference"
    return ReferenceFiles(points=resolve(specs[POINTS_FILE], folder, cache, "ENRICH_REFERENCE_DIR"),
                          segments=resolve(specs[SEGMENTS_FILE], folder, cache, "ENRICH_REFERENCE_DIR"))


def normalize_street(name: object) -> tuple[str, str]:
    """(canonical street, base name) of a reference street name; ('', '') when it has none."""
    if not isinstance(name, str):
        return "", ""
    text = _PARENS.sub(" ", name.upper().replace("'", "").replace(".", " ").replace("-", " "))
    street, base, _ = _street(_TOKENS.findall(text))
    return street, base


# Metres per degree at San Diego's latitude: distances along segments a few hundred metres long.
M_PER_DEG_LAT = 110_574.0
M_PER_DEG_LON = 111_320.0 * math.cos(math.radians(32.8))
_SEGMENT_KEY = 1e7  # metres: longer than any segment, so (segment, distance) sorts as one number


@dataclass
class Vertices:
    """Every segment's vertices in one array, with the distance along the segment, for positions along many
    segments at once in numpy (a point at a distance, and the direction of travel there)."""

    xy: np.ndarray  # (n, 2) lon/lat
    key: np.ndarray  # segment * _SEGMENT_KEY + metres from the segment's first vertex: ascending
    first: np.ndarray  # per segment: the row of its first vertex
    last: np.ndarray  # per segment: the row of its last vertex
    length_m: np.ndarray  # per segment

    @classmethod
    def of(cls, lines: np.ndarray) -> Vertices:
        xy, seg = shapely.get_coordinates(lines, return_index=True)
        step = np.hypot(np.diff(xy[:, 0]) * M_PER_DEG_LON, np.diff(xy[:, 1]) * M_PER_DEG_LAT)
        step = np.concatenate([[0.0], np.where(np.diff(seg) == 0, step, 0.0)])
        total = np.cumsum(step)
        first = np.searchsorted(seg, np.arange(len(lines)))
        along = total - total[first][seg]
        last = np.append(first[1:], len(seg)) - 1
        return cls(xy=xy, key=seg * _SEGMENT_KEY + along, first=first, last=last, length_m=along[last])

    def along(self, seg: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The point at fraction t of each segment's length, and the unit direction of travel there (metres)."""
        target = seg * _SEGMENT_KEY + t * self.length_m[seg]
        k = np.clip(np.searchsorted(self.key, target, side="right"), self.first[seg] + 1, self.last[seg])
        p0, p1 = self.xy[k - 1], self.xy[k]
        span = self.key[k] - self.key[k - 1]
        f = np.divide(target - self.key[k - 1], span, out=np.zeros_like(span), where=span > 0)
        point = p0 + np.clip(f, 0.0, 1.0)[:, None] * (p1 - p0)
        dx, dy = (p1[:, 0] - p0[:, 0]) * M_PER_DEG_LON, (p1[:, 1] - p0[:, 1]) * M_PER_DEG_LAT
        norm = np.hypot(dx, dy)
        norm[norm == 0] = 1.0
        return point, np.column_stack([dx / norm, dy / norm])


@dataclass
class Reference:
    """Everything the matcher looks up, as arrays and dicts keyed by street id."""

    files: ReferenceFiles
    streets: list[str]  # street id -> canonical name
    street_id: dict[str, int]
    by_base: dict[str, list[int]]  # base name -> street ids ("SAN JACINTO" -> [S SAN JACINTO DR, ...])
    by_zip_only: dict[str, list[int]]  # plain name -> the "(SB)" streets of that name
    street_zips: dict[int, frozenset]  # street id -> the ZIPs of its segments and points
    # Address points
    pt_lon: np.ndarray
    pt_lat: np.ndarray
    pt_number: np.ndarray
    pt_street: np.ndarray
    pt_zip: np.ndarray  # object: str
    pt_label: list[str]
    exact: dict[tuple[int, int], list[int]]  # (street id, number) -> point rows
    points_of: dict[int, np.ndarray]  # street id -> point rows sorted by number
    points_by_side: dict[tuple[int, int], tuple[list[int], list[int]]]  # (street, parity) -> (numbers, rows)
    # Street segments
    seg_geom: np.ndarray  # shapely LineStrings (lon/lat)
    seg_street: np.ndarray
    seg_zip: np.ndarray
    seg_label: np.ndarray
    seg_mid: np.ndarray  # (n, 2) lon/lat of each segment's midpoint
    vertices: Vertices
    ranges_of: dict[int, list[tuple]]  # street id -> [(low, high, parity, side, segment, zip)]
    ranges_by_block: dict[tuple[int, int], list[tuple]]
    segments_of: dict[int, np.ndarray]
    intersections: dict[tuple[int, int], list[tuple[float, float, str]]]
    # Streets known only as a cross-street name: where they meet the others.
    crossings_of: dict[int, list[tuple[float, float, str]]] = field(default_factory=dict)
    zips: dict[str, tuple[float, float]] = field(default_factory=dict)  # zip -> a point inside it
    # Per-row access from Python is several times faster on lists than on numpy scalars.
    pt_lon_list: list = field(default_factory=list)
    pt_lat_list: list = field(default_factory=list)
    pt_zip_list: list = field(default_factory=list)
    zip_medians: dict[str, tuple[float, float]] = field(default_factory=dict)
    load_seconds: float = 0.0

    @property
    def sha256(self) -> str:
        return self.files.sha256

    def __getstate__(self) -> dict:
        # The disk cache (load_reference_cached): pickled one by one, the segments' lines took most of a start's read
        # of the cache; as one WKB array they are read back in one vectorized call (docs/geocode.md, "Measured").
        return {**self.__dict__, "seg_geom": shapely.to_wkb(self.seg_geom)}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, seg_geom=shapely.from_wkb(state["seg_geom"]))

    def describe(self) -> dict:
        return {**self.files.describe(),
                "counts": {"address_points": len(self.pt_lon), "street_segments": len(self.seg_geom),
                           "streets": len(self.street_id), "intersections": len(self.intersections) // 2},
                "load_seconds": round(self.load_seconds, 3)}


def read_points(path: Path) -> pd.DataFrame:
    import pandas as pd  # only when the CSVs are read: a start from the cache never pays pandas' import

    df = pd.read_csv(path, dtype=object, keep_default_na=False)  # plain str objects: fast to loop over
    need = {"housenumber", "street", "postcode", "lat", "lon"}
    if not need <= set(df.columns):
        raise LayerSourceError(f"{path.name}: address points need columns {sorted(need)}, found {list(df.columns)}")
    return df


def read_segments(path: Path) -> pd.DataFrame:
    import pandas as pd

    text = {c: object for c in ("rd20full", "xstrt1", "xstrt2", "zip", "wkt_wgs84")}
    df = pd.read_csv(path, dtype=text, keep_default_na=False)
    need = {"rd20full", "xstrt1", "xstrt2", "llowaddr", "lhighaddr", "rlowaddr", "rhighaddr", "zip", "wkt_wgs84"}
    if not need <= set(df.columns):
        raise LayerSourceError(f"{path.name}: street segments need columns {sorted(need)}, found {list(df.columns)}")
    return df


def load_reference(files: ReferenceFiles, zip_points: dict[str, tuple[float, float]] | None = None,
                   keep_points: np.ndarray | None = None) -> Reference:
    """Read and index the reference. `keep_points` (a mask over the points file's rows) holds some points back, for
    the accuracy evaluation."""
    t0 = time.perf_counter()
    ref = _build(files, keep_points)
    ref.zips = _zip_points(ref, zip_points or {})
    ref.load_seconds = time.perf_counter() - t0
    log.info("geocoder reference: %d points, %d segments, %d streets, %d intersections in %.2fs",
             len(ref.pt_lon), len(ref.seg_geom), len(ref.street_id), len(ref.intersections) // 2, ref.load_seconds)
    return ref


def load_reference_cached(files: ReferenceFiles, cache_dir: Path,
                          zip_points: dict[str, tuple[float, float]] | None = None) -> Reference:
    """load_reference through the service's disk cache, keyed by the reference's sha256 and the digest of the
    normalization code: a start or reload with an unchanged reference reads the built index instead of building it
    (both timed in docs/geocode.md, "Measured")."""
    t0 = time.perf_counter()
    here = Path(__file__).parent
    digest = code_digest(*(here / name for name in ("words.py", "normalize.py", "reference.py")))
    path = Path(cache_dir) / "geocoder" / f"{files.sha256[:32]}-{digest}.pickle"
    ref, hit = cached(path, lambda: _build(files, None))
    ref.files = files  # where the files are now (the digest says they are the same)
    ref.zips = _zip_points(ref, zip_points or {})
    ref.load_seconds = time.perf_counter() - t0
    log.info("geocoder reference (%s): %d points, %d segments, %d streets in %.2fs",
             "cached" if hit else "built", len(ref.pt_lon), len(ref.seg_geom), len(ref.street_id),
             ref.load_seconds)
    return ref


def _build(files: ReferenceFiles, keep_points: np.ndarray | None) -> Reference:
    import pandas as pd

    points = read_points(files.points.path)
    if keep_points is not None:
        points = points[keep_points]
    segments = read_segments(files.segments.path)

    names: dict[str, tuple[str, str]] = {}
    for raw in set(points["street"]) | set(segments["rd20full"]) | set(segments["xstrt1"]) | set(segments["xstrt2"]):
        names[raw] = normalize_street(raw)
    streets: list[str] = []
    street_id: dict[str, int] = {}
    by_base: dict[str, list[int]] = defaultdict(list)
    by_zip_only: dict[str, list[int]] = defaultdict(list)

    def sid(raw: str) -> int:
        canon, base = names[raw]
        if not canon or base == "ALLEY" or raw in ("BEGIN", "END"):  # unnamed alleys and dead ends are no street
            return -1
        south_bay = SOUTH_BAY in raw
        key = f"{canon} {SOUTH_BAY}" if south_bay else canon
        got = street_id.get(key)
        if got is None:
            got = street_id[key] = len(streets)
            streets.append(key)
            if south_bay:
                by_zip_only[canon].append(got)
            else:
                by_base[base].append(got)
        return got

    # Points: numbers that are not a plain integer ("6450 1/2", "10511;10513") keep their first number.
    number = pd.to_numeric(points["housenumber"].str.extract(r"^\s*(\d+)", expand=False), errors="coerce")
    lon = pd.to_numeric(points["lon"], errors="coerce").to_numpy(float)
    lat = pd.to_numeric(points["lat"], errors="coerce").to_numpy(float)
    pt_street = np.array([sid(s) for s in points["street"]], dtype=np.int64)
    ok = number.notna().to_numpy() & np.isfinite(lon) & np.isfinite(lat) & (pt_street >= 0)
    points = points[ok]
    pt_number = number[ok].to_numpy(np.int64)
    lon, lat, pt_street = lon[ok], lat[ok], pt_street[ok]
    zip_of = {z: clean_zip(z) for z in set(points["postcode"]) | set(segments["zip"])}
    pt_zip = np.array([zip_of[z] for z in points["postcode"]], dtype=object)
    pt_label = [f"{h} {s}" for h, s in zip(points["housenumber"], points["street"])]
    exact: dict[tuple[int, int], list[int]] = defaultdict(list)
    for row, key in enumerate(zip(pt_street.tolist(), pt_number.tolist())):
        exact[key].append(row)
    order = np.lexsort((pt_number, pt_street))
    bounds = np.flatnonzero(np.diff(pt_street[order])) + 1
    points_of = {int(pt_street[g[0]]): g for g in np.split(order, bounds) if len(g)}
    points_by_side: dict[tuple[int, int], tuple[list[int], list[int]]] = {}
    for s, rows in points_of.items():
        for parity in (0, 1):
            same = rows[pt_number[rows] % 2 == parity]
            if len(same) >= 2:
                points_by_side[s, parity] = (pt_number[same].tolist(), same.tolist())

    # Segments
    geoms = shapely.from_wkt(segments["wkt_wgs84"].to_numpy(), on_invalid="ignore")
    geoms = np.array([shapely.line_merge(g) if shapely.get_type_id(g) == 5 else g for g in geoms], dtype=object)
    good = ~shapely.is_missing(geoms) & ~shapely.is_empty(geoms) & (shapely.get_type_id(geoms) == 1)
    if not good.all():
        log.warning("%s: %d segments without a usable line skipped", files.segments.path.name, int((~good).sum()))
    segments, geoms = segments[good], geoms[good]
    seg_street = np.array([sid(s) for s in segments["rd20full"]], dtype=np.int64)
    seg_zip = np.array([zip_of[z] for z in segments["zip"]], dtype=object)
    seg_label = segments["rd20full"].to_numpy(dtype=object)
    mid = shapely.line_interpolate_point(geoms, 0.5, normalized=True)
    seg_mid = np.column_stack([shapely.get_x(mid), shapely.get_y(mid)])
    vertices = Vertices.of(geoms)
    ranges_of: dict[int, list[tuple]] = defaultdict(list)
    cols = [segments[c].to_numpy() for c in ("llowaddr", "lhighaddr", "rlowaddr", "rhighaddr")]
    for row, (s, llo, lhi, rlo, rhi, z) in enumerate(zip(seg_street.tolist(), *(c.tolist() for c in cols),
                                                         seg_zip.tolist())):
        if s < 0:
            continue
        for lo, hi, side in ((llo, lhi, 1), (rlo, rhi, -1)):
            if hi > 0 and hi >= lo:
                parity = lo % 2 if lo % 2 == hi % 2 else -1
                ranges_of[s].append((int(lo), int(hi), parity, side, row, z))
    segments_of = {s: np.flatnonzero(seg_street == s) for s in np.unique(seg_street[seg_street >= 0]).tolist()}
    # (street, hundred block) -> the ranges overlapping that block: a number's candidates in one lookup.
    ranges_by_block: dict[tuple[int, int], list[tuple]] = defaultdict(list)
    for s, entries in ranges_of.items():
        for e in entries:
            for block in range(e[0] // 100, min(e[1] // 100, e[0] // 100 + _MAX_BLOCKS) + 1):
                ranges_by_block[s, block].append(e)

    intersections = _intersections(geoms, seg_street, seg_zip, segments, sid)
    zips_of: dict[int, set] = defaultdict(set)
    for s, z in zip(np.concatenate([seg_street, pt_street]).tolist(), np.concatenate([seg_zip, pt_zip]).tolist()):
        zips_of[s].add(z)
    ref = Reference(files=files, streets=streets, street_id=street_id, by_base=dict(by_base),
                    by_zip_only=dict(by_zip_only), street_zips={s: frozenset(z) for s, z in zips_of.items()},
                    pt_lon=lon, pt_lat=lat, pt_number=pt_number, pt_street=pt_street, pt_zip=pt_zip,
                    pt_label=pt_label, exact=dict(exact), points_of=points_of, points_by_side=points_by_side,
                    seg_geom=geoms, seg_street=seg_street, seg_zip=seg_zip, seg_label=seg_label, seg_mid=seg_mid,
                    vertices=vertices,
                    ranges_of=dict(ranges_of), ranges_by_block=dict(ranges_by_block), segments_of=segments_of,
                    intersections=intersections)
    crossings: dict[int, list] = defaultdict(list)
    for (a, _), where in intersections.items():
        if a not in segments_of and a not in points_of:
            crossings[a].extend(where)
    ref.crossings_of = dict(crossings)
    # Names met only as the cross street of an unnamed alley have no location: forget them.
    located = set(segments_of) | set(points_of) | set(crossings)
    ref.street_id = {name: s for name, s in street_id.items() if s in located and not name.endswith(SOUTH_BAY)}
    ref.by_base = {base: kept for base, ids in by_base.items() if (kept := [s for s in ids if s in located])}
    ref.pt_lon_list, ref.pt_lat_list, ref.pt_zip_list = lon.tolist(), lat.tolist(), pt_zip.tolist()
    ref.zip_medians = _zip_medians(ref)
    return ref


def _intersections(geoms, seg_street, seg_zip, segments, sid) -> dict[tuple[int, int], list[tuple[float, float, str]]]:
    """Street pairs -> where they meet: segment ends shared by two streets, plus the cross-street names of each
    segment's ends (which name streets whose own segments are not in the file)."""
    starts = shapely.get_coordinates(shapely.get_point(geoms, 0))
    ends = shapely.get_coordinates(shapely.get_point(geoms, -1))
    ends_xy = np.concatenate([starts, ends])
    street = np.concatenate([seg_street, seg_street])
    zips = np.concatenate([seg_zip, seg_zip])
    cross = np.concatenate([[sid(x) for x in segments["xstrt1"]], [sid(x) for x in segments["xstrt2"]]])
    node_key = np.round(ends_xy, _NODE_DIGITS)
    _, node = np.unique(node_key, axis=0, return_inverse=True)
    node = node.ravel()
    at_node: dict[int, set[int]] = defaultdict(set)
    for n, s in zip(node.tolist(), street.tolist()):
        if s >= 0:
            at_node[n].add(s)
    out: dict[tuple[int, int], list[tuple[float, float, str]]] = defaultdict(list)
    seen: set[tuple[int, int, int]] = set()

    def add(a: int, b: int, row: int) -> None:
        if a < 0 or b < 0 or a == b or (a, b, node[row]) in seen:
            return
        seen.add((a, b, node[row]))
        seen.add((b, a, node[row]))
        where = (float(ends_xy[row, 0]), float(ends_xy[row, 1]), zips[row])
        out[a, b].append(where)
        out[b, a].append(where)

    for row, (n, s, c) in enumerate(zip(node.tolist(), street.tolist(), cross.tolist())):
        for other in at_node[n]:
            add(s, other, row)
        add(s, c, row)
    return dict(out)


def _zip_medians(ref: Reference) -> dict[str, tuple[float, float]]:
    """The median of the reference's points and segment midpoints in each ZIP."""
    import pandas as pd

    df = pd.DataFrame({"zip": np.concatenate([ref.pt_zip, ref.seg_zip]),
                       "lon": np.concatenate([ref.pt_lon, ref.seg_mid[:, 0]]),
                       "lat": np.concatenate([ref.pt_lat, ref.seg_mid[:, 1]])})
    med = df[df["zip"] != ""].groupby("zip")[["lon", "lat"]].median()
    return {str(z): (float(x), float(y)) for z, x, y in zip(med.index, med["lon"], med["lat"])}


def _zip_points(ref: Reference, layer_points: dict[str, tuple[float, float]]) -> dict[str, tuple[float, float]]:
    """A point inside each ZIP: from the zip layer when loaded, else the reference's median there."""
    return {**ref.zip_medians, **layer_points}
