"""Decode and encode bulk bodies per media type: JSON, Arrow IPC stream, CSV, NDJSON. Shared by every bulk endpoint.

Decoders turn a body into a PointBatch (columns); encoders write the input's id (JSON, NDJSON) or the whole input
table (Arrow, CSV) followed by the result columns: for each layer `<layer>`, `<layer>_rule`, then
`<layer>_distance_m` (with nearest_within_m) and `<layer>_version` (when points carry dates); then `flags`, `error`.
"""

from __future__ import annotations

import codecs as pycodecs
import csv
import functools
import io
import re
from dataclasses import dataclass
from itertools import repeat
from operator import attrgetter
from typing import Annotated

import msgspec
import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.ipc as ipc

from .arrow_stream import stream_buffer
from .csv_safety import formula_safe_table
from .engine.rules import RULE_NAMES
from .engine.tagger import TagResult
from .errors import InvalidInput, MalformedBody, NotAcceptable, UnknownParameter, UnsupportedMediaType
from .json_rows import json_rows
from .points import PointBatch, Prepared, parse_dates, text_days, timestamp_days
from .responses import ARROW, CSV, JSON, MEDIA_TYPES, NDJSON
from .server.memory import paused_gc

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


class _Body(msgspec.Struct, gc=False, forbid_unknown_fields=True):
    points: list[_Point]
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


def check_keys(doc: dict, known: tuple[str, ...]) -> None:
    for key in doc:
        if key not in known:
            raise UnknownParameter.of(str(key), known)


_KEY_BEFORE = re.compile(rb'"([^"\\]{1,100})"\s*:\s*("[^"]*)?$')


def loads(body: bytes, field: str = "body") -> object:
    """JSON to Python, integers exact at any size (ids such as 2^70 come back as sent); every failure a 400 naming
    what it can: the key whose text is not UTF-8, the field nested too deep."""
    try:
        with paused_gc():
            return msgspec.json.decode(body)
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


# ---- Arrow and CSV ------------------------------------------------------------------------------------------------

def decode_arrow(body: bytes) -> pa.Table:
    try:
        table = ipc.open_stream(pa.py_buffer(body)).read_all()
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError) as exc:
        raise MalformedBody(f"body is not an Arrow IPC stream: {exc}", field="body") from None
    _check_names(table.column_names)
    return table


def _validate(table: pa.Table, names) -> None:
    """The IPC reader trusts the buffers: text that is not UTF-8, offsets out of range. Checked in full for the
    columns that are read or written as text (an Arrow-to-Arrow answer passes the others through untouched)."""
    for name in names:
        try:
            table.column(name).validate(full=True)
        except (pa.ArrowInvalid, pa.ArrowException) as exc:
            raise MalformedBody(f"column {name!r} is not valid Arrow data: {exc}", field=name) from None


def _check_names(names: list[str]) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise InvalidInput(f"column {name!r} appears {names.count(name)} times; column names must be unique",
                               field=name)
        seen.add(name)


def csv_charset(content_type: str | None) -> str | None:
    """The charset declared on a text/csv Content-Type (None: undeclared), checked against Python's codecs."""
    for part in (content_type or "").split(";")[1:]:
        key, _, value = part.partition("=")
        if key.strip().lower() == "charset":
            name = value.strip().strip('"').lower()
            try:
                return pycodecs.lookup(name).name
            except LookupError:
                raise UnsupportedMediaType(f"charset {name[:40]!r} is not an encoding this service knows; use "
                                           f"e.g. utf-8 or windows-1252", field="Content-Type") from None
    return None


_HEADER_PROBE = 1 << 16


def decode_csv(body: bytes, charset: str | None = None) -> pa.Table:
    """A CSV body (header row first) with every column as text: the input's cells pass through exactly as sent
    ("00123", TRUE, 2^70), and only the coordinate and date columns are read as numbers and dates."""
    encoding = charset or "utf-8"
    if encoding in ("utf-8", "utf-8-sig"):  # Excel's "CSV UTF-8" starts with a byte order mark
        encoding = "utf-8"
        if body.startswith(pycodecs.BOM_UTF8):
            body = body[len(pycodecs.BOM_UTF8):]
    names = _csv_header(body, encoding, charset)
    _check_names(names)
    head = body.rstrip(b"\r\n")
    if b"\n" not in head and b"\r" not in head:  # the header row alone: no rows (Arrow's reader refuses an
        return pa.table({name: pa.array([], pa.string()) for name in names})  # unterminated one), an empty batch
    read = pacsv.ReadOptions(column_names=names, skip_rows_after_names=1,
                             encoding="utf8" if encoding == "utf-8" else encoding)
    convert = pacsv.ConvertOptions(column_types={name: pa.string() for name in names}, strings_can_be_null=False)
    # A blank line is a row of one empty cell when there is one column (an address list with a blank address),
    # and nothing when there are more (it cannot be a row of them).
    parse = pacsv.ParseOptions(ignore_empty_lines=len(names) > 1)
    try:
        return pacsv.read_csv(io.BytesIO(body), read_options=read, parse_options=parse, convert_options=convert)
    except (pa.ArrowInvalid, OSError, UnicodeDecodeError) as exc:
        message = str(exc)
        column = re.search(r"In CSV column #(\d+)", message)
        field = names[int(column.group(1))] if column and int(column.group(1)) < len(names) else "body"
        if "UTF8" in message or "UTF-8" in message:
            raise UnsupportedMediaType(
                f"column {field!r} holds text that is not UTF-8; declare the file's encoding, e.g. "
                f"Content-Type: text/csv; charset=windows-1252", field=field) from None
        raise MalformedBody(f"body is not a CSV with a header row: {message}", field=field) from None


