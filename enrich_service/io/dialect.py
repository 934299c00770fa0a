"""How a CSV file is written: its delimiter (sniffed, or set by the `delimiter` option) and the shape of its dates
(the `date_format` option, for files whose dates are not ISO, such as Excel's US 05/01/2016)."""

from __future__ import annotations

import csv
import datetime as dt

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..errors import InvalidInput

# What Excel and GIS exports use: comma, semicolon (European locales), tab, and pipe.
DELIMITERS = {"comma": ",", "semicolon": ";", "tab": "\t", "pipe": "|"}
_ESCAPED = {"\\t": "\t", "%09": "\t"}
_SNIFF_LINES = 20


def parse_delimiter(value: str | None) -> str | None:
    """The `delimiter` option: a name (comma, semicolon, tab, pipe) or the character itself (`\\t` for tab); None
    to sniff it."""
    if value is None or value == "":
        return None
    char = DELIMITERS.get(value.strip().lower(), _ESCAPED.get(value, value))
    if char not in DELIMITERS.values():
        raise InvalidInput(f"delimiter {value[:20]!r} is not one of {', '.join(DELIMITERS)} (or , ; | \\t)",
                           field="delimiter")
    return char


def sniff_delimiter(text: str) -> str:
    """The delimiter of a CSV whose first lines are `text`: the candidate that splits the header and the lines
    after it into the same number of cells, the most of them; a comma when no candidate splits anything (a file of
    one column)."""
    lines = text.splitlines()[:_SNIFF_LINES]
    if len(lines) > 1 and not text.endswith(("\n", "\r")):
        lines = lines[:-1]  # the probe may cut the last line short
    best, best_cells = ",", 1
    for char in DELIMITERS.values():
        try:
            widths = [len(row) for row in csv.reader(lines, delimiter=char) if row]
        except csv.Error:
            continue
        if not widths or widths[0] <= 1:
            continue
        # Consistent: every row as wide as the header (a quoted cell may hold the others' delimiter).
        if all(w == widths[0] for w in widths) and widths[0] > best_cells:
            best, best_cells = char, widths[0]
    if best_cells == 1:  # nothing consistent: the candidate the header splits most
        header = lines[0] if lines else ""
        counts = {char: len(next(csv.reader([header], delimiter=char), [])) for char in DELIMITERS.values()}
        char, cells = max(counts.items(), key=lambda kv: kv[1])
        best = char if cells > 1 else ","
    return best


DELIMITER_KEY = b"enrich.csv_delimiter"  # schema metadata: a CSV body's delimiter, when not a comma


def decimal_comma(table: pa.Table) -> bool:
    """Whether a table's numbers may be written with a decimal comma: a semicolon-separated CSV, as spreadsheets
    write in the locales where the comma is the decimal mark (a comma CSV cannot hold an unquoted 32,7)."""
    return (table.schema.metadata or {}).get(DELIMITER_KEY) == b";"


def check_date_format(value: str | None) -> str | None:
    """The `date_format` option: a strptime format such as %m/%d/%Y; refused when it cannot read a date."""
    if value is None or value == "":
        return None
    if "%" not in value or len(value) > 100:
        raise InvalidInput(f"date_format {value[:100]!r} is not a strptime format; e.g. %m/%d/%Y for 05/01/2016",
                           field="date_format")
    sample = dt.datetime(2016, 5, 1, 13, 45, 30).strftime(value)
    try:
        dt.datetime.strptime(sample, value)
    except ValueError as exc:
        raise InvalidInput(f"date_format {value!r} cannot read the dates it writes: {exc}",
                           field="date_format") from None
    return value


def formatted_days(col: pa.ChunkedArray | pa.Array, fmt: str, name: str,
                   errors: dict[int, tuple[str, str]]) -> np.ndarray:
    """Text dates in `fmt` as days (datetime64[D], NaT for an empty cell); a cell that does not match is its row's
    error, the others are read."""
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    if not pa.types.is_string(col.type):
        col = col.cast(pa.string())
    text = pc.utf8_trim_whitespace(col)
    present = pc.fill_null(pc.not_equal(text, ""), False)
    stamps = pc.strptime(text, format=fmt, unit="s", error_is_null=True)
    days = stamps.cast(pa.date32()).to_numpy(zero_copy_only=False).astype("datetime64[D]")
    bad = present.to_numpy(zero_copy_only=False) & np.isnat(days)
    for i in np.flatnonzero(bad):  # rare: named one by one
        errors.setdefault(int(i), (name, f"{col[int(i)].as_py()[:100]!r} does not match date_format {fmt!r}"))
    return days

