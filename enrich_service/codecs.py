"""Decode and encode bulk bodies per media type: JSON, Arrow IPC stream, CSV, NDJSON. Shared by every bulk endpoint.

Decoders turn a body into a PointBatch (columns); encoders write the input's id (JSON, NDJSON) or the whole input
table (Arrow, CSV) followed by the result columns: for each layer `<layer>`, `<layer>_rule`, then
`<layer>_distance_m` (with nearest_within_m) and `<layer>_version` (when points carry dates); then `flags`, `error`.
"""

from __future__ import annotations

import functools
import io
from dataclasses import dataclass
from itertools import repeat
from operator import attrgetter
from typing import Annotated, Any

import msgspec
import numpy as np
import orjson
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.ipc as ipc

from .arrow_stream import stream_buffer
from .engine.rules import RULE_NAMES
from .engine.tagger import TagResult
from .errors import InvalidInput, MalformedBody, NotAcceptable, UnsupportedMediaType
from .json_rows import json_rows
from .memory import paused_gc
from .points import PointBatch, Prepared, parse_dates
from .responses import ARROW, JSON, MEDIA_TYPES, NDJSON

MAX_ID_CHARS = 1_000


def media_type(content_type: str | None) -> str:
    base = (content_type or JSON).split(";")[0].strip().lower()
    if base in ("", "*/*"):
        return JSON
    if base in ("application/vnd.apache.arrow.file", "application/x-arrow"):
        base = ARROW
    if base not in MEDIA_TYPES:
        raise UnsupportedMediaType(
            f"Content-Type {content_type!r} is not supported; use one of {', '.join(MEDIA_TYPES)}",
            field="Content-Type")
    return base


def response_type(accept: str | None, request_type: str) -> str:
    """The first supported type in Accept; the request's own type when Accept is absent or */*."""
    if not accept:
        return request_type
    for part in accept.split(","):
        base = part.split(";")[0].strip().lower()
        if base in ("*/*", "application/*", ""):
            return request_type
        if base in MEDIA_TYPES and (base == NDJSON) == (request_type == NDJSON):
            return base
    raise NotAcceptable(f"cannot answer {accept!r} to a {request_type} request", field="Accept")


@dataclass(frozen=True)
class Columns:
    """Which input columns hold the id, coordinates and date (query parameters of bulk requests)."""

    id: str = "id"
    lon: str = "lon"
    lat: str = "lat"
    date: str | None = None


# ---- JSON -------------------------------------------------------------------------------------------------------

def _number(v: object) -> float:
    # bool is an int subclass: true/false are not coordinates.
    return float(v) if (v.__class__ is float or v.__class__ is int) else np.nan


def _numbers(values: list) -> np.ndarray:
    """Floats and ints as float64, anything else NaN (its row's error is named by the caller)."""
    if set(map(type, values)) <= {float, int}:  # the usual body: numpy converts the list in one call
        return np.array(values, dtype=np.float64)
    return np.fromiter((_number(v) for v in values), dtype=np.float64, count=len(values))


@paused_gc()
def decode_points(points: object, cols: Columns = Columns()) -> PointBatch:
    """JSON `points` (a list of objects) to columns; a malformed row is recorded, the others decoded."""
    if not isinstance(points, list):
        raise InvalidInput("points must be a list of {id, lon, lat} objects", field="points")
    # map() over C-level methods rather than comprehensions: a 1M-point body decodes in about half the time.
    errors: dict[int, tuple[str, str]] = {}
    rows = points
    if not set(map(type, points)) <= {dict}:
        rows = [p if p.__class__ is dict else {} for p in points]
        for i in (i for i, p in enumerate(points) if p.__class__ is not dict):
            errors[i] = ("points", "each point must be an object with id, lon and lat")
    xs = list(map(dict.get, rows, repeat(cols.lon)))
    ys = list(map(dict.get, rows, repeat(cols.lat)))
    x, y = _numbers(xs), _numbers(ys)
    for name, raw, arr in ((cols.lon, xs, x), (cols.lat, ys, y)):
        for i in np.flatnonzero(np.isnan(arr)):  # only the odd rows are looked at one by one
            if i in errors:
                continue
            v = raw[i]
            if v is None:
                errors[int(i)] = (name, "missing")
            elif not (v.__class__ is float or v.__class__ is int):
                errors[int(i)] = (name, f"must be a number, got {type(v).__name__}")
    ids = list(map(dict.get, rows, repeat(cols.id)))
    date_key = cols.date or "date"
    dates = None
    if any(map(dict.__contains__, rows, repeat(date_key))):
        dates = list(map(dict.get, rows, repeat(date_key)))
    return _point_batch(ids, x, y, dates, date_key, errors)


