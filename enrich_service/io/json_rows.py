"""JSON rows built column-wise: a 1M-row answer as one buffer, without a Python object per row.

Every row is a few texts laid end to end: `{"id":`, the row's id, then one text holding all the dictionary columns
(layer keys, rules, flags, error) with their keys and separators. Those columns have few distinct values, so their
combinations are few (hundreds on real data): each combination's text is built once, and a compiled kernel copies
each row's texts into place (on every core from 50,000 rows). A column with a value per row (ids, distances) is a
text per row, made by Arrow (docs/engine.md has the timings). Where no value needs a float's formatting, the bytes
are exactly what orjson writes for the per-row dicts; with floats, the same JSON values (tests/test_codecs.py).
"""

from __future__ import annotations

from typing import Any

import msgspec
import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
from numba import njit, prange

from ..server.parallel import run_parallel
from .tables import is_text

_TEXT = pa.large_string()
Column = Any  # a list, a numpy array, or an Arrow array (pyarrow has no type stubs)
Coded = tuple[np.ndarray, pa.Array]  # each row's code, and the JSON text of each code
_NEEDS_ESCAPE = r'["\\\x00-\x1f]'
_ROWS_PER_TASK = 16_384
SERIAL_BELOW = 50_000


def json_rows(columns: list[tuple[str, Column]], sep: bytes, *, head: bytes = b"", tail: bytes = b"") -> memoryview:
    """`head`, every row as a JSON object (keys in column order) with `sep` between rows, then `tail`."""
    n = len(columns[0][1])
    if n == 0:
        return memoryview(head + tail)
    table = _TextTable()
    pieces: list[np.ndarray] = []
    # Consecutive dictionary columns, joined into one text per combination: (label, (codes, texts) or None).
    run: list[tuple[str, Coded | None]] = []
    for k, (name, values) in enumerate(columns):
        label = ("{" if k == 0 else ",") + orjson.dumps(name).decode() + ":"
        coded = _codes(values)
        if coded is not None:
            run.append((label, coded))
            continue
        run.append((label, None))  # the label alone ends the run; the values follow, one text per row
        pieces.append(_run_texts(run, n, table))
        run = []
        pieces.append(table.add(_json_texts(values)))
    run.append(("}" + sep.decode(), None))
    pieces.append(_run_texts(run, n, table))
    return _assemble(table, pieces, n, sep, head, tail)


def json_columns(columns: list[tuple[str, Column]], *, head: bytes = b"", tail: bytes = b"") -> bytes:
    """`head`, then one JSON object holding an array per column ({"id":[...],"zip":[...]}), then `tail`: the same
    values as json_rows writes, without repeating every key on every row (an answer a third the size, and a client
    parses arrays of values faster than a dict per row)."""
    parts: list[bytes | memoryview] = [head, b"{"]
    for k, (name, values) in enumerate(columns):
        parts.append((b"," if k else b"") + orjson.dumps(name) + b":[")
        parts.append(_array_items(values))
        parts.append(b"]")
    parts.append(b"}" + tail)
    return b"".join(parts)


def _array_items(values: Column) -> memoryview:
    """A column's values as JSON texts separated by commas (the inside of its array). Each row's text followed by
    a comma, as one Arrow string array: its data buffer is the array's text, laid end to end by Arrow (a dictionary
    column: each distinct text made once, then taken per row)."""
    if len(values) == 0:
        return memoryview(b"")
    comma, nothing = pa.scalar(",", _TEXT), pa.scalar("", _TEXT)
    coded = _codes(values)
    if coded is not None:
        codes, texts = coded
        items = pc.binary_join_element_wise(texts, comma, nothing).take(pa.array(codes))
    else:
        items = pc.binary_join_element_wise(_json_texts(values), comma, nothing)
    offsets = np.frombuffer(items.buffers()[1], dtype=np.int64)
    first, last = int(offsets[items.offset]), int(offsets[items.offset + len(items)])
    return memoryview(items.buffers()[2])[first:last - 1]  # the last comma left out


