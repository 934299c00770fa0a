"""Streamed NDJSON answers over a spooled body: shared by /v1/pip and /v1/geocode-join.

The body is spooled first (common.spool_body), then answered CHUNK_ROWS lines at a time, each chunk in a worker
thread, so a 10M-row request never holds the whole answer and clients that send everything first never deadlock.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import orjson

from ..errors import EnrichError
from ..io.ndjson import line_groups
from ..settings import Settings
from .common import offload

CHUNK_ROWS = 50_000
SPOOL_READ_BYTES = 4 * 1024 * 1024


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