def _point_batch(ids: list, x: np.ndarray, y: np.ndarray, dates: list | None, date_key: str,
                 errors: dict[int, tuple[str, str]]) -> PointBatch:
    """Both JSON decoders end here: ids checked, dates parsed (None: no row has a date key, even a null one)."""
    _check_ids(ids, errors)
    parsed = parse_dates(dates, date_key, errors) if dates is not None else None
    return PointBatch(ids=ids, x=x, y=y, dates=parsed, errors=errors)


_PLAIN_IDS = {int, float, bool, type(None)}


def _check_ids(ids: list, errors: dict[int, tuple[str, str]]) -> None:
    kinds = set(map(type, ids))
    if kinds <= _PLAIN_IDS or (kinds <= _PLAIN_IDS | {str} and
                               max((len(v) for v in ids if v.__class__ is str), default=0) <= MAX_ID_CHARS):
        return  # the usual body: nothing to report or cut
    for i, v in enumerate(ids):
        if v is None or v.__class__ in (int, float, bool):
            continue
        if v.__class__ is str:
            if len(v) > MAX_ID_CHARS:
                errors.setdefault(i, ("id", f"longer than {MAX_ID_CHARS} characters"))
                ids[i] = v[:MAX_ID_CHARS]
            continue
        errors.setdefault(i, ("id", "must be a string, a number or null"))
        ids[i] = None


# The usual body, typed by msgspec straight from its bytes: no dict per row, ~2.5x faster than orjson to dicts and
# decode_points (1M points: ~0.3 s instead of ~0.75). Whatever it refuses (a bool or string coordinate, a missing
# one, an id beyond int64, bad JSON) goes the lenient way, which names each odd row and keeps the others.
_Id = Annotated[int, msgspec.Meta(ge=-2**63, le=2**63 - 1)] | float | str | None


class _Point(msgspec.Struct, gc=False):
    lon: float
    lat: float
    id: _Id = None
    date: str | None | msgspec.UnsetType = msgspec.UNSET


class _Body(msgspec.Struct, gc=False):
    points: list[_Point]
    layers: Any = None
    as_of: Any = None
    crs: Any = None
    nearest_within_m: Any = None


_TYPED_BODY = msgspec.json.Decoder(_Body)
# The request options, in a JSON body or (single lookups, bulk bodies) in the query string.
OPTIONS = tuple(name for name in _Body.__struct_fields__ if name != "points")


@paused_gc()
def decode_json(body: bytes) -> tuple[dict, PointBatch]:
    """A JSON body {points: [{id, lon, lat, date?}, ...], layers?, as_of?, crs?, nearest_within_m?} as (its
    options, its points as columns)."""
    try:
        typed = _TYPED_BODY.decode(body)
    except msgspec.MsgspecError:
        doc = loads(body)
        if not isinstance(doc, dict):
            raise InvalidInput("body must be a JSON object with a `points` list", field="body") from None
        if doc.get("points") is None:
            raise InvalidInput("points is missing", field="points") from None
        return {name: doc.get(name) for name in OPTIONS}, decode_points(doc["points"])
    rows = typed.points
    x = np.fromiter(map(attrgetter("lon"), rows), dtype=np.float64, count=len(rows))
    y = np.fromiter(map(attrgetter("lat"), rows), dtype=np.float64, count=len(rows))
    dates = list(map(attrgetter("date"), rows))
    if dates.count(msgspec.UNSET) == len(dates):
        dates = None
    else:  # a date key on some row: the versions are reported, as by decode_points
        dates = [None if d is msgspec.UNSET else d for d in dates]
    batch = _point_batch(list(map(attrgetter("id"), rows)), x, y, dates, "date", {})
    return {name: getattr(typed, name) for name in OPTIONS}, batch


def loads(body: bytes) -> object:
    try:
        with paused_gc():
            return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise MalformedBody(f"body is not valid JSON: {exc}", field="body") from None


# ---- Arrow and CSV ------------------------------------------------------------------------------------------------

def decode_arrow(body: bytes) -> pa.Table:
    try:
        return ipc.open_stream(pa.py_buffer(body)).read_all()
    except (pa.ArrowInvalid, OSError) as exc:
        raise MalformedBody(f"body is not an Arrow IPC stream: {exc}", field="body") from None


def decode_csv(body: bytes) -> pa.Table:
    try:
        return pacsv.read_csv(io.BytesIO(body))
    except (pa.ArrowInvalid, OSError, UnicodeDecodeError) as exc:
        raise MalformedBody(f"body is not a CSV with a header row: {exc}", field="body") from None