def _assemble(table: _TextTable, pieces: list[np.ndarray], n: int, sep: bytes, head: bytes,
              tail: bytes) -> memoryview:
    """`head`, then row i as the texts pieces[0][i], pieces[1][i], ... (the last of them ending in `sep`), then
    `tail` in place of the last row's `sep`: one buffer, written by a compiled kernel."""
    offsets, data = table.arrays()
    index = np.vstack(pieces)
    lengths = np.diff(offsets)[index].sum(axis=0)
    starts = np.empty(n, dtype=np.int64)
    starts[0] = len(head)
    np.cumsum(lengths[:-1], out=starts[1:])
    starts[1:] += len(head)
    end = int(starts[-1] + lengths[-1]) - len(sep)  # the last row's separator gives way to the tail
    out = np.empty(max(end + len(tail), end + len(sep)), dtype=np.uint8)
    out[:len(head)] = np.frombuffer(head, dtype=np.uint8)
    if n < SERIAL_BELOW:  # waking the other cores' threads costs more than copying a small answer
        _copy_serial(index, offsets, data, starts, out)
    else:
        run_parallel(_copy_parallel, index, offsets, data, starts, out)
    out[end:end + len(tail)] = np.frombuffer(tail, dtype=np.uint8)
    return out.data[:end + len(tail)]


class _TextTable:
    """Every distinct text the rows are made of, in one buffer; add() returns each row's text number."""

    def __init__(self) -> None:
        self._offsets: list[np.ndarray] = [np.zeros(1, dtype=np.int64)]
        self._data: list[np.ndarray] = []
        self._count = 0
        self._size = 0

    def add(self, texts: pa.Array, rows: np.ndarray | None = None) -> np.ndarray:
        """Append `texts`; each row gets texts[rows[i]] (texts[i] when rows is None)."""
        texts = texts.cast(_TEXT) if texts.type != _TEXT else texts
        offsets = np.frombuffer(texts.buffers()[1], dtype=np.int64)[texts.offset: texts.offset + len(texts) + 1]
        data = np.frombuffer(texts.buffers()[2], dtype=np.uint8)[offsets[0]:offsets[-1]] if offsets[-1] > offsets[0] \
            else np.zeros(0, dtype=np.uint8)
        self._offsets.append(offsets[1:] - offsets[0] + self._size)
        self._data.append(data)
        first = self._count
        self._count += len(texts)
        self._size += len(data)
        return (first + (np.arange(len(texts), dtype=np.int64) if rows is None else rows)).astype(np.int64)

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        data = np.concatenate(self._data) if self._data else np.zeros(0, dtype=np.uint8)
        return np.concatenate(self._offsets), data