def _cell_at(text_before: str) -> tuple[str, str]:
    """(field, description) of the cell in which `text_before` (the CSV's text up to a bad byte) ends."""
    try:
        rows = list(csv.reader(io.StringIO(text_before)))
    except csv.Error:
        return "body", "the body"
    if len(rows) <= 1:
        return "body", "the header row"
    names, column = rows[0], max(len(rows[-1]) - 1, 0)
    name = names[column] if column < len(names) else "body"
    return name, f"column {name!r} (data row {len(rows) - 1})"


def _csv_header(body: bytes, encoding: str, declared: str | None) -> list[str]:
    probe = body[:_HEADER_PROBE]
    try:
        text = probe.decode(encoding, errors="strict")
    except UnicodeDecodeError as exc:
        if exc.start < len(probe) - 4:  # not just a character cut at the end of the probe
            if declared:
                raise MalformedBody(f"the body is not valid {encoding}: {exc.reason} at byte {exc.start}",
                                    field="body") from None
            field, where = _cell_at(probe[:exc.start].decode(encoding))
            raise UnsupportedMediaType(
                f"{where} is not UTF-8 (byte {exc.start}); declare the file's encoding, e.g. "
                f"Content-Type: text/csv; charset=windows-1252", field=field) from None
        text = probe[:exc.start].decode(encoding)
    try:
        header = next(csv.reader(io.StringIO(text)), None)
    except csv.Error as exc:
        raise MalformedBody(f"the CSV header row cannot be read: {exc}", field="body") from None
    if not header or header == [""]:
        raise MalformedBody("body is not a CSV with a header row: it is empty", field="body")
    return header


def batch_from_table(table: pa.Table, cols: Columns) -> PointBatch:
    errors: dict[int, tuple[str, str]] = {}
    x = _coordinate(table, cols.lon, errors)
    y = _coordinate(table, cols.lat, errors)
    dates = None
    if cols.date:
        if cols.date not in table.column_names:
            raise InvalidInput(f"date column {cols.date!r} not in the body (columns: {table.column_names})",
                               field=cols.date)
        dates = table_dates(table.column(cols.date), cols.date, errors)
    ids = table.column(cols.id) if cols.id in table.column_names else None
    return PointBatch(ids=ids, x=x, y=y, dates=dates, errors=errors)


def table_dates(col: pa.ChunkedArray, name: str, errors: dict[int, tuple[str, str]]) -> np.ndarray:
    """A date column (dates, timestamps, or text as CSV sends it) as San Diego days (datetime64[D]); bad cells named
    per row. Timestamps with a zone (Arrow's tz, or text ending Z / +hh:mm) are converted to local time first."""
    if pa.types.is_date(col.type) or pa.types.is_timestamp(col.type):
        return timestamp_days(col)
    if pa.types.is_null(col.type):
        return np.full(len(col), np.datetime64("NaT"), dtype="datetime64[D]")
    if _is_text(col.type):
        days, bad = text_days(col)
        for i in np.flatnonzero(bad):
            errors.setdefault(int(i), (name, f"{col[int(i)].as_py()!r} is not a date (YYYY-MM-DD)"))
        return days
    raise InvalidInput(f"column {name!r} has type {col.type}; dates must be text (YYYY-MM-DD) or dates", field=name)


DATE_COLUMN = "date"


def date_column(table: pa.Table, date_col: str | None) -> str | None:
    """The table's date column: the one date_col names, else a column named `date` (as JSON and NDJSON rows' `date`
    key), else none."""
    if date_col:
        return date_col
    return DATE_COLUMN if DATE_COLUMN in table.column_names else None


def with_local_days(table: pa.Table, name: str | None) -> pa.Table:
    """The table with a zoned timestamp column `name` replaced by its San Diego days (date32), for readers that
    take an Arrow date or timestamp column's own day; other tables are returned as they are."""
    if not name or name not in table.column_names:
        return table
    col = table.column(name)
    if not (pa.types.is_timestamp(col.type) and col.type.tz is not None):
        return table
    days = pa.array(timestamp_days(col), pa.date32())
    return table.set_column(table.column_names.index(name), name, days)


