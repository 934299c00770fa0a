"""The result columns of a bulk answer, built once for every answer type: as Arrow arrays (keys and rules
dictionary-encoded) for Arrow, CSV and streamed JSON rows, as lists for JSON rows built per dict; the per-row error
list; and the input table with the results appended under the `prefix` rule."""

from __future__ import annotations

import functools
import re
import weakref
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
from numba import njit

from ..engine.rules import RULE_NAMES
from ..engine.tagger import TagResult
from ..errors import InvalidInput
from ..points import Prepared
from ..server.memory import paused_gc
from .json_body import dumps
from .json_rows import json_columns, json_rows, json_text, number_combinations

MAX_ROW_ERRORS_LISTED = 1000  # a JSON answer's `errors` list: each row's own `error` column has them all



def id_list(ids: Any, n: int) -> list:
    """The row ids as a Python list: as the body sent them (a list or an Arrow column), or n Nones."""
    return ids if isinstance(ids, list) else (ids.to_pylist() if ids is not None else [None] * n)

def row_errors(prepared: Prepared, result: TagResult | None) -> dict[int, str]:
    """row -> "field: message", for rows that were not (fully) tagged."""
    merged = dict(result.row_errors) if result is not None else {}
    merged.update(prepared.errors)  # an input error names the first cause
    return {row: f"{name}: {message}" for row, (name, message) in merged.items()}


def _index_type(size: int) -> type:
    # The narrowest index type that holds the dictionary: a byte per row for most layers.
    return np.int8 if size <= 127 else np.int16 if size <= 32767 else np.int32


def _dictionary_column(indices: np.ndarray, valid: np.ndarray, dictionary: pa.Array) -> pa.DictionaryArray:
    # Straight from the buffers: pa.array(..., mask=...) and the checked from_arrays each pass over the column again.
    # Every index is in range by construction, so the check is skipped.
    bitmap = pa.py_buffer(np.packbits(valid, bitorder="little"))
    arr = pa.Array.from_buffers(pa.from_numpy_dtype(indices.dtype), len(indices), [bitmap, pa.py_buffer(indices)])
    return pa.DictionaryArray.from_arrays(arr, dictionary, safe=False)


@njit(cache=True)
def _remap(codes, lookup, out):
    # Each row's feature code to its key's index, in one pass (numpy's take converts the codes to 64-bit first).
    # lookup[code + 1]: lookup[0] serves a row without a feature (-1), masked as null. No branch on the code: rows
    # with and without a feature alternate at random, and a branch mispredicted on every other row cost several
    # times the loop itself (docs/engine.md).
    for i in range(codes.shape[0]):
        out[i] = lookup[codes[i] + 1]


def sparse_arrow(n: int, values: dict[int, str]) -> pa.Array:
    """Rare per-row texts (flags, errors) as a dictionary column: a null costs a bit, not a 4-byte string offset."""
    distinct = sorted(set(values.values()))
    indices: np.ndarray = np.zeros(n, dtype=_index_type(len(distinct)))
    valid = np.zeros(n, dtype=bool)
    if values:
        rows = np.fromiter(values, dtype=np.int64, count=len(values))
        position = {text: i for i, text in enumerate(distinct)}
        indices[rows] = [position[text] for text in values.values()]
        valid[rows] = True
    return _dictionary_column(indices, valid, pa.array(distinct, type=pa.string()))


def none_for_nan(values: np.ndarray) -> list[float | None]:
    out = values.astype(object)
    out[np.isnan(values)] = None
    return out.tolist()


def sparse_list(n: int, values: dict[int, str]) -> list[str | None]:
    out: list[str | None] = [None] * n
    for row, value in values.items():
        out[row] = value
    return out


@functools.cache
def _rules() -> pa.Array:
    # Built on first use, not at import: pyarrow imports pandas on its first array (docs/engine.md), which a service
    # answering only single lookups never needs.
    return pa.array(RULE_NAMES.tolist()[1:], type=pa.string())  # "edge", "overlap", "nearest" (0 is null)


def result_arrays(prepared: Prepared, result: TagResult) -> list[tuple[str, pa.Array]]:
    """The result columns as Arrow arrays; keys and rules dictionary-encoded: cheap to build, compact to send."""
    n = len(prepared)
    out: list[tuple[str, pa.Array]] = []
    for name, tags in result.layers.items():
        uniq, inverse = np.unique(tags.dictionary.astype(str), return_inverse=True)
        indices: np.ndarray = np.empty(n, dtype=_index_type(len(uniq)))
        _remap(tags.codes, np.concatenate(([0], inverse)).astype(indices.dtype), indices)
        out.append((name, _dictionary_column(indices, tags.codes >= 0, pa.array(uniq))))
        rule_index = np.maximum(tags.rule - np.int8(1), np.int8(0))  # index into _rules(); rule 0 is null
        out.append((f"{name}_rule", _dictionary_column(rule_index, tags.rule != 0, _rules())))
        if tags.distance_m is not None:
            out.append((f"{name}_distance_m", pa.array(tags.distance_m, from_pandas=True)))
        if tags.version is not None:
            out.append((f"{name}_version", pa.array(tags.version, type=pa.string())))
    out.append(("flags", sparse_arrow(n, prepared.flags)))
    out.append(("error", sparse_arrow(n, row_errors(prepared, result))))
    return out


