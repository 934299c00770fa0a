"""CSV bodies in and answers out. Every cell is read as text, so a CSV body comes back byte for byte in its own
columns ("00123", TRUE, 2^70); only the columns a request names are read as numbers or dates (tables.py). Answers
escape what a spreadsheet would run (csv_safety.py)."""

from __future__ import annotations

import codecs
import csv
import io
import re

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from ..errors import InvalidInput, MalformedBody, NotAcceptable, UnsupportedMediaType
from .csv_safety import formula_safe_table
from .dialect import DELIMITER_KEY, parse_delimiter, sniff_delimiter
from .media import ARROW
from .tables import check_names, is_text


def csv_charset(content_type: str | None) -> str | None:
    """The charset declared on a text/csv Content-Type (None: undeclared), checked against Python's codecs."""
    for part in (content_type or "").split(";")[1:]:
        key, _, value = part.partition("=")
        if key.strip().lower() == "charset":
            name = value.strip().strip('"').lower()
            try:
                return codecs.lookup(name).name
            except LookupError:
                raise UnsupportedMediaType(f"charset {name[:40]!r} is not an encoding this service knows; use "
                                           f"e.g. utf-8 or windows-1252", field="Content-Type") from None
    return None


def parse_charset(value: str | None) -> str | None:
    """The `charset` option (a query parameter or form field: a browser form cannot set its file's Content-Type),
    checked against Python's codecs; None or empty: not given."""
    if not value:
        return None
    try:
        return codecs.lookup(value.strip().strip('"').lower()).name
    except LookupError:
        raise InvalidInput(f"charset {value[:40]!r} is not an encoding this service knows; use e.g. utf-8 or "
                           f"windows-1252", field="charset") from None


_DECLARE = "declare the file's encoding: charset=windows-1252 (a query parameter or form field), or Content-Type: " \
           "text/csv; charset=windows-1252"


_HEADER_PROBE = 1 << 16


def decode_csv(body: bytes, charset: str | None = None, delimiter: str | None = None) -> pa.Table:
    """A CSV body (header row first) with every column as text: the input's cells pass through exactly as sent
    ("00123", TRUE, 2^70), and only the coordinate and date columns are read as numbers and dates. The delimiter
    (comma, semicolon, tab, pipe) is sniffed from the first lines unless given (dialect.py)."""
    encoding = charset or "utf-8"
    if encoding in ("utf-8", "utf-8-sig"):  # Excel's "CSV UTF-8" starts with a byte order mark
        encoding = "utf-8"
        if body.startswith(codecs.BOM_UTF8):
            body = body[len(codecs.BOM_UTF8):]
    names, delimiter = _csv_header(body, encoding, charset, delimiter)
    if delimiter != ",":  # the answer is written with the body's own delimiter (encode_csv)
        return _read(body, names, encoding, delimiter).replace_schema_metadata({DELIMITER_KEY: delimiter.encode()})
    return _read(body, names, encoding, delimiter)


def _read(body: bytes, names: list[str], encoding: str, delimiter: str) -> pa.Table:
    check_names(names)
    head = body.rstrip(b"\r\n")
    if b"\n" not in head and b"\r" not in head:  # the header row alone: no rows (Arrow's reader refuses an
        return pa.table({name: pa.array([], pa.string()) for name in names})  # unterminated one), an empty batch
    read = pacsv.ReadOptions(column_names=names, skip_rows_after_names=1,
                             encoding="utf8" if encoding == "utf-8" else encoding)
    convert = pacsv.ConvertOptions(column_types={name: pa.string() for name in names}, strings_can_be_null=False)
    # A blank line is a row of one empty cell when there is one column (an address list with a blank address),
    # and nothing when there are more (it cannot be a row of them).
    parse = pacsv.ParseOptions(delimiter=delimiter, ignore_empty_lines=len(names) > 1)
    try:
        return pacsv.read_csv(io.BytesIO(body), read_options=read, parse_options=parse, convert_options=convert)
    except (pa.ArrowInvalid, OSError, UnicodeDecodeError) as exc:
        message = str(exc)
        column = re.search(r"In CSV column #(\d+)", message)
        field = names[int(column.group(1))] if column and int(column.group(1)) < len(names) else "body"
        if "UTF8" in message or "UTF-8" in message:
            raise UnsupportedMediaType(
                f"column {field!r} holds text that is not UTF-8; {_DECLARE}", field=field) from None
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


