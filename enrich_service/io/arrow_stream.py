"""An Arrow IPC stream written into one buffer of the right size, or as the list of its parts with the columns'
own memory in it: the service's Arrow answers and the client's requests. Light on purpose (pyarrow only): the
client imports it without the engine."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.ipc as ipc

SMALL_PART_BYTES = 64 << 10  # message headers and small buffers are joined up to this size: fewer, larger writes


def stream_buffer(table: pa.Table) -> pa.Buffer:
    # Measure, then write: a growing BufferOutputStream reallocates and copies the whole stream as it grows.
    mock = pa.MockOutputStream()
    with ipc.new_stream(mock, table.schema) as writer:
        writer.write_table(table)
    buf = pa.allocate_buffer(mock.size())
    with ipc.new_stream(pa.FixedSizeBufferWriter(buf), table.schema) as writer:
        writer.write_table(table)
    return buf


class _Parts:
    """A file for pyarrow's IPC writer that keeps what it is handed instead of copying it: the columns' buffers
    arrive as pyarrow Buffers over the table's own memory, the message headers and padding as small bytes."""

    closed = False

    def __init__(self) -> None:
        self.parts: list[memoryview] = []
        self._small: list[bytes] = []
        self._small_size = 0

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        if view.nbytes >= SMALL_PART_BYTES:
            self._flush_small()
            self.parts.append(view)
        elif view.nbytes:
            self._small.append(view.tobytes())
            self._small_size += view.nbytes
            if self._small_size >= SMALL_PART_BYTES:
                self._flush_small()
        return view.nbytes

    def _flush_small(self) -> None:
        if self._small:
            self.parts.append(memoryview(b"".join(self._small)))
            self._small, self._small_size = [], 0

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self._flush_small()


def stream_parts(table: pa.Table) -> list[memoryview]:
    """The table's IPC stream as byte views, in order, without copying the columns: joined, they are exactly
    stream_buffer(table). The views keep the table's memory alive; send them as they are (a response's body parts,
    a request's content)."""
    sink = _Parts()
    with ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    sink.close()
    return sink.parts
