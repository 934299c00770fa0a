"""A bulk operation, declared once: its query parameters, how a JSON body, a decoded table and a group of NDJSON
lines become its input, what it runs, and how its answer is written. api/factory.py turns one into its POST route,
OpenAPI bodies and NDJSON stream; the table formats come from io/formats.py, so a new format changes nothing here.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, ClassVar, Generic, Protocol, TypeVar

import orjson
import pyarrow as pa

from ..engine.tagger import TagResult
from ..index import ServiceIndex
from ..io.coordinates import geometry_meta
from ..io.params import Param
from ..io.results import COLLISION_PREFIX, check_prefix
from ..settings import Settings
from .options import Options


class ColumnNames(Protocol):
    """The input columns an operation reads (a dataclass: each field `f` is named by a query parameter `f_col`);
    every operation has an id column and may have a date column."""

    __dataclass_fields__: ClassVar[dict[str, Any]]

    @property
    def id(self) -> str: ...

    @property
    def date(self) -> str | None: ...


C = TypeVar("C", bound=ColumnNames)


@dataclass(frozen=True)
class BulkParams(Generic[C]):
    """The query parameters of a bulk request other than the options: which columns to read, and the `prefix` put in
    front of a result column named like an input column."""

    columns: C
    prefix: str


P = TypeVar("P", bound=BulkParams)
In = TypeVar("In")
Out = TypeVar("Out")

ID_COL = Param("id_col", "Bulk bodies: the id column", default="id")
DATE_COL = Param("date_col", "Bulk bodies: the date column (default: a column named date, if any)")
PREFIX = Param("prefix", "CSV/Arrow answers: put in front of a result column named like an input column; input "
                         "columns are never replaced", default=COLLISION_PREFIX)


class BulkOperation(ABC, Generic[P, In, Out]):
    """decode (from_json | from_table | from_lines) -> run -> encode (encode_json | encode_json_columns |
    answer_table | encode_lines).

    The input (`In`) carries per-row errors in `.errors` (row -> (field, message)): NDJSON lines that are not JSON
    are added there, and answered as rows like the others."""

    options: tuple[str, ...]  # which of the request options it takes (bulk/options.py)
    params: tuple[Param, ...]  # its own query parameters, `prefix` among them
    row_noun = "point"  # what one row of its input is, for messages ("send at least one point")

    def check_ready(self, index: ServiceIndex) -> None:
        """Refuse before the body is read (e.g. 503: nothing to answer with)."""

    @abstractmethod
    def read_params(self, query: Mapping[str, str | None]) -> P:
        """The parameters from the query (every declared one present, its default where absent)."""

    @abstractmethod
    def from_json(self, body: bytes, params: P, query_options: dict[str, str | None],
                  settings: Settings) -> tuple[Options, P, In]:
        """A JSON body: its options (those it leaves out from the query string), the parameters it may set, its
        input; the batch size checked."""

    @abstractmethod
    def reads(self, params: P) -> tuple[str | None, ...]:
        """The table columns the operation interprets (validated before any work)."""

    @abstractmethod
    def from_table(self, table: pa.Table, params: P) -> In: ...

    @abstractmethod
    def from_lines(self, docs: list, params: P) -> In:
        """A group of NDJSON lines, each parsed (None where it is not JSON)."""

    @abstractmethod
    def run(self, index: ServiceIndex, data: In, opts: Options, params: P) -> Out: ...

    @abstractmethod
    def result_of(self, out: Out) -> TagResult: ...

    def headers(self, index: ServiceIndex, out: Out) -> dict[str, str]:
        return {"X-Enrich-Layers": orjson.dumps(self.result_of(out).layers_used()).decode(),
                **self.stream_headers(index)}

    def stream_headers(self, index: ServiceIndex) -> dict[str, str]:
        """Headers known before any row is answered (an NDJSON answer sends them first)."""
        return {}

    @abstractmethod
    def encode_json(self, index: ServiceIndex, data: In, out: Out) -> bytes | memoryview: ...

    @abstractmethod
    def encode_json_columns(self, index: ServiceIndex, data: In, out: Out) -> bytes | memoryview:
        """The JSON answer with `results` as one array per column (shape=columns); the other members as
        encode_json writes them."""

    @abstractmethod
    def encode_lines(self, index: ServiceIndex, data: In, out: Out) -> bytes | memoryview: ...

    @abstractmethod
    def answer_table(self, table: pa.Table | None, data: In, out: Out, prefix: str) -> pa.Table:
        """The input table (or the ids, for a JSON body), untouched, with the answer's columns appended."""

    def answer_points(self, table: pa.Table | None, answer: pa.Table, params: P) -> tuple[str, str] | None:
        """The answer table's columns holding each row's point, for a GeoJSON answer (None: the body's own, or
        none): the input's coordinate columns, unless the operation makes the points."""
        cols = params.columns
        lon, lat = str(getattr(cols, "lon", "")), str(getattr(cols, "lat", ""))
        if table is None or geometry_meta(table) is not None or not {lon, lat} <= set(table.column_names):
            return None
        return lon, lat


def read_prefix(query: Mapping[str, str | None]) -> str:
    return check_prefix(query[PREFIX.name])


def read_columns(kind: type[C], query: Mapping[str, str | None]) -> C:
    """The column names from their parameters: field `lon` from `lon_col`, and so on."""
    return kind(**{f.name: query[f"{f.name}_col"] for f in fields(kind) if f"{f.name}_col" in query})