def _codes(values: Column) -> Coded | None:
    """A column of few distinct values as (each row's code, the JSON text of each code; the last is null): a
    dictionary column, or a string column mostly null (flags, errors as plain strings). Else None."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if isinstance(values, pa.Array) and is_text(values.type) and values.null_count > len(values) // 2:
        values = pc.dictionary_encode(values)
    if not isinstance(values, pa.DictionaryArray):
        return None
    texts = _dictionary_texts(values.dictionary)
    codes = values.indices.cast(pa.int32()).fill_null(len(texts) - 1).to_numpy()
    return codes, texts


def _run_texts(run: list[tuple[str, Coded | None]], n: int, table: _TextTable) -> np.ndarray:
    """One text per distinct combination of the run's columns, each preceded by its label; each row's text number."""
    if all(coded is None for _, coded in run):
        return table.add(pa.array(["".join(label for label, _ in run)], _TEXT), np.zeros(n, dtype=np.int64))
    combo = np.zeros(n, dtype=np.int64)
    count = 1
    for _, coded in run:
        if coded is not None:
            combo, count = number_combinations(combo, count, coded[0], len(coded[1]))
    first = np.empty(count, dtype=np.int64)
    first[combo] = np.arange(n, dtype=np.int64)  # one row standing for each combination
    parts = []
    for label, coded in run:
        parts.append(pa.scalar(label, _TEXT))
        if coded is not None:
            parts.append(coded[1].take(pa.array(coded[0][first])))
    joined = pc.binary_join_element_wise(*parts, pa.scalar("", _TEXT))
    return table.add(joined, combo)


def number_combinations(combo: np.ndarray, count: int, codes: np.ndarray, card: int) -> tuple[np.ndarray, int]:
    """Number the distinct (combo, code) pairs 0..m-1 in one pass; np.unique (a sort) when the pairs could be many."""
    key = combo * card + codes
    if count * card > 1 << 22:
        uniq, number = np.unique(key, return_inverse=True)
        return number.astype(np.int64), len(uniq)
    seen = np.zeros(count * card, dtype=np.bool_)
    seen[key] = True
    number = np.cumsum(seen, dtype=np.int64) - 1
    return number[key], int(number[-1]) + 1


@njit(cache=True)
def _copy_range(lo, hi, index, offsets, data, starts, out):
    for i in range(lo, hi):
        pos = starts[i]
        for k in range(index.shape[0]):
            text = index[k, i]
            a = offsets[text]
            size = offsets[text + 1] - a
            out[pos:pos + size] = data[a:a + size]
            pos += size


@njit(parallel=True, cache=True)
def _copy_parallel(index, offsets, data, starts, out):
    n = index.shape[1]
    tasks = (n + _ROWS_PER_TASK - 1) // _ROWS_PER_TASK
    for t in prange(tasks):
        _copy_range(t * _ROWS_PER_TASK, min(n, (t + 1) * _ROWS_PER_TASK), index, offsets, data, starts, out)


@njit(cache=True)
def _copy_serial(index, offsets, data, starts, out):
    _copy_range(0, index.shape[1], index, offsets, data, starts, out)


# ---- the JSON text of every value of a column ------------------------------------------------------------------


def _dictionary_texts(dictionary: pa.Array) -> pa.Array:
    return pa.array([json_text(v) for v in dictionary.to_pylist()] + ["null"], _TEXT)


def _json_texts(values: Column) -> pa.Array:
    """The JSON text of every value of a column ("null" for nulls)."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if not isinstance(values, pa.Array):
        try:
            arrow = pa.array(values)
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
            arrow = None
        # Arrow makes [1, 2.5] doubles, and the id 1 would come back as 1.0: such a list is written value by value.
        if arrow is None or (pa.types.is_floating(arrow.type) and
                             any(v.__class__ is not float for v in values if v is not None)):
            return pa.array([json_text(v) for v in values], _TEXT)
        values = arrow
    kind = values.type
    if pa.types.is_null(kind):
        return pc.take(pa.array(["null"], _TEXT), pa.array(np.zeros(len(values), dtype=np.int32)))
    if pa.types.is_integer(kind) or pa.types.is_floating(kind):
        if pa.types.is_floating(kind):
            bad = pc.invert(pc.is_finite(values)).fill_null(False)
            if pc.any(bad).as_py():  # NaN and inf are not JSON: null, as orjson writes them
                values = pc.if_else(bad, pa.scalar(None, kind), values)
        texts = pc.cast(values, _TEXT)
        if pa.types.is_floating(kind):  # Arrow writes 1.0 as "1": a float stays a float, as orjson writes it
            whole = pc.match_substring_regex(texts, r"^-?[0-9]+$").fill_null(False)
            if pc.any(whole).as_py():
                point_zero = pc.binary_join_element_wise(texts, pa.scalar(".0", _TEXT), pa.scalar("", _TEXT))
                texts = pc.if_else(whole, point_zero, texts)
        return texts.fill_null("null")
    if is_text(kind) and not pc.any(pc.match_substring_regex(values, _NEEDS_ESCAPE)).as_py():
        quote, nothing = pa.scalar('"', _TEXT), pa.scalar("", _TEXT)
        quoted = pc.binary_join_element_wise(quote, pc.cast(values, _TEXT), quote, nothing)
        return quoted.fill_null("null")
    return pa.array([json_text(v) for v in values.to_pylist()], _TEXT)


def json_text(value: object) -> str:
    try:
        return orjson.dumps(value).decode()
    except orjson.JSONEncodeError:  # an integer beyond 64 bits (an id sent as 2^70 comes back as sent)
        return msgspec.json.encode(value).decode()