def _coordinate(table: pa.Table, name: str, errors: dict[int, tuple[str, str]]) -> np.ndarray:
    if name not in table.column_names:
        raise InvalidInput(f"column {name!r} not in the body (columns: {table.column_names}); name the "
                           f"coordinate columns with lon_col/lat_col", field=name)
    col = table.column(name)
    if pa.types.is_dictionary(col.type):
        col = col.cast(col.type.value_type)
    if pa.types.is_integer(col.type) or pa.types.is_floating(col.type) or pa.types.is_decimal(col.type):
        # Unchecked: a value beyond float64's exact range (2^63 - 1, a uint64 max) is still a number, out of range.
        arr = pc.cast(col, pa.float64(), safe=False)
    elif _is_text(col.type) or pa.types.is_null(col.type):
        return _text_numbers(col, name, errors)
    else:
        raise InvalidInput(f"column {name!r} has type {col.type}; coordinates must be numbers", field=name)
    values = arr.to_numpy().astype(np.float64, copy=True) if arr.null_count == 0 else \
        np.asarray(arr.fill_null(np.nan).to_numpy(), dtype=np.float64).copy()
    if arr.null_count:
        for i in np.flatnonzero(np.asarray(arr.is_null().to_numpy(zero_copy_only=False))):
            errors.setdefault(int(i), (name, "missing"))
    return values


def _is_text(kind: pa.DataType) -> bool:
    return pa.types.is_string(kind) or pa.types.is_large_string(kind)


def _text_numbers(col: pa.ChunkedArray, name: str, errors: dict[int, tuple[str, str]]) -> np.ndarray:
    """A text column (CSV cells) as float64 in one cast when every cell is a number; else the numbers that
    convert, and each other row's error."""
    if pa.types.is_null(col.type):
        values = np.full(len(col), np.nan)
    else:
        try:
            trimmed = pc.utf8_trim_whitespace(col)
            blank = pc.equal(trimmed, "")
            values = pc.cast(pc.if_else(blank, pa.scalar(None, trimmed.type), trimmed), pa.float64())
            values = np.asarray(values.fill_null(np.nan).to_numpy(), dtype=np.float64).copy()
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            values = np.array([_to_float(v) for v in col.to_pylist()], dtype=np.float64)
    for i in np.flatnonzero(np.isnan(values)):  # only the odd rows are looked at one by one
        raw = col[int(i)].as_py()
        if raw is None or not raw.strip():
            errors.setdefault(int(i), (name, "missing"))
        elif raw.strip().lower() not in ("nan", "+nan", "-nan"):
            errors.setdefault(int(i), (name, f"{raw[:100]!r} is not a number"))
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
    rest = dumps({"count": len(prepared), "layers": result.layers_used(),
                  "errors": error_list(ids, prepared, result), **extra})
    # The rows are written into the answer's own buffer, head and tail included: no copy of 170 MB at the end.
    return json_rows([("id", ids)] + result_arrays(prepared, result), b",", head=b'{"results":[',
                     tail=b"]," + rest[1:])


# Result columns named like an input column get this in front (the `prefix` option): inputs are never replaced.
COLLISION_PREFIX = "enrich_"
PREFIX_PATTERN = re.compile(r"^[A-Za-z0-9_]{1,32}$")


def check_prefix(prefix: object) -> str:
    if not isinstance(prefix, str) or not PREFIX_PATTERN.match(prefix):
        raise InvalidInput(f"prefix must be 1-32 letters, digits or underscores (got {prefix!r})", field="prefix")
    return prefix


def append_results(table: pa.Table, columns: list[tuple[str, pa.Array]], layers, prefix: str) -> pa.Table:
    """The input table, untouched, with the result columns appended. A result column named like an input column
    gets `prefix` in front (again until the name is free): the caller's own `zip` stays, the zip layer's answer is
    `enrich_zip`, and a layer that moves keeps its companions together (`enrich_zip_rule`, ...)."""
    taken = set(table.column_names)
    moved = [layer for layer in layers if layer in taken]
    for name, arr in columns:
        out = name
        if any(name == layer or name.startswith(f"{layer}_") for layer in moved):
            out = prefix + name
        while out in taken:
            out = prefix + out
        taken.add(out)
        table = table.append_column(out, arr)
    return table


def answer_table(table: pa.Table | None, ids: object, prepared: Prepared, result: TagResult,
                 prefix: str = COLLISION_PREFIX) -> pa.Table:
    """The input table (or just the ids) with the result columns appended; no input column is replaced."""
    if table is None:
        table = pa.table({"id": pa.array(ids)})
    return append_results(table, result_arrays(prepared, result), result.layers, prefix)


