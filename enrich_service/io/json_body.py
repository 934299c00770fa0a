"""JSON bodies: the points body decoded to columns (typed by msgspec, or leniently row by row when it must name an
odd row), and JSON text in and out with integers exact at any size."""

from __future__ import annotations

import json
import math
import re
from itertools import repeat
from operator import attrgetter
from typing import Annotated

import msgspec
import numpy as np
import orjson

from ..errors import InvalidInput, MalformedBody, UnknownParameter
from ..points import PointBatch
from ..server.memory import paused_gc
from .dates import parse_dates
from .tables import Columns

MAX_ID_CHARS = 1_000
_BOM = b"\xef\xbb\xbf"


def without_bom(body: bytes) -> bytes:
    """The body without a leading UTF-8 byte order mark, which RFC 8259 lets a parser ignore (Windows tools write
    one; the CSV reader drops it too)."""
    return body[len(_BOM):] if bytes(body[:len(_BOM)]) == _BOM else body


def _number(v: object) -> float:
    """A JSON number as a float, anything else NaN. bool is an int subclass: true/false are not coordinates."""
    return float(v) if (v.__class__ is float or v.__class__ is int) else np.nan


def numbers(values: list) -> np.ndarray:
    """Floats and ints as float64, anything else NaN (its row's error is named by the caller)."""
    if set(map(type, values)) <= {float, int}:  # the usual body: numpy converts the list in one call
        return np.array(values, dtype=np.float64)
    return np.fromiter((_number(v) for v in values), dtype=np.float64, count=len(values))


@paused_gc()
def decode_points(points: object, cols: Columns = Columns()) -> PointBatch:
    """JSON `points` (a list of objects, or an object of equally long arrays: {"id": [...], "lon": [...], "lat":
    [...]}) to columns; a malformed row is recorded, the others decoded."""
    if isinstance(points, dict):
        return _decode_point_columns(points, cols)
    if not isinstance(points, list):
        raise InvalidInput("points must be a list of {id, lon, lat} objects, or an object of arrays "
                           "{id: [...], lon: [...], lat: [...]}", field="points")
    # map() over C-level methods rather than comprehensions: no Python frame per row.
    errors: dict[int, tuple[str, str]] = {}
    rows = points
    if not set(map(type, points)) <= {dict}:
        rows = [p if p.__class__ is dict else {} for p in points]
        for i in (i for i, p in enumerate(points) if p.__class__ is not dict):
            errors[i] = ("points", "each point must be an object with id, lon and lat")
    xs = list(map(dict.get, rows, repeat(cols.lon)))
    ys = list(map(dict.get, rows, repeat(cols.lat)))
    ids = list(map(dict.get, rows, repeat(cols.id)))
    date_key = cols.date or "date"
    dates = None
    if any(map(dict.__contains__, rows, repeat(date_key))):
        dates = list(map(dict.get, rows, repeat(date_key)))
    return _checked_points(ids, xs, ys, dates, date_key, cols, errors)


def _decode_point_columns(points: dict, cols: Columns) -> PointBatch:
    """`points` as one array per key: the same checks as rows, each odd cell its row's error."""
    date_key = cols.date or "date"
    check_keys(points, (cols.id, cols.lon, cols.lat, date_key))
    if cols.lon not in points or cols.lat not in points:
        missing = cols.lon if cols.lon not in points else cols.lat
        raise InvalidInput(f"points.{missing} is missing: columns of points need {cols.lon} and {cols.lat}",
                           field=missing)
    for key, values in points.items():
        if not isinstance(values, list):
            raise InvalidInput(f"points.{key} must be an array (one value per point)", field=key)
    n = len(points[cols.lon])
    for key, values in points.items():
        if len(values) != n:
            raise InvalidInput(f"points.{key} has {len(values)} values, points.{cols.lon} has {n}: every column "
                               f"of points has one value per point", field=key)
    ids = list(points[cols.id]) if cols.id in points else [None] * len(points[cols.lon])
    return _checked_points(ids, points[cols.lon], points[cols.lat], points.get(date_key), date_key, cols, {})


def _checked_points(ids: list, xs: list, ys: list, dates: list | None, date_key: str, cols: Columns,
                    errors: dict[int, tuple[str, str]]) -> PointBatch:
    """Points as lists (the rows' values, or the columns as sent) to a batch: a coordinate that is not a number
    is its row's error."""
    x, y = numbers(xs), numbers(ys)
    for name, raw, arr in ((cols.lon, xs, x), (cols.lat, ys, y)):
        for row in np.flatnonzero(np.isnan(arr)).tolist():  # only the odd rows are looked at one by one
            if row in errors:
                continue
            v = raw[row]
            if v is None:
                errors[row] = (name, "missing")
            elif not (v.__class__ is float or v.__class__ is int):
                errors[row] = (name, f"must be a number, got {type(v).__name__}")
    return _point_batch(ids, x, y, dates, date_key, errors)


