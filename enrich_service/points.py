"""A batch of points as columns, and its validation: the input CRS to lon/lat, per-row errors and flags.

Every decoder (io/) produces a PointBatch; `prepare` turns it into lon/lat arrays plus a per-row error column, so one
bad row never costs the rest of the batch. This is the contract between the decoders and the engine, used by both bulk
operations and by the geocoder (an address record's own coordinates are checked the same way): neither a format
(io/ only reads bodies into it) nor the engine's concern (the engine takes lon/lat already checked). Dates are read
by io/dates.py, since every decoder and the `as_of` option read them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
from numba import njit
from pyproj import CRS, Transformer
from pyproj.exceptions import CRSError, ProjError

from .crs import WGS84
from .errors import UnknownCRS

# Where careless geocoders put "San Diego": the generic city centroid.
CITY_CENTROID = (-117.1610838, 32.715738)


@dataclass
class PointBatch:
    """Decoded request columns. `x`/`y` are in the request CRS (lon/lat for EPSG:4326); NaN marks a missing value,
    whose cause (missing, wrong type) is already in `errors`."""

    ids: Any  # list, numpy or Arrow array: passed through to the encoder untouched
    x: np.ndarray
    y: np.ndarray
    dates: np.ndarray | None = None  # datetime64[D], NaT where absent
    errors: dict[int, tuple[str, str]] = field(default_factory=dict)  # row -> (field, message)

    def __len__(self) -> int:
        return len(self.x)


@dataclass
class Prepared:
    """Lon/lat ready to tag. Errors and flags are rare, so they are kept sparse: row -> value."""

    lon: np.ndarray
    lat: np.ndarray
    valid: np.ndarray  # bool: rows to tag
    errors: dict[int, tuple[str, str]]  # row -> (field, message)
    flags: dict[int, str]  # row -> comma-joined flags

    def __len__(self) -> int:
        return len(self.lon)


@lru_cache(maxsize=64)
def parse_crs(value: str | int | None) -> CRS:
    if value is None or value == "":
        return WGS84
    text = str(value).strip()[:2000]
    if text.isdigit():
        text = f"EPSG:{text}"
    try:
        crs = CRS.from_user_input(text)
    except CRSError:
        raise UnknownCRS(f"crs {str(value)[:100]!r} is not a CRS pyproj knows (use e.g. EPSG:4326 or EPSG:2230)",
                         field="crs") from None
    if crs.is_geocentric or crs.is_vertical:
        raise UnknownCRS(f"crs {str(value)[:100]!r} is not a horizontal CRS", field="crs")
    try:  # known is not enough: it must transform to lon/lat (not a CRS of Mars, not one without a datum)
        to_wgs84(crs)
    except (ProjError, CRSError) as exc:
        why = re.search(r"proj_create_operations: (.*?)(\.\s|\)?$)", str(exc))
        raise UnknownCRS(f"crs {str(value)[:100]!r} cannot be transformed to EPSG:4326"
                         f"{': ' + why.group(1) if why else ''}", field="crs") from None
    return crs


@lru_cache(maxsize=64)
def to_wgs84(crs: CRS) -> Transformer:
    return Transformer.from_crs(crs, WGS84, always_xy=True)


# San Diego County with a margin, in degrees: where State Plane feet sent by mistake would land.
_SAN_DIEGO = (-118.0, 32.3, -115.8, 33.8)
STATE_PLANE = "EPSG:2230"
STATE_PLANE_HINT = f"the numbers look like State Plane feet: send crs={STATE_PLANE}"


def looks_like_state_plane(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per row: would (x, y), read as EPSG:2230 feet, fall in San Diego County? (Degrees are never that large.)"""
    # Zone 6's false origin is 6,561,667 / 1,640,417 ft: anything within a few hundred miles of it is in the
    # millions, far beyond any degree; only those rows are transformed.
    rough = np.isfinite(x) & np.isfinite(y) & (np.abs(x) > 1e5) & (np.abs(y) > 1e5)
    out = np.zeros(len(x), dtype=bool)
    if rough.any():
        lon, lat = to_wgs84(parse_crs(STATE_PLANE)).transform(x[rough], y[rough])
        out[rough] = _in_san_diego(lon, lat)
    return out