def encode_arrow(table: pa.Table) -> memoryview:
    return memoryview(stream_buffer(table))  # the response sends the buffer itself, with no copy into bytes


_CSV_NEEDS_QUOTES = r'[",\r\n]|^\''
_CSV_TEXT = pa.large_string()


def encode_csv(table: pa.Table, formula_escape: str | None = None, raw_columns=None) -> bytes:
    """The table as CSV with text cells exactly as they are (quoted only where CSV needs it), so a CSV body comes
    back byte-for-byte in its own columns; text a spreadsheet would run escaped (csv_safety)."""
    table = formula_safe_table(table, formula_escape, raw_columns)
    header = _csv_cells(pa.array(table.column_names, _CSV_TEXT))
    lines = [b",".join(v.encode() for v in header.to_pylist()) + b"\n"]
    if table.num_rows:
        cells = [_csv_cells(col, name) for name, col in zip(table.column_names, table.columns)]
        rows = pc.binary_join_element_wise(*cells, pa.scalar(",", _CSV_TEXT))  # the last argument: the separator
        rows = pc.binary_join_element_wise(rows, pa.scalar("", _CSV_TEXT), pa.scalar("\n", _CSV_TEXT))
        offsets = np.frombuffer(rows.buffers()[1], dtype=np.int64)
        start, end = offsets[rows.offset], offsets[rows.offset + len(rows)]
        lines.append(memoryview(rows.buffers()[2])[start:end])
    return b"".join(lines)


def _csv_cells(col: pa.Array | pa.ChunkedArray, name: str = "") -> pa.Array:
    """Each value's CSV text, "" for null."""
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    if pa.types.is_dictionary(col.type):  # the texts of the few distinct values, then each row's
        return _csv_cells(col.dictionary, name).take(col.indices).fill_null("")
    if _is_text(col.type):
        text = col.cast(_CSV_TEXT)
        quote = pc.match_substring_regex(text, _CSV_NEEDS_QUOTES).fill_null(False)
        if pc.any(quote).as_py():
            q, nothing = pa.scalar('"', _CSV_TEXT), pa.scalar("", _CSV_TEXT)
            quoted = pc.binary_join_element_wise(q, pc.replace_substring(text, '"', '""'), q, nothing)
            text = pc.if_else(quote, quoted, text)
        return text.fill_null("")
    if pa.types.is_floating(col.type):  # NaN and inf: an empty cell
        col = pc.if_else(pc.is_finite(col), col, pa.scalar(None, col.type))
    if pa.types.is_timestamp(col.type):
        return pc.strftime(col, format="%Y-%m-%dT%H:%M:%S" + ("%z" if col.type.tz else "")).cast(
            _CSV_TEXT).fill_null("")
    try:
        return col.cast(_CSV_TEXT).fill_null("")
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        raise NotAcceptable(f"column {name!r} has type {col.type}, which CSV cannot hold; ask for Arrow "
                            f"(Accept: {ARROW}) or leave the column out", field=name) from None


_JSON_ID_TYPES = (pa.types.is_integer, pa.types.is_floating, _is_text, pa.types.is_boolean, pa.types.is_null)


def check_answerable(table: pa.Table | None, answer_kind: str, id_col: str, reads=()) -> None:
    """Refuse, before any work, a body whose columns are not valid Arrow (`reads`: the columns the request
    interprets), or an answer that cannot hold the input: struct, list or binary columns in CSV, an id column JSON
    cannot write as a string or number."""
    if table is None:
        return
    _validate(table, table.column_names if answer_kind != ARROW else
              [name for name in dict.fromkeys(reads) if name in table.column_names])
    if answer_kind == CSV:
        for name, kind in zip(table.column_names, table.schema.types):
            value_kind = kind.value_type if pa.types.is_dictionary(kind) else kind
            if pa.types.is_nested(value_kind) or pa.types.is_binary(value_kind) or \
                    pa.types.is_large_binary(value_kind) or pa.types.is_fixed_size_binary(value_kind) or \
                    pa.types.is_union(value_kind) or pa.types.is_map(value_kind):
                raise NotAcceptable(f"column {name!r} has type {kind}, which CSV cannot hold; ask for Arrow "
                                    f"(Accept: {ARROW}) or leave the column out", field=name)
    elif answer_kind in (JSON, NDJSON) and id_col in table.column_names:
        kind = table.schema.field(id_col).type
        value_kind = kind.value_type if pa.types.is_dictionary(kind) else kind
        if not any(test(value_kind) for test in _JSON_ID_TYPES) or pa.types.is_float16(value_kind):
            raise InvalidInput(f"id column {id_col!r} has type {kind}; ids in a JSON answer must be text or "
                               f"numbers (or ask for Arrow: Accept: {ARROW})", field=id_col)