def result_lists(prepared: Prepared, result: TagResult) -> list[tuple[str, list]]:
    """The result columns as Python lists, for JSON."""
    n = len(prepared)
    out: list[tuple[str, list]] = []
    for name, tags in result.layers.items():
        out.append((name, tags.keys().tolist()))
        out.append((f"{name}_rule", tags.rule_names().tolist()))
        if tags.distance_m is not None:
            out.append((f"{name}_distance_m", none_for_nan(tags.distance_m)))
        if tags.version is not None:
            out.append((f"{name}_version", tags.version.tolist()))
    out.append(("flags", sparse_list(n, prepared.flags)))
    out.append(("error", sparse_list(n, row_errors(prepared, result))))
    return out


def error_list(ids: Any, prepared: Prepared, result: TagResult | None,
               limit: int = MAX_ROW_ERRORS_LISTED) -> list[dict]:
    """The rows not (fully) tagged, first cause first, as the JSON answer lists them (every row's `error` column
    says it too)."""
    merged = dict(result.row_errors) if result is not None else {}
    merged.update(prepared.errors)
    id_at = (lambda i: ids[i]) if isinstance(ids, list) else (
        (lambda i: ids[i].as_py()) if ids is not None else (lambda i: None))
    return [{"row": row, "id": id_at(row), "field": name, "detail": f"{name}: {message}"}
            for row, (name, message) in sorted(merged.items())[:limit]]


SMALL_ROWS = 5_000  # up to this many rows, small_json_rows writes a JSON answer's rows


def small_json_rows(ids: list, prepared: Prepared, result: TagResult) -> bytes | None:
    """The rows as json_rows writes them (the same bytes, tests/test_codecs.py), for a batch of up to SMALL_ROWS rows
    whose columns are all keys, rules, flags and errors: None for any other (distances, versions, float ids).

    json_rows is built for a million rows: Arrow makes each column's texts, a compiled kernel lays them out. Its
    fixed cost, a few dozen Arrow calls, was most of a 1,000-point batch's answer (1.2 ms of its ~2 ms in process)
    and, under the mixed load, the time a single lookup waited behind it. Here each layer's key texts are made once
    per index, rows with the same answer share one text, and bytes.join lays the rows out."""
    n = len(prepared)
    if not 0 < n <= SMALL_ROWS or any(t.distance_m is not None or t.version is not None
                                      for t in result.layers.values()):
        return None
    id_types = set(map(type, ids))
    if not id_types <= {int, str, bool, type(None)}:  # a float id: json_rows formats floats its own way
        return None
    # Each row's answer, numbered: the combination of its keys and rules. A row with a flag or an error gets its
    # answer's text with those two members written for it.
    combo, count = np.zeros(n, dtype=np.int64), 1
    texts: list[tuple[bytes, list[bytes], np.ndarray]] = []
    for name, tags in result.layers.items():
        keys = _key_texts(tags.dictionary)
        codes = np.where(tags.codes >= 0, tags.codes, len(keys) - 1)
        texts.append((b"," + orjson.dumps(name) + b":", keys, codes))
        texts.append((b"," + orjson.dumps(f"{name}_rule") + b":", _RULE_TEXTS, tags.rule.astype(np.int64)))
    for _, table, codes in texts:
        combo, count = number_combinations(combo, count, codes, len(table))
    first = np.empty(count, dtype=np.int64)
    first[combo] = np.arange(n, dtype=np.int64)  # one row standing for each answer
    answers = [b"".join(label + table[codes[row]] for label, table, codes in texts) for row in first.tolist()]
    plain = [answer + _NO_FLAG_NO_ERROR + _NEXT_ROW for answer in answers]
    parts: list = [None] * (2 * n)
    parts[0::2] = _id_texts(ids, id_types)
    parts[1::2] = map(plain.__getitem__, combo.tolist())
    for row, text in _odd_rows(prepared, result).items():
        parts[2 * row + 1] = answers[int(combo[row])] + text + _NEXT_ROW
    return b'{"id":' + b"".join(parts)[:-len(_NEXT_ROW)]


_NO_FLAG_NO_ERROR = b',"flags":null,"error":null}'
_NEXT_ROW = b',{"id":'