def _point_batch(ids: list, x: np.ndarray, y: np.ndarray, dates: list | None, date_key: str,
                 errors: dict[int, tuple[str, str]]) -> PointBatch:
    """Both JSON decoders end here: ids checked, dates parsed (None: no row has a date key, even a null one)."""
    check_ids(ids, errors)
    parsed = parse_dates(dates, date_key, errors) if dates is not None else None
    return PointBatch(ids=ids, x=x, y=y, dates=parsed, errors=errors)


_PLAIN_IDS = {int, float, bool, type(None)}


def check_ids(ids: list, errors: dict[int, tuple[str, str]]) -> None:
    """Ids must be strings, numbers or null, and at most MAX_ID_CHARS long: each other one is that row's error (a
    long one is cut, a wrong type or a number out of range becomes null); the row is still answered."""
    kinds = set(map(type, ids))
    finite = float not in kinds or all(map(math.isfinite, (v for v in ids if v.__class__ is float)))
    if finite and (kinds <= _PLAIN_IDS or (kinds <= _PLAIN_IDS | {str} and
                   max((len(v) for v in ids if v.__class__ is str), default=0) <= MAX_ID_CHARS)):
        return  # the usual body: nothing to report or cut
    for i, v in enumerate(ids):
        if v.__class__ is float and not math.isfinite(v):  # 1e400 or 5,000 digits (decode_value): JSON has no inf
            errors.setdefault(i, ("id", "a number out of range (beyond a double, or more than 4,300 digits)"))
            ids[i] = None
            continue
        if v is None or v.__class__ in (int, float, bool):
            continue
        if v.__class__ is str:
            if len(v) > MAX_ID_CHARS:
                errors.setdefault(i, ("id", f"longer than {MAX_ID_CHARS} characters"))
                ids[i] = v[:MAX_ID_CHARS]
            continue
        errors.setdefault(i, ("id", "must be a string, a number or null"))
        ids[i] = None


# The usual body, typed by msgspec straight from its bytes: no dict per row (docs/engine.md). Whatever it refuses (a
# bool or string coordinate, a missing one, an id beyond int64, bad JSON) goes the lenient way, which names each odd
# row and keeps the others.
_Id = Annotated[int, msgspec.Meta(ge=-2**63, le=2**63 - 1)] | float | str | None


class _Point(msgspec.Struct, gc=False):
    lon: float
    lat: float
    id: _Id = None
    date: str | None | msgspec.UnsetType = msgspec.UNSET


class _PointColumns(msgspec.Struct, gc=False, forbid_unknown_fields=True):
    lon: list[float]
    lat: list[float]
    id: list[_Id] | msgspec.UnsetType = msgspec.UNSET
    date: list[str | None] | msgspec.UnsetType = msgspec.UNSET


class _Body(msgspec.Struct, gc=False, forbid_unknown_fields=True):
    points: list[_Point] | _PointColumns
    layers: list[str] | str | None = None
    as_of: str | None = None
    crs: str | int | None = None
    nearest_within_m: float | None = None


_TYPED_BODY = msgspec.json.Decoder(_Body)
# The request options, in a JSON body or (single lookups, bulk bodies) in the query string.
OPTIONS = tuple(name for name in _Body.__struct_fields__ if name != "points")
BODY_KEYS = ("points",) + OPTIONS
_UNKNOWN_FIELD = re.compile(r"unknown field `(.*)`", re.S)
_AT = re.compile(r" - at `\$\.?([A-Za-z_][A-Za-z_0-9]*)")