def batch_from_table(table: pa.Table, cols: Columns) -> PointBatch:
    errors: dict[int, tuple[str, str]] = {}
    x = _coordinate(table, cols.lon, errors)
    y = _coordinate(table, cols.lat, errors)
    dates = None
    if cols.date:
        if cols.date not in table.column_names:
            raise InvalidInput(f"date column {cols.date!r} not in the body (columns: {table.column_names})",
                               field=cols.date)
        col = table.column(cols.date)
        if pa.types.is_date(col.type) or pa.types.is_timestamp(col.type):
            dates = col.cast(pa.date32()).to_numpy(zero_copy_only=False).astype("datetime64[D]")
        else:
            dates = parse_dates(col.to_pylist(), cols.date, errors)
    ids = table.column(cols.id) if cols.id in table.column_names else None
    return PointBatch(ids=ids, x=x, y=y, dates=dates, errors=errors)


def _coordinate(table: pa.Table, name: str, errors: dict[int, tuple[str, str]]) -> np.ndarray:
    if name not in table.column_names:
        raise InvalidInput(f"column {name!r} not in the body (columns: {table.column_names}); name the "
                           f"coordinate columns with lon_col/lat_col", field=name)
    col = table.column(name)
    if pa.types.is_integer(col.type) or pa.types.is_floating(col.type) or pa.types.is_decimal(col.type):
        arr = col.cast(pa.float64())
    elif pa.types.is_string(col.type) or pa.types.is_large_string(col.type) or pa.types.is_null(col.type):
        # CSV columns with a stray word in one row arrive as text: convert what converts, report the rest.
        values = np.array([_to_float(v) for v in col.to_pylist()], dtype=np.float64)
        for i in np.flatnonzero(np.isnan(values)):
            raw = col[int(i)].as_py()
            errors.setdefault(int(i), (name, "missing" if raw in (None, "") else f"{raw!r} is not a number"))
        return values
    else:
        raise InvalidInput(f"column {name!r} has type {col.type}; coordinates must be numbers", field=name)
    values = arr.to_numpy().astype(np.float64, copy=True) if arr.null_count == 0 else \
        np.asarray(arr.fill_null(np.nan).to_numpy(), dtype=np.float64).copy()
    if arr.null_count:
        for i in np.flatnonzero(np.asarray(arr.is_null().to_numpy(zero_copy_only=False))):
            errors.setdefault(int(i), (name, "missing"))
    return values


def _to_float(v: object) -> float:
    try:
        return float(v) if v not in (None, "") else np.nan
    except (TypeError, ValueError):
        return np.nan


# ---- results ----------------------------------------------------------------------------------------------------

def row_errors(prepared: Prepared, result: TagResult | None) -> dict[int, str]:
    """row -> "field: message", for rows that were not (fully) tagged."""
    merged = dict(result.row_errors) if result is not None else {}
    merged.update(prepared.errors)  # an input error names the first cause
    return {row: f"{name}: {message}" for row, (name, message) in merged.items()}


def _index_type(size: int) -> type:
    # The narrowest index type that holds the dictionary: a 1M-row answer is 3 MB per column lighter in int8.
    return np.int8 if size <= 127 else np.int16 if size <= 32767 else np.int32


def _dictionary_column(indices: np.ndarray, valid: np.ndarray, dictionary: pa.Array) -> pa.DictionaryArray:
    # Straight from the buffers: pa.array(..., mask=...) and the checked from_arrays each pass over a 1M-row column
    # again (8.8 ms per layer, now 1 ms). Every index is in range by construction, so the check is skipped.
    bitmap = pa.py_buffer(np.packbits(valid, bitorder="little"))
    arr = pa.Array.from_buffers(pa.from_numpy_dtype(indices.dtype), len(indices), [bitmap, pa.py_buffer(indices)])
    return pa.DictionaryArray.from_arrays(arr, dictionary, safe=False)


def _sparse_arrow(n: int, values: dict[int, str]) -> pa.Array:
    """Rare per-row texts (flags, errors) as a dictionary column: a null costs a bit, not a 4-byte string offset
    (the two columns of a 1M-row answer: 1 MB each instead of 4)."""
    distinct = sorted(set(values.values()))
    indices = np.zeros(n, dtype=_index_type(len(distinct)))
    valid = np.zeros(n, dtype=bool)
    if values:
        rows = np.fromiter(values, dtype=np.int64, count=len(values))
        position = {text: i for i, text in enumerate(distinct)}
        indices[rows] = [position[text] for text in values.values()]
        valid[rows] = True
    return _dictionary_column(indices, valid, pa.array(distinct, type=pa.string()))


