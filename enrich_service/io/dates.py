"""Request dates read as San Diego calendar days: the `as_of` option, and the date column of every body (JSON keys,
CSV text, Arrow dates and timestamps), vectorized; an unreadable cell is that row's error."""

from __future__ import annotations

import datetime as dt
import re
from zoneinfo import ZoneInfo

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..errors import InvalidInput

# San Diego calendar days: the versions' effective dates (boundaries/manifest.yaml) are local days, so a timestamp
# with a zone is converted to this zone before its day is taken; a date or a timestamp without a zone is already one.
LOCAL_TZ = "America/Los_Angeles"
_ZONE = r"(?:Z|[+-]\d{2}(?::?\d{2})?)"
_ISO_DAY = re.compile(r"\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d{1,9})?)?" + _ZONE + r"?)?")
_ZONED = r"^.{10}[T ].*" + _ZONE + r"$"
_NOT_A_DATE = "is not a date (YYYY-MM-DD)"


def parse_date(value: object, field_name: str) -> dt.date | None:
    """One date option (as_of): YYYY-MM-DD or a full ISO timestamp (with a zone: its San Diego day); nothing else."""
    if value is None or value == "":
        return None
    if isinstance(value, dt.datetime):
        return value.astimezone(ZoneInfo(LOCAL_TZ)).date() if value.tzinfo else value.date()
    if isinstance(value, dt.date):
        return value
    days, bad = text_days(pa.array([str(value)[:100]], pa.string()))
    if bad[0] or np.isnat(days[0]):
        raise InvalidInput(f"{field_name} {str(value)[:100]!r} is not a date: use YYYY-MM-DD or an ISO timestamp "
                           f"(e.g. 2022-12-09T23:00:00-08:00)", field=field_name)
    return days[0].astype(dt.date)


def text_days(texts: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """ISO dates and timestamps (Arrow text) to their San Diego day, vectorized: (datetime64[D] with NaT for null,
    empty or bad; bool mask of the bad ones). YYYY-MM-DD and zone-less timestamps keep their day; a zoned timestamp
    (Z, +hh:mm) is converted to America/Los_Angeles first."""
    if isinstance(texts, pa.ChunkedArray):
        texts = texts.combine_chunks()
    if not pa.types.is_string(texts.type):
        texts = texts.cast(pa.string())
    n = len(texts)
    present = pc.fill_null(pc.not_equal(texts, ""), False)
    if not pc.all(present).as_py():
        texts = pc.if_else(present, texts, pa.scalar(None, pa.string()))  # an empty cell is no date
    try:  # the usual column, plain YYYY-MM-DD (Arrow's cast takes no other shape): at once
        return _to_days(pc.cast(texts, pa.date32())), np.zeros(n, dtype=bool)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    days = np.full(n, np.datetime64("NaT"), dtype="datetime64[D]")
    present = present.to_numpy(zero_copy_only=False)
    shaped = pc.fill_null(pc.match_substring_regex(texts, "^" + _ISO_DAY.pattern + "$"), False) \
        .to_numpy(zero_copy_only=False)
    bad = present & ~shaped
    if not shaped.any():
        return days, bad
    zoned = shaped & pc.fill_null(pc.match_substring_regex(texts, _ZONED), False).to_numpy(zero_copy_only=False)
    length = pc.fill_null(pc.utf8_length(texts), 0).to_numpy(zero_copy_only=False)
    groups = ((shaped & ~zoned & (length == 10), pa.date32()),
              (shaped & ~zoned & (length > 10), pa.timestamp("s")),
              (zoned, pa.timestamp("s", tz="UTC")))
    for rows, to in groups:
        if rows.any():
            idx = np.flatnonzero(rows)
            subset = texts.take(pa.array(idx))
            if to != pa.date32():  # the fraction of a second changes no day: dropped, so any digits parse
                subset = pc.replace_substring_regex(subset, r"\.\d+", "")
            days[idx], failed = _cast_days(subset, to)
            bad[idx[failed]] = True
    return days, bad


def _cast_days(texts: pa.Array, to: pa.DataType) -> tuple[np.ndarray, np.ndarray]:
    try:
        return _to_days(pc.cast(texts, to)), np.zeros(len(texts), dtype=bool)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    # Some text cannot be read (2020-02-30, 25:00): element by element, to name the rows (a rare path).
    out = np.full(len(texts), np.datetime64("NaT"), dtype="datetime64[D]")
    failed = np.zeros(len(texts), dtype=bool)
    for i in range(len(texts)):
        try:
            out[i] = _to_days(pc.cast(texts.slice(i, 1), to))[0]
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            failed[i] = True
    return out, failed


def timestamp_days(col: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Arrow dates or timestamps to datetime64[D]: a timestamp with a time zone gives its San Diego day."""
    return _to_days(col)


def _to_days(col) -> np.ndarray:
    if pa.types.is_timestamp(col.type) and col.type.tz is not None:
        col = col.cast(pa.timestamp(col.type.unit, tz=LOCAL_TZ))  # the same instants, read on local clocks
    return col.cast(pa.date32()).to_numpy(zero_copy_only=False).astype("datetime64[D]")


def parse_dates(values: list, field_name: str, errors: dict[int, tuple[str, str]]) -> np.ndarray:
    """ISO date or timestamp strings (or dates) to their San Diego day as datetime64[D] (see text_days); anything
    else becomes NaT with that row's error."""
    if set(map(type, values)) <= {str, type(None)}:  # the usual column: read as one Arrow array
        texts = values
    else:
        texts = [None] * len(values)
        for i, v in enumerate(values):
            if v is None or isinstance(v, str):
                texts[i] = v
            elif isinstance(v, dt.datetime):
                texts[i] = v.isoformat(sep="T")
            elif isinstance(v, dt.date):
                texts[i] = v.isoformat()
            else:
                errors.setdefault(i, (field_name, f"must be a date string YYYY-MM-DD, got {type(v).__name__}"))
    days, bad = text_days(pa.array(texts, pa.string()))
    for row in np.flatnonzero(bad):
        errors.setdefault(int(row), (field_name, f"{values[row]!r} {_NOT_A_DATE}"))
    return days