# An object with a key, or an array of objects or arrays: no CSV header row starts so.
_LOOKS_LIKE_JSON = re.compile(r'\s*(\{\s*"|\[\s*[\[{\]])')


def _csv_header(body: bytes, encoding: str, declared: str | None, delimiter: str | None) -> tuple[list[str], str]:
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
                f"{where} is not UTF-8 (byte {exc.start}); {_DECLARE}", field=field) from None
        text = probe[:exc.start].decode(encoding)
    if _LOOKS_LIKE_JSON.match(text):
        raise UnsupportedMediaType("body looks like JSON, but its Content-Type is text/csv: send it as "
                                   "application/json (application/x-ndjson for one object per line)",
                                   field="Content-Type")
    delimiter = delimiter or sniff_delimiter(text)
    try:
        header = next(csv.reader(io.StringIO(text), delimiter=delimiter), None)
    except csv.Error as exc:
        raise MalformedBody(f"the CSV header row cannot be read: {exc}", field="body") from None
    if not header or header == [""]:
        raise MalformedBody("body is not a CSV with a header row: it is empty", field="body")
    return header, delimiter


_CSV_NEEDS_QUOTES = r'[",\r\n]|^\''
_CSV_TEXT = pa.large_string()


def encode_csv(table: pa.Table, formula_escape: str | None = None, raw_columns=None) -> bytes:
    """The table as CSV with text cells exactly as they are (quoted only where CSV needs it), so a CSV body comes
    back byte-for-byte in its own columns, with its own delimiter; text a spreadsheet would run escaped
    (csv_safety)."""
    delimiter = (table.schema.metadata or {}).get(DELIMITER_KEY, b",").decode()
    table = formula_safe_table(table, formula_escape, raw_columns)
    header = _csv_cells(pa.array(table.column_names, _CSV_TEXT), delimiter=delimiter)
    lines: list[bytes | memoryview] = [delimiter.join(header.to_pylist()).encode() + b"\n"]
    if table.num_rows:
        cells = [_csv_cells(col, name, delimiter) for name, col in zip(table.column_names, table.columns)]
        rows = pc.binary_join_element_wise(*cells, pa.scalar(delimiter, _CSV_TEXT))  # the last argument: the separator
        rows = pc.binary_join_element_wise(rows, pa.scalar("", _CSV_TEXT), pa.scalar("\n", _CSV_TEXT))
        offsets = np.frombuffer(rows.buffers()[1], dtype=np.int64)
        start, end = offsets[rows.offset], offsets[rows.offset + len(rows)]
        lines.append(memoryview(rows.buffers()[2])[start:end])
    return b"".join(lines)


def _csv_cells(col: pa.Array | pa.ChunkedArray, name: str = "", delimiter: str = ",") -> pa.Array:
    """Each value's CSV text, "" for null."""
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    if pa.types.is_dictionary(col.type):  # the texts of the few distinct values, then each row's
        return _csv_cells(col.dictionary, name, delimiter).take(col.indices).fill_null("")
    if is_text(col.type):
        text = col.cast(_CSV_TEXT)
        quote = pc.match_substring_regex(text, _CSV_NEEDS_QUOTES.replace(",", re.escape(delimiter))).fill_null(False)
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


def read_csv_body(body: bytes, content_type: str | None = None, delimiter: str | None = None,
                  charset: str | None = None) -> pa.Table:
    """The registry's table decoder (formats.py): the text in the charset the Content-Type or the `charset`
    parameter declares (refused when they differ), split by the `delimiter` parameter (a name or the character;
    None: sniffed)."""
    declared, given = csv_charset(content_type), parse_charset(charset)
    if declared and given and declared != given:
        raise InvalidInput(f"charset {charset!r} differs from the Content-Type's charset {declared!r}; give one",
                           field="charset")
    return decode_csv(body, given or declared, parse_delimiter(delimiter))
