"""NDJSON bodies: a spooled body read back a few MB at a time as groups of lines, each group decoded at once (a
broken line is reported on its row, the others decoded)."""

from __future__ import annotations

from collections.abc import Iterator

import msgspec

from .json_body import decode_value, without_bom

SPOOL_READ_BYTES = 4 * 1024 * 1024


def _read(spool) -> Iterator[bytes]:
    """The spooled body a few MB at a time, without a leading UTF-8 byte order mark (as the JSON and CSV readers
    skip it: it had made the first line invalid JSON)."""
    chunk = without_bom(spool.read(SPOOL_READ_BYTES))  # a whole read: the body's first bytes, all of them
    while chunk:
        yield chunk
        chunk = spool.read(SPOOL_READ_BYTES)


def line_groups(spool, rows: int) -> Iterator[list[bytes]]:
    """The spooled body's non-blank lines, `rows` at a time, reading a few MB at a time."""
    pending = b""
    group: list[bytes] = []
    for chunk in _read(spool):
        lines = (pending + chunk).split(b"\n")
        pending = lines.pop()
        group.extend(line for line in lines if line.strip())
        while len(group) >= rows:
            yield group[:rows]
            group = group[rows:]
    if pending.strip():
        group.append(pending)
    if group:
        yield group


def has_lines(spool) -> bool:
    """Whether the spooled body has a line that is not blank (read from the start, then rewound)."""
    try:
        return any(chunk.strip() for chunk in _read(spool))
    finally:
        spool.seek(0)


_BAD_LINE = (msgspec.MsgspecError, UnicodeDecodeError, RecursionError)


def parse_lines(lines: list[bytes], first_row: int) -> tuple[list, dict]:
    # One decode for the whole chunk; only when a line is broken are they parsed one by one to say which. msgspec
    # rather than orjson: integers of any size stay exact (an id 2^70 comes back as sent).
    try:
        docs = msgspec.json.decode(b"[" + b",".join(lines) + b"]")
        if len(docs) == len(lines):
            return docs, {}
    except _BAD_LINE:
        pass
    docs, bad = [], {}
    for i, line in enumerate(lines):
        try:
            doc = decode_value(line)
        except _BAD_LINE as exc:
            doc, bad[i] = None, ("body", f"line {first_row + i + 1} is not valid JSON: {_why(exc)}")
        docs.append(doc)
    return docs, bad


def _why(exc: Exception) -> str:
    if isinstance(exc, UnicodeDecodeError):
        return "its text is not UTF-8"
    if isinstance(exc, RecursionError):
        return "nested too deeply"
    return str(exc)[:200]
