"""An Arrow IPC stream written into one buffer of the right size: the service's Arrow answers and the client's
requests. Light on purpose (pyarrow only): the client imports it without the engine."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.ipc as ipc


def stream_buffer(table: pa.Table) -> pa.Buffer:
    # Measure, then write: a growing BufferOutputStream reallocates and copies the whole stream as it grows.
    mock = pa.MockOutputStream()
    with ipc.new_stream(mock, table.schema) as writer:
        writer.write_table(table)
    buf = pa.allocate_buffer(mock.size())
    with ipc.new_stream(pa.FixedSizeBufferWriter(buf), table.schema) as writer:
        writer.write_table(table)
    return buf