def _in_san_diego(lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
    w, s, e, n = _SAN_DIEGO
    return (lon >= w) & (lon <= e) & (lat >= s) & (lat <= n)


def _swapped_xy(crs, x: np.ndarray, y: np.ndarray, lon: np.ndarray, lat: np.ndarray, ok: np.ndarray) -> np.ndarray:
    """Per row of a projected batch: outside San Diego County as sent, inside it with x and y swapped (the mistake
    lon/lat rows get `swapped_lonlat` for). Only the rows outside the county are transformed again."""
    out = np.zeros(len(x), dtype=bool)
    far = ok & ~_in_san_diego(lon, lat)
    if far.any():
        with np.errstate(invalid="ignore"):
            slon, slat = to_wgs84(crs).transform(y[far], x[far])
        out[far] = _in_san_diego(np.asarray(slon, dtype=np.float64), np.asarray(slat, dtype=np.float64))
    return out


def plain_lonlat(lon: float, lat: float) -> bool:
    """True when `prepare` would make this EPSG:4326 point a valid row with no error and no flag, so a single lookup
    can skip its array passes (api/pip.get_pip_fast). The same rules as prepare's, on one point; anything else is
    left to prepare (tests/test_fast_path.py holds the two together)."""
    return (abs(lon) <= 180 and abs(lat) <= 90 and not (lon == 0 and lat == 0)  # NaN fails the comparisons
            and not (abs(lon - CITY_CENTROID[0]) < 1e-6 and abs(lat - CITY_CENTROID[1]) < 1e-6))


def read_only(values: np.ndarray) -> np.ndarray:
    """`values` as float64, contiguous and read-only, for a compiled kernel: numba compiles a kernel once per
    argument type, and writable and read-only arrays are two types. Coordinates read from a request's Arrow buffers
    are read-only (not copied: 16 MB less fresh memory for 1M points); every other source is made read-only here,
    so every kernel has the one compiled signature. A view, not a copy."""
    values = np.ascontiguousarray(values, dtype=np.float64)
    if values.flags.writeable:
        values = values.view()
        values.flags.writeable = False
    return values


@njit(cache=True)
def _scan_lonlat(lon, lat, plausible):
    """One pass over lon/lat for what `prepare` asks of every row: in range (NaN and inf are not), and whether any
    row is at 0/0 or at the city centroid. Without a branch per row; numpy took a dozen passes and temporaries."""
    all_plausible, zero, near = True, False, False
    for i in range(lon.shape[0]):
        a, b = lon[i], lat[i]
        ok = (abs(a) <= 180.0) & (abs(b) <= 90.0)
        plausible[i] = ok
        all_plausible &= ok
        zero |= (a == 0.0) & (b == 0.0)
        near |= (abs(a - CITY_CENTROID[0]) < 1e-6) & (abs(b - CITY_CENTROID[1]) < 1e-6)
    return all_plausible, zero, near


def prepare(batch: PointBatch, crs: CRS, x_name: str = "lon", y_name: str = "lat") -> Prepared:
    errors: dict[int, tuple[str, str]] = {}
    flags: dict[int, str] = {}
    x, y = batch.x, batch.y
    wgs84 = crs.equals(WGS84, ignore_axis_order=True)
    all_plausible = False
    zero = near_centroid = True  # whether any row may be at 0/0 or at the city centroid: checked below
    if wgs84:  # the common case answers with one pass when every row is fine
        lon, lat = read_only(x), read_only(y)  # no copy; see `errors` below
        plausible = np.empty(len(lon), dtype=bool)  # False for NaN and inf too
        all_plausible, zero, near_centroid = _scan_lonlat(lon, lat, plausible)
    finite = plausible if all_plausible else np.isfinite(x) & np.isfinite(y)

    if not finite.all():
        for name, col in ((x_name, x), (y_name, y)):
            _set(errors, ~np.isfinite(col) & ~np.isnan(col), name, "not a finite number")
            _set(errors, np.isnan(col), name, "missing or not a number")

    if wgs84:
        if not all_plausible:
            lat_bad = finite & (np.abs(lat) > 90)
            lon_bad = finite & (np.abs(lon) > 180)
            swapped = lat_bad & (np.abs(lon) <= 90)
            _set(errors, swapped, y_name, "out of range [-90, 90]; lon and lat look swapped")
            if lat_bad.any():  # State Plane feet sent without crs: say so, rather than only "out of range"
                _set(errors, lat_bad & looks_like_state_plane(x, y), y_name,
                     f"out of range [-90, 90]; {STATE_PLANE_HINT}")
                _set(errors, lat_bad & looks_like_state_plane(y, x), y_name,
                     f"out of range [-90, 90]; the numbers look like State Plane feet with x and y swapped: send "
                     f"crs={STATE_PLANE}, x ({x_name}) first")
            _set(errors, lat_bad, y_name, "out of range [-90, 90]")
            _set(errors, lon_bad, x_name, "out of range [-180, 180]")
            _flag(flags, swapped, "swapped_lonlat")
    else:
        lon, lat = to_wgs84(crs).transform(np.where(finite, x, 0.0), np.where(finite, y, 0.0))
        lon, lat = np.asarray(lon, dtype=np.float64), np.asarray(lat, dtype=np.float64)
        lost = finite & ~(np.isfinite(lon) & np.isfinite(lat) & (np.abs(lon) <= 180) & (np.abs(lat) <= 90))
        _set(errors, lost, x_name, f"outside the area where {crs.to_string()} is defined")
        swapped = _swapped_xy(crs, x, y, lon, lat, finite & ~lost)
        _set(errors, swapped, y_name, f"{x_name} and {y_name} look swapped: the other way round they fall in "
                                      f"San Diego County")
        _flag(flags, swapped, "swapped_xy")

    errors.update(batch.errors)  # decoder errors win: they name the real cause
    if zero:
        _flag(flags, (x == 0) & (y == 0), "zero_coordinates")  # NaN and inf are never 0
    if near_centroid:
        near = np.abs(lon - CITY_CENTROID[0]) < 1e-6
        if near.any():
            _flag(flags, near & (np.abs(lat - CITY_CENTROID[1]) < 1e-6), "city_centroid")
    valid = finite.copy()
    if errors:  # blank the rows not to tag, in copies: lon/lat may be the request's own (read-only) buffers
        valid[np.fromiter(errors, dtype=np.int64, count=len(errors))] = False
        lon = np.where(valid, lon, np.nan)
        lat = np.where(valid, lat, np.nan)
    return Prepared(lon=lon, lat=lat, valid=valid, errors=errors, flags=flags)


def _set(errors: dict[int, tuple[str, str]], mask: np.ndarray, name: str, message: str) -> None:
    for i in np.flatnonzero(mask):  # bad rows are rare; the first problem found for a row is the one reported
        errors.setdefault(int(i), (name, message))


def _flag(flags: dict[int, str], mask: np.ndarray, flag: str) -> None:
    for i in np.flatnonzero(mask):
        flags[int(i)] = f"{flags[int(i)]},{flag}" if int(i) in flags else flag
