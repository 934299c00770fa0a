"""Streamed NDJSON answers over a spooled body: shared by /v1/pip and /v1/geocode-join.

The body is spooled first (common.spool_body), then answered CHUNK_ROWS lines at a time, each chunk in a worker
thread, so a 10M-row request never holds the whole answer and clients that send everything first never deadlock.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator

import msgspec
import orjson

from ..errors import EnrichError
from ..settings import Settings
from .common import offload

CHUNK_ROWS = 50_000
SPOOL_READ_BYTES = 4 * 1024 * 1024


def line_groups(spool, rows: int) -> Iterator[list[bytes]]:
    """The spooled body's non-blank lines, `rows` at a time, reading a few MB at a time."""
    pending = b""
    group: list[bytes] = []
    while chunk := spool.read(SPOOL_READ_BYTES):
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
        while chunk := spool.read(SPOOL_READ_BYTES):
            if chunk.strip():
                return True
        return False
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
            doc = msgspec.json.decode(line)
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


async def answer_stream(spool, answer_chunk: Callable[[list[bytes], int], bytes],
                        settings: Settings) -> AsyncIterator[bytes]:
    """`answer_chunk(lines, first_row)` for each chunk of the spool's lines; past the batch limit, one error line."""
    seen = 0
    groups = line_groups(spool, CHUNK_ROWS)
    try:
        while (lines := await offload(next, groups, None)) is not None:
            if seen + len(lines) > settings.max_batch:
                yield orjson.dumps({"error": f"stream exceeds the batch limit of {settings.max_batch} rows; "
                                             f"rows after {seen} were not answered", "row": seen}) + b"\n"
                return
            try:
                answer = await offload(answer_chunk, lines, seen)
            except EnrichError as exc:  # the status line is out: the stream ends with a line that says why
                yield orjson.dumps({"error": exc.message, "field": exc.field, "row": seen}) + b"\n"
                return
            yield answer
            seen += len(lines)
    finally:
        spool.close()