def _sparse_list(n: int, values: dict[int, str]) -> list:
    out = [None] * n
    for row, value in values.items():
        out[row] = value
    return out


@functools.cache
def _rules() -> pa.Array:
    # Built on first use, not at import: pyarrow imports pandas on its first array (0.2 s, 40 MB), which a service
    # answering only single lookups never needs.
    return pa.array(RULE_NAMES.tolist()[1:], type=pa.string())  # "edge", "overlap", "nearest" (0 is null)


def result_arrays(prepared: Prepared, result: TagResult) -> list[tuple[str, pa.Array]]:
    """The result columns as Arrow arrays; keys and rules dictionary-encoded: cheap to build, compact to send."""
    n = len(prepared)
    out: list[tuple[str, pa.Array]] = []
    for name, tags in result.layers.items():
        uniq, inverse = np.unique(tags.dictionary.astype(str), return_inverse=True)
        index_type = _index_type(len(uniq))
        lookup = np.append(inverse.astype(index_type), index_type(0))  # code -1 (no feature) takes the last slot
        out.append((name, _dictionary_column(lookup.take(tags.codes), tags.codes >= 0, pa.array(uniq))))
        rule_index = np.maximum(tags.rule - np.int8(1), np.int8(0))  # index into _rules(); rule 0 is null
        out.append((f"{name}_rule", _dictionary_column(rule_index, tags.rule != 0, _rules())))
        if tags.distance_m is not None:
            out.append((f"{name}_distance_m", pa.array(tags.distance_m, from_pandas=True)))
        if tags.version is not None:
            out.append((f"{name}_version", pa.array(tags.version, type=pa.string())))
    out.append(("flags", _sparse_arrow(n, prepared.flags)))
    out.append(("error", _sparse_arrow(n, row_errors(prepared, result))))
    return out


def result_lists(prepared: Prepared, result: TagResult) -> list[tuple[str, list]]:
    """The result columns as Python lists, for JSON."""
    n = len(prepared)
    out: list[tuple[str, list]] = []
    for name, tags in result.layers.items():
        out.append((name, tags.keys().tolist()))
        out.append((f"{name}_rule", tags.rule_names().tolist()))
        if tags.distance_m is not None:
            out.append((f"{name}_distance_m", np.where(np.isnan(tags.distance_m), None, tags.distance_m).tolist()))
        if tags.version is not None:
            out.append((f"{name}_version", tags.version.tolist()))
    out.append(("flags", _sparse_list(n, prepared.flags)))
    out.append(("error", _sparse_list(n, row_errors(prepared, result))))
    return out


def error_list(ids: object, prepared: Prepared, result: TagResult | None, limit: int = 1000) -> list[dict]:
    merged = dict(result.row_errors) if result is not None else {}
    merged.update(prepared.errors)
    id_at = (lambda i: ids[i]) if isinstance(ids, list) else (
        (lambda i: ids[i].as_py()) if ids is not None else (lambda i: None))
    return [{"row": row, "id": id_at(row), "field": name, "detail": f"{name}: {message}"}
            for row, (name, message) in sorted(merged.items())[:limit]]


@paused_gc()
def encode_json(ids: list, prepared: Prepared, result: TagResult, extra: dict) -> memoryview:
    rest = orjson.dumps({"count": len(prepared), "layers": result.layers_used(),
                         "errors": error_list(ids, prepared, result), **extra}, option=orjson.OPT_SERIALIZE_NUMPY)
    # The rows are written into the answer's own buffer, head and tail included: no copy of 170 MB at the end.
    return json_rows([("id", ids)] + result_arrays(prepared, result), b",", head=b'{"results":[',
                     tail=b"]," + rest[1:])


def answer_table(table: pa.Table | None, ids: object, prepared: Prepared, result: TagResult) -> pa.Table:
    """The input table (or just the ids) with the result columns appended, replacing same-named input columns."""
    if table is None:
        table = pa.table({"id": pa.array(ids)})
    for name, arr in result_arrays(prepared, result):
        if name in table.column_names:
            table = table.drop_columns([name])
        table = table.append_column(name, arr)
    return table


def encode_arrow(table: pa.Table) -> memoryview:
    return memoryview(stream_buffer(table))  # the response sends the buffer itself, with no copy into bytes


def encode_csv(table: pa.Table) -> bytes:
    # The CSV writer does not take dictionary columns: write their values.
    cols = [c.cast(c.type.value_type) if pa.types.is_dictionary(c.type) else c for c in table.columns]
    sink = io.BytesIO()
    pacsv.write_csv(pa.table(cols, names=table.column_names), sink)
    return sink.getvalue()
