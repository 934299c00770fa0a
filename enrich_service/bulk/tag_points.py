"""Tag points: a batch of points (JSON, a table, NDJSON lines) tagged with every requested layer."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

import pyarrow as pa

from ..engine.tagger import TagResult
from ..errors import InvalidInput
from ..index import ServiceIndex
from ..io import json_body, json_rows, results, tables
from ..io.dialect import check_date_format
from ..io.params import Param
from ..io.tables import Columns
from ..points import PointBatch, Prepared, prepare
from ..server.observability import count_points
from ..settings import Settings
from .operation import DATE_COL, ID_COL, PREFIX, BulkOperation, BulkParams, read_columns, read_prefix
from .options import Options, check_batch_size, merge_options, parse_options

Tagged = tuple[Prepared, TagResult]
PointParams = BulkParams[Columns]


def tag_batch(index: ServiceIndex, batch: PointBatch, opts: Options, cols: Columns) -> Tagged:
    prepared = prepare(batch, opts.crs, cols.lon, cols.lat)
    result = index.engine.tag(prepared.lon, prepared.lat, prepared.valid, opts.layers, opts.as_of, batch.dates,
                              opts.nearest_within_m)
    count_points(opts.layers, int(prepared.valid.sum()))
    return prepared, result


class TagPoints(BulkOperation[PointParams, PointBatch, Tagged]):
    options = json_body.OPTIONS
    params = (
        ID_COL,
        Param("lon_col", "Bulk bodies: the longitude / x column", default="lon"),
        Param("lat_col", "Bulk bodies: the latitude / y column", default="lat"),
        DATE_COL,
        Param("date_format", "Table bodies: strptime format of the dates, e.g. %m/%d/%Y (default: ISO YYYY-MM-DD)"),
        PREFIX,
    )

    def read_params(self, query: Mapping[str, str | None]) -> PointParams:
        prefix = read_prefix(query)
        columns = replace(read_columns(Columns, query), date_format=check_date_format(query["date_format"]))
        return PointParams(columns=columns, prefix=prefix)

    def from_json(self, body: bytes, params: PointParams, query_options: dict[str, str | None],
                  settings: Settings) -> tuple[Options, PointParams, PointBatch]:
        _check_no_date_format(params)
        raw, batch = json_body.decode_json(body, params.columns)
        opts = parse_options(merge_options(raw, query_options, settings), settings)
        check_batch_size(len(batch), settings)
        return opts, params, batch

    def reads(self, params: PointParams) -> tuple[str | None, ...]:
        return params.columns.lon, params.columns.lat, params.columns.date

    def from_table(self, table: pa.Table, params: PointParams) -> PointBatch:
        return tables.batch_from_table(table, params.columns)

    def from_lines(self, docs: list, params: PointParams) -> PointBatch:
        _check_no_date_format(params)
        return json_body.decode_points(docs, params.columns)

    def run(self, index: ServiceIndex, data: PointBatch, opts: Options, params: PointParams) -> Tagged:
        return tag_batch(index, data, opts, params.columns)

    def result_of(self, out: Tagged) -> TagResult:
        return out[1]

    def encode_json(self, index: ServiceIndex, data: PointBatch, out: Tagged) -> bytes | memoryview:
        return results.encode_json(results.id_list(data.ids, len(data)), *out, {})

    def encode_json_columns(self, index: ServiceIndex, data: PointBatch, out: Tagged) -> bytes:
        # A table's id column is written as it is (no Python object per id), as a JSON body's list is
        ids = data.ids if data.ids is not None else [None] * len(data)
        return results.encode_json_columns(ids, *out, {})

    def encode_lines(self, index: ServiceIndex, data: PointBatch, out: Tagged) -> memoryview:
        return json_rows.json_rows([("id", data.ids)] + results.result_arrays(*out), b"\n", tail=b"\n")

    def answer_table(self, table: pa.Table | None, data: PointBatch, out: Tagged, prefix: str) -> pa.Table:
        return results.answer_table(table, data.ids, *out, prefix)


def _check_no_date_format(params: PointParams) -> None:
    if params.columns.date_format:
        raise InvalidInput("date_format applies to table bodies (CSV, Arrow, GeoJSON); JSON dates are YYYY-MM-DD "
                           "or ISO timestamps", field="date_format")


TAG_POINTS = TagPoints()
