"""CSV formula safety: the one place that decides which cells a spreadsheet could run, and how they are escaped.

Staff open the service's CSV answers and the portal's CSV files in Excel, where a cell starting with `=`, `+`, `-`,
`@`, a tab or a carriage return is read as a formula (`=HYPERLINK(...)`, `+cmd|' /C calc'!A0`). Following OWASP's
CSV-injection guidance, such a cell gets a leading single quote (and the CSV writer quotes it): Excel shows the text
instead of running it. Modes (ENRICH_CSV_FORMULA_ESCAPE):

- `text` (the default): every such cell is escaped except one that is a plain number (`-117.16`, `+1e-5`, or with a
  decimal comma as semicolon files write it, `-117,16`): a number cannot carry a formula, and the coordinates and
  negative values staff sort and sum stay numbers;
- `all`: every such cell, numbers included (OWASP's strictest reading);
- `off`: nothing is escaped (a consumer that is not a spreadsheet).

`raw_columns` (ENRICH_CSV_RAW_COLUMNS) names columns written as they are whatever the mode. Typed columns (numbers,
dates) are never touched: only text can hold a formula.
"""

from __future__ import annotations

from collections.abc import Iterable

import pyarrow as pa
import pyarrow.compute as pc

from .tables import is_text

MODES = ("text", "all", "off")
# OWASP: cells beginning with these are interpreted as formulas by spreadsheet software.
FORMULA_CHARS = ["=", "+", "-", "@", "\t", "\r"]
PLAIN_NUMBER = r"^[+-]?(\d+[.,]?\d*|[.,]\d+)([eE][+-]?\d+)?$"  # a decimal comma too (-117,1627)
PREFIX = "'"



def escape_formulas(values: pa.Array | pa.ChunkedArray, mode: str = "text") -> pa.Array | pa.ChunkedArray:
    """A text column with every cell a spreadsheet would run prefixed by a single quote; other columns as given."""
    if mode not in MODES:
        raise ValueError(f"CSV formula escape mode {mode!r}: use one of {', '.join(MODES)}")
    if mode == "off":
        return values
    if pa.types.is_dictionary(values.type):  # the few distinct values are escaped, not every row
        if isinstance(values, pa.ChunkedArray):
            return pa.chunked_array([escape_formulas(chunk, mode) for chunk in values.chunks], values.type) \
                if values.num_chunks else values
        dictionary = escape_formulas(values.dictionary, mode)
        return values if dictionary is values.dictionary else \
            pa.DictionaryArray.from_arrays(values.indices, dictionary)
    if not is_text(values.type):
        return values
    first = pc.utf8_slice_codeunits(values, 0, 1)
    risky = pc.is_in(first, value_set=pa.array(FORMULA_CHARS, values.type)).fill_null(False)
    if not pc.any(risky).as_py():
        return values
    if mode == "text":
        try:  # the usual risky column is numbers with minus signs: all of them convert, nothing to escape
            pc.cast(values.filter(risky), pa.float64())
            return values
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            risky = pc.and_kleene(risky, pc.invert(pc.match_substring_regex(values, PLAIN_NUMBER))).fill_null(False)
            if not pc.any(risky).as_py():
                return values
    prefixed = pc.binary_join_element_wise(pa.scalar(PREFIX, values.type), values, pa.scalar("", values.type))
    return pc.if_else(risky, prefixed, values)


def formula_safe_table(table: pa.Table, mode: str | None = None, raw_columns: Iterable[str] | None = None) -> pa.Table:
    """The table with every text column escaped (escape_formulas), except `raw_columns`. Defaults: the settings."""
    if mode is None or raw_columns is None:
        from ..settings import get_settings

        settings = get_settings()
        mode = settings.csv_formula_escape if mode is None else mode
        raw_columns = settings.csv_raw_columns if raw_columns is None else raw_columns
    raw = set(raw_columns)
    columns = [col if name in raw else escape_formulas(col, mode)
               for name, col in zip(table.column_names, table.columns)]
    return pa.Table.from_arrays(columns, names=table.column_names)