def _id_texts(ids: list, id_types: set) -> list[bytes]:
    if str not in id_types:  # numbers, booleans and nulls: their texts have no comma, one call writes them all
        try:
            return orjson.dumps(ids)[1:-1].split(b",")
        except orjson.JSONEncodeError:  # an integer beyond 64 bits
            pass
    return [json_text(v).encode() for v in ids]


def _odd_rows(prepared: Prepared, result: TagResult) -> dict[int, bytes]:
    """The flags and error members of the rows that have either."""
    errors = row_errors(prepared, result)
    return {row: b',"flags":' + (orjson.dumps(prepared.flags[row]) if row in prepared.flags else b"null")
            + b',"error":' + (orjson.dumps(errors[row]) if row in errors else b"null") + b"}"
            for row in sorted(set(prepared.flags) | set(errors))}


_RULE_TEXTS = [b"null"] + [orjson.dumps(name) for name in RULE_NAMES.tolist()[1:]]
_key_texts_cache: dict[int, tuple[Any, list[bytes]]] = {}


def _key_texts(dictionary: np.ndarray) -> list[bytes]:
    """A layer's keys as JSON texts (as result_arrays makes them: text), "null" last; made once per index."""
    cached = _key_texts_cache.get(id(dictionary))
    if cached is not None and cached[0]() is dictionary:
        return cached[1]
    texts = [orjson.dumps(key) for key in dictionary.astype(str).tolist()] + [b"null"]
    if len(_key_texts_cache) > 64:  # old indexes' entries, after reloads
        _key_texts_cache.clear()
    _key_texts_cache[id(dictionary)] = (weakref.ref(dictionary), texts)
    return texts


def _json_members(ids: Any, prepared: Prepared, result: TagResult, extra: dict) -> bytes:
    """The JSON answer's members after `results`, as one object."""
    return dumps({"count": len(prepared), "layers": result.layers_used(),
                  "errors": error_list(ids, prepared, result), **extra})


@paused_gc()
def encode_json_columns(ids: Any, prepared: Prepared, result: TagResult, extra: dict) -> bytes:
    """As encode_json, with `results` as {"id": [...], "<layer>": [...], ...}: the same columns and values."""
    rest = _json_members(ids, prepared, result, extra)
    return json_columns([("id", ids)] + result_arrays(prepared, result), head=b'{"results":',
                        tail=b"," + rest[1:])


@paused_gc()
def encode_json(ids: list, prepared: Prepared, result: TagResult, extra: dict) -> bytes | memoryview:
    rest = _json_members(ids, prepared, result, extra)
    small = small_json_rows(ids, prepared, result)
    if small is not None:
        return b'{"results":[' + small + b"]," + rest[1:]
    # The rows are written into the answer's own buffer, head and tail included: no copy of the whole answer at the end.
    return json_rows([("id", ids)] + result_arrays(prepared, result), b",", head=b'{"results":[',
                     tail=b"]," + rest[1:])


# Result columns named like an input column get this in front (the `prefix` option): inputs are never replaced.
COLLISION_PREFIX = "enrich_"
PREFIX_PATTERN = re.compile(r"^[A-Za-z0-9_]{1,32}$")


def check_prefix(prefix: object) -> str:
    if not isinstance(prefix, str) or not PREFIX_PATTERN.match(prefix):
        raise InvalidInput(f"prefix must be 1-32 letters, digits or underscores (got {prefix!r})", field="prefix")
    return prefix


def append_results(table: pa.Table, columns: list[tuple[str, pa.Array]], layers, prefix: str) -> pa.Table:
    """The input table, untouched, with the result columns appended. A result column named like an input column
    gets `prefix` in front (again until the name is free): the caller's own `zip` stays, the zip layer's answer is
    `enrich_zip`, and a layer that moves keeps its companions together (`enrich_zip_rule`, ...)."""
    taken = set(table.column_names)
    moved = [layer for layer in layers if layer in taken]
    for name, arr in columns:
        out = name
        if any(name == layer or name.startswith(f"{layer}_") for layer in moved):
            out = prefix + name
        while out in taken:
            out = prefix + out
        taken.add(out)
        table = table.append_column(out, arr)
    return table


def id_column(ids: Any) -> pa.Array:
    """A JSON batch's ids as a column: typed as they are, or, when they mix types Arrow cannot put in one column
    (1 and "a", 1 and true) or hold (2^70), as text, each id as JSON writes it (null stays null)."""
    try:
        return pa.array(ids)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
        return pa.array([v if v is None or v.__class__ is str else dumps(v).decode() for v in ids],
                        pa.string())


def answer_table(table: pa.Table | None, ids: Any, prepared: Prepared, result: TagResult,
                 prefix: str = COLLISION_PREFIX) -> pa.Table:
    """The input table (or just the ids) with the result columns appended; no input column is replaced."""
    if table is None:
        table = pa.table({"id": id_column(ids)})
    return append_results(table, result_arrays(prepared, result), result.layers, prefix)
