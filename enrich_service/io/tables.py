"""Columns out of a decoded table (Arrow, CSV, and any table format after them): the coordinate, id and date columns
a request names, read as numbers and days with each bad cell reported on its row; and the checks that refuse a
table before any work (duplicate names, invalid Arrow data, an answer type that cannot hold the input)."""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..errors import InvalidInput, MalformedBody, NotAcceptable
from ..points import PointBatch
from .coordinates import row_errors
from .dates import text_days, timestamp_days
from .dialect import decimal_comma, formatted_days
from .media import ARROW, CSV, JSON, NDJSON


@dataclass(frozen=True)
class Columns:
    """Which input columns hold the id, coordinates and date (query parameters of bulk requests)."""

    id: str = "id"
    lon: str = "lon"
    lat: str = "lat"
    date: str | None = None
    date_format: str | None = None  # strptime format of text dates (dialect.py); None: ISO


def validate_columns(table: pa.Table, names) -> None:
    """The IPC reader trusts the buffers: text that is not UTF-8, offsets out of range. Checked in full for the
    columns that are read or written as text (an Arrow-to-Arrow answer passes the others through untouched)."""
    for name in names:
        try:
            table.column(name).validate(full=True)
        except (pa.ArrowInvalid, pa.ArrowException) as exc:
            raise MalformedBody(f"column {name!r} is not valid Arrow data: {exc}", field=name) from None


def check_names(names: list[str]) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise InvalidInput(f"column {name!r} appears {names.count(name)} times; column names must be unique",
                               field=name)
        seen.add(name)

def batch_from_table(table: pa.Table, cols: Columns) -> PointBatch:
    errors: dict[int, tuple[str, str]] = {}
    x = coordinate(table, cols.lon, errors)
    y = coordinate(table, cols.lat, errors)
    dates = None
    if cols.date:
        if cols.date not in table.column_names:
            raise InvalidInput(f"date column {cols.date!r} not in the body (columns: {table.column_names})",
                               field=cols.date)
        dates = table_dates(table.column(cols.date), cols.date, errors, cols.date_format)
    errors.update(row_errors(table))  # a GeoJSON feature without a point says why, rather than "missing"
    # Without an id column, a row's id is its number (as `errors[].row`): a JSON answer says which row is which.
    ids = table.column(cols.id) if cols.id in table.column_names else pa.array(np.arange(table.num_rows))
    return PointBatch(ids=ids, x=x, y=y, dates=dates, errors=errors)


_SLASHED = re.compile(r"\s*\d{1,2}[/.-]\d{1,2}[/.-]\d{2,4}\b")  # US and European dates: date_format reads them


def table_dates(col: pa.ChunkedArray, name: str, errors: dict[int, tuple[str, str]],
                date_format: str | None = None) -> np.ndarray:
    """A date column (dates, timestamps, or text as CSV sends it) as San Diego days (datetime64[D]); bad cells named
    per row. Timestamps with a zone (Arrow's tz, or text ending Z / +hh:mm) are converted to local time first.
    Text in another shape (US 05/01/2016) is read by its `date_format`."""
    if pa.types.is_date(col.type) or pa.types.is_timestamp(col.type):
        return timestamp_days(col)
    if pa.types.is_null(col.type):
        return np.full(len(col), np.datetime64("NaT"), dtype="datetime64[D]")
    if is_text(col.type) and date_format:
        return formatted_days(col, date_format, name, errors)
    if is_text(col.type):
        days, bad = text_days(col)
        for i in np.flatnonzero(bad):
            text = col[int(i)].as_py()
            hint = "; set date_format, e.g. %m/%d/%Y" if _SLASHED.match(text) else ""
            errors.setdefault(int(i), (name, f"{text!r} is not a date (YYYY-MM-DD){hint}"))
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


def coordinate(table: pa.Table, name: str, errors: dict[int, tuple[str, str]]) -> np.ndarray:
    if name not in table.column_names:
        raise InvalidInput(f"column {name!r} not in the body (columns: {table.column_names}); name the "
                           f"coordinate columns with lon_col/lat_col", field=name)
    col = table.column(name)
    if pa.types.is_dictionary(col.type):
        col = col.cast(col.type.value_type)
    if pa.types.is_integer(col.type) or pa.types.is_floating(col.type) or pa.types.is_decimal(col.type):
        # Unchecked: a value beyond float64's exact range (2^63 - 1, a uint64 max) is still a number, out of range.
        arr = pc.cast(col, pa.float64(), safe=False)
    elif is_text(col.type):
        if decimal_comma(table):  # "32,7159": a semicolon CSV from a spreadsheet in a decimal-comma locale
            col = pc.replace_substring_regex(col, r"^(\s*[+-]?\d+),(\d+\s*)$", r"\1.\2")
        return _text_numbers(col, name, errors)
    elif pa.types.is_null(col.type):
        return _text_numbers(col, name, errors)
    else:
        raise InvalidInput(f"column {name!r} has type {col.type}; coordinates must be numbers", field=name)
    if arr.null_count == 0 and arr.num_chunks == 1 and arr.type == pa.float64():
        values = arr.chunk(0).to_numpy(zero_copy_only=True)  # the body's own buffer, read-only: not copied
    else:
        values = arr.to_numpy().astype(np.float64, copy=True) if arr.null_count == 0 else \
            np.asarray(arr.fill_null(np.nan).to_numpy(), dtype=np.float64).copy()
    if arr.null_count:
        for i in np.flatnonzero(np.asarray(arr.is_null().to_numpy(zero_copy_only=False))):
            errors.setdefault(int(i), (name, "missing"))
    return values


def is_text(kind: pa.DataType) -> bool:
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


def _to_float(v: str | None) -> float:
    try:
        return float(v) if v not in (None, "") else np.nan
    except (TypeError, ValueError):
        return np.nan


_JSON_ID_TYPES = (pa.types.is_integer, pa.types.is_floating, is_text, pa.types.is_boolean, pa.types.is_null)


def check_answerable(table: pa.Table | None, answer_kind: str, id_col: str, reads=()) -> None:
    """Refuse, before any work, a body whose columns are not valid Arrow (`reads`: the columns the request
    interprets), or an answer that cannot hold the input: struct, list or binary columns in CSV, an id column JSON
    cannot write as a string or number."""
    if table is None:
        return
    validate_columns(table, table.column_names if answer_kind != ARROW else
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
