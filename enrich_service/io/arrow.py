"""Arrow IPC stream bodies in and answers out: the table as sent, its columns passed through untouched."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.ipc as ipc

from ..errors import MalformedBody
from .arrow_stream import stream_parts
from .tables import check_names


def decode_arrow(body: bytes) -> pa.Table:
    try:
        table = ipc.open_stream(pa.py_buffer(body)).read_all()
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError) as exc:
        raise MalformedBody(f"body is not an Arrow IPC stream: {exc}", field="body") from None
    check_names(table.column_names)
    return table


def encode_arrow(table: pa.Table) -> list[memoryview]:
    # The stream as parts over the answer table's own columns (ArrowResponse sends them one by one): the input
    # columns passed through and the result columns are written to the socket without being copied first.
    return stream_parts(table)


def read_arrow_body(body: bytes, content_type: str | None = None) -> pa.Table:
    """The registry's table decoder (formats.py): the Content-Type carries nothing Arrow needs."""
    return decode_arrow(body)