@paused_gc()
def decode_json(body: bytes, cols: Columns = Columns()) -> tuple[dict, PointBatch]:
    """A JSON body {points: [{id, lon, lat, date?}, ...], layers?, as_of?, crs?, nearest_within_m?} as (its
    options, its points as columns). `cols` renames the point keys (id_col, lon_col, lat_col, date_col), as for
    NDJSON and tables."""
    body = without_bom(body)
    try:
        if (cols.id, cols.lon, cols.lat, cols.date or "date") != ("id", "lon", "lat", "date"):  # renamed keys:
            # the lenient way, which reads any
            raise msgspec.ValidationError("renamed columns")
        typed = _TYPED_BODY.decode(body)
    except (msgspec.MsgspecError, UnicodeDecodeError, RecursionError) as exc:
        message = str(exc)
        unknown = _UNKNOWN_FIELD.search(message)
        if unknown and " - at `" not in message:  # a misspelled option at the top level: refused, never ignored
            raise UnknownParameter.of(unknown.group(1), BODY_KEYS) from None
        at = _AT.search(message)
        doc = loads(body, at.group(1) if at else "body")
        if not isinstance(doc, dict):
            raise InvalidInput("body must be a JSON object with a `points` list", field="body") from None
        check_keys(doc, BODY_KEYS)
        if doc.get("points") is None:
            raise InvalidInput("points is missing", field="points") from None
        return {name: doc.get(name) for name in OPTIONS}, decode_points(doc["points"], cols)
    if isinstance(typed.points, _PointColumns):
        return {name: getattr(typed, name) for name in OPTIONS}, _typed_columns(typed.points, cols)
    rows = typed.points
    x = np.fromiter(map(attrgetter("lon"), rows), dtype=np.float64, count=len(rows))
    y = np.fromiter(map(attrgetter("lat"), rows), dtype=np.float64, count=len(rows))
    given = list(map(attrgetter("date"), rows))
    dates = None  # no row has a date key: no versions reported, as by decode_points
    if given.count(msgspec.UNSET) != len(given):
        dates = [None if d is msgspec.UNSET else d for d in given]
    batch = _point_batch(list(map(attrgetter("id"), rows)), x, y, dates, "date", {})
    return {name: getattr(typed, name) for name in OPTIONS}, batch


def _typed_columns(points: _PointColumns, cols: Columns) -> PointBatch:
    """Columns msgspec has typed: numbers already, only the lengths to check (the lenient reader names a mismatch)."""
    given = {"lon": points.lon, "lat": points.lat, "id": points.id, "date": points.date}
    if len({len(v) for v in given.values() if v is not msgspec.UNSET}) > 1:
        return _decode_point_columns({k: v for k, v in given.items() if v is not msgspec.UNSET}, cols)
    n = len(points.lon)
    ids = [None] * n if points.id is msgspec.UNSET else points.id
    dates = None if points.date is msgspec.UNSET else points.date
    return _point_batch(ids, np.array(points.lon, dtype=np.float64), np.array(points.lat, dtype=np.float64), dates,
                        "date", {})


def check_keys(doc: dict, known: tuple[str, ...]) -> None:
    for key in doc:
        if key not in known:
            raise UnknownParameter.of(str(key), known)


_KEY_BEFORE = re.compile(rb'"([^"\\]{1,100})"\s*:\s*("[^"]*)?$')


def decode_value(text: bytes) -> object:
    """msgspec's JSON decode, except that a number beyond a double (1e400: valid JSON, no float holds it) reads as
    infinity, as Python's json reads it, and so does an integer of more digits than Python reads (4,300): the row
    checks refuse that value in its own row, not the whole body."""
    try:
        return msgspec.json.decode(text)
    except msgspec.ValidationError as exc:
        if not str(exc).startswith(("Number out of range", "Integer value out of range")):
            raise
    try:
        return json.loads(bytes(text).decode("utf-8"), parse_constant=_no_constant, parse_int=_integer)
    except json.JSONDecodeError as exc:
        raise msgspec.DecodeError(str(exc)) from None


def _integer(text: str) -> int | float:
    try:
        return int(text)
    except ValueError:  # beyond sys.get_int_max_str_digits()
        return -math.inf if text.startswith("-") else math.inf


def _no_constant(name: str) -> object:
    raise msgspec.DecodeError(f"{name} is not JSON")  # NaN, Infinity: Python's json reads them, JSON has none


def loads(body: bytes, field: str = "body") -> object:
    """JSON to Python, integers exact at any size (ids such as 2^70 come back as sent); every failure a 400 naming
    what it can: the key whose text is not UTF-8, the field nested too deep."""
    body = without_bom(body)
    try:
        with paused_gc():
            return decode_value(body)
    except UnicodeDecodeError:
        try:  # msgspec counts within the string: find the byte in the body
            bytes(body).decode("utf-8")
            start = 0
        except UnicodeDecodeError as exc:
            start = exc.start
        key = _KEY_BEFORE.search(bytes(body[max(0, start - 400):start]))
        name = key.group(1).decode("utf-8", "replace") if key else field
        raise MalformedBody(f"{name}: text is not UTF-8 (byte {start}); JSON bodies must be UTF-8",
                            field=name) from None
    except RecursionError:
        raise MalformedBody(f"{field}: nested too deeply to be a request value", field=field) from None
    except msgspec.MsgspecError as exc:
        raise MalformedBody(f"body is not valid JSON: {exc}", field="body") from None


def dumps(value: object) -> bytes:
    """orjson, and msgspec for what orjson refuses (integers beyond 64 bits, as ids may be)."""
    try:
        return orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY)
    except orjson.JSONEncodeError:
        return msgspec.json.encode(value, enc_hook=_plain)


def _plain(value: object) -> object:
    if isinstance(value, np.generic | np.ndarray):
        return value.tolist()
    raise NotImplementedError(f"{type(value).__name__} is not JSON")
