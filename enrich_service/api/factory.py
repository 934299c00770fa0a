"""The endpoint factory: a bulk operation (bulk/) becomes its POST route, in the manner of titiler's factories.

One pipeline for every operation: negotiate the two media types, then either stream NDJSON from a spooled body, or
read the body, decode it (the operation's JSON reader, or the registered table format), run the operation off the
event loop, and encode the answer in the negotiated type. Every option is checked before a streamed answer starts.
"""

from __future__ import annotations

import functools
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, replace
from typing import Annotated, Any

import orjson
import pyarrow as pa
from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel
from starlette.responses import Response

from ..bulk.operation import ID_COL, BulkOperation
from ..bulk.options import (
    OPTION_PARAMS,
    Options,
    QueryOptions,
    check_batch_size,
    check_options_usable,
    merge_options,
    parse_options,
)
from ..errors import EnrichError, InvalidInput
from ..index import ServiceIndex, current
from ..io import coordinates, formats, geojson, json_body, multipart, tables
from ..io.formats import ANSWER_PARAMS, COLUMNS, FORMAT_PARAMS, FORMATS, SHAPE, Format
from ..io.media import GEOJSON, JSON, MULTIPART
from ..io.ndjson import has_lines, line_groups, parse_lines
from ..points import WGS84
from ..server.cancellation import raise_if_cancelled
from ..settings import Settings, get_settings
from .common import declared, offload, query_options, read_body, read_query, route_query_names, spool_body
from .schemas import ERROR_RESPONSES, inline_schema

CHUNK_ROWS = 50_000  # NDJSON rows answered per step: memory stays bounded whatever the body's size


class Stages:
    """Where a bulk request's time went, sent as its Server-Timing header (read, decode, tag, encode): each stage's
    wall time, and the process's CPU time over it in `desc` (the engine's threads included), so a client or a
    benchmark sees the server's share of a request without a profiler. Two clock reads per stage."""

    def __init__(self) -> None:
        self._parts: list[str] = []
        self._wall, self._cpu = time.perf_counter(), time.process_time()

    def mark(self, name: str) -> None:
        wall, cpu = time.perf_counter(), time.process_time()
        self._parts.append(f'{name};dur={(wall - self._wall) * 1000:.1f};desc="cpu {(cpu - self._cpu) * 1000:.1f}"')
        self._wall, self._cpu = wall, cpu

    def header(self) -> dict[str, str]:
        return {"Server-Timing": ", ".join(self._parts)}


def add_bulk_route(router: APIRouter, path: str, op: BulkOperation, *, name: str, summary: str,
                   json_request: type[BaseModel], response_model: type[BaseModel]) -> None:
    """Register POST `path` for `op`: its query parameters and a request body per registered media type."""
    openapi = declared(*(OPTION_PARAMS[option] for option in op.options), *op.params, *FORMAT_PARAMS, *ANSWER_PARAMS)
    openapi["requestBody"] = {"required": True, "content": {
        media_type: {"schema": inline_schema(json_request) if media_type == JSON else fmt.body_schema}
        for media_type, fmt in FORMATS.items()}}
    openapi["requestBody"]["content"][MULTIPART] = {"schema": multipart.FORM_SCHEMA}

    async def endpoint(request: Request, options: Annotated[QueryOptions, Depends(query_options)]) -> Response:
        return await answer_bulk(request, op, options)

    router.add_api_route(path, endpoint, methods=["POST"], name=name, summary=summary, response_model=response_model,
                         responses=ERROR_RESPONSES, openapi_extra=openapi)


async def answer_bulk(request: Request, op: BulkOperation, options: QueryOptions) -> Response:
    """One bulk request through `op`: every check that can fail runs before the body is read where it can, and
    every step that costs CPU runs in a worker thread (offload: a timed-out request stops its work)."""
    settings = get_settings()
    index = current(request.app)
    op.check_ready(index)
    stages = Stages()
    # A browser form or curl -F: the file is the body, and the form's fields are parameters like the query's.
    upload, content_type, kind, query = await multipart.unwrap(
        request.headers.get("content-type"), functools.partial(read_body, request, settings),
        request.query_params, route_query_names(request))
    if upload is not None:
        options = QueryOptions({name: query.get(name) for name in options.given})
    body = upload.data if upload is not None else None
    if kind == JSON:  # GeoJSON sent as application/json, as many tools do
        body = body if body is not None else await read_body(request, settings)
        if geojson.looks_like_geojson(body):
            kind = GEOJSON
    accept = request.headers.get("accept")
    body_format, answer = FORMATS[kind], FORMATS[formats.response_type(accept, kind)]
    shape = formats.json_shape(accept, answer.media_type, query.get(SHAPE.name))
    params = op.read_params(read_query(query, op.params))

    if body_format.streamed:  # every option checked before the status line goes out
        opts = options.parsed(settings)
        check_options_usable(index, opts)
        spool = await spool_body(request, settings)
        if not await offload(has_lines, spool):  # an empty batch, as in every other transport: 422 before any answer
            spool.close()
            check_batch_size(0, settings, field="body", noun=op.row_noun)
        chunk = functools.partial(_answer_lines, op, index, opts, params)
        return answer.response(_stream(spool, chunk, settings), headers=op.stream_headers(index))

    parsed: Options | None = None
    if body_format.decode_table is not None:  # a JSON body brings options of its own: checked once decoded
        parsed = options.parsed(settings)
        check_options_usable(index, parsed)
    body = body if body is not None else await read_body(request, settings)
    if blank(body):  # said as such, not as each decoder's own complaint about no input ("truncated", "no schema")
        check_batch_size(0, settings, field="body", noun=op.row_noun)
    stages.mark("read")
    job = BulkJob(op, index, [body], body_format, answer, shape, content_type, query, params, options, parsed, settings,
                  stages, upload)
    del body  # the job's alone: dropped once decoded
    return await offload(run_job, job)


def blank(body: bytes) -> bool:
    """Nothing but whitespace, after a byte order mark if any (the first bytes looked at first: a body is rarely
    blank)."""
    body = json_body.without_bom(body)
    return not bytes(body[:64]).strip() and not bytes(body).strip()


@dataclass
class BulkJob:
    """A bulk request whose body has been read, negotiated and checked as far as it can be before decoding."""

    op: BulkOperation
    index: ServiceIndex
    body: list  # [the body]: run_job takes it out, so a large body's memory is free before the answer is made
    body_format: Format
    answer: Format
    shape: str
    content_type: str | None
    query: Mapping[str, Any]
    params: Any
    options: QueryOptions
    opts: Options | None  # parsed already for a table body; a JSON body's come with it
    settings: Settings
    stages: Stages
    upload: multipart.Upload | None = None


def run_job(job: BulkJob) -> Response:
    """Decode, tag and encode in one thread hop (offload): a hop per step cost more than decoding, tagging and
    encoding a 1,000-point batch together (docs/operations.md, "Load"). The route and the fast POST path
    (api/pip.post_pip_fast) both answer through here."""
    op, index, answer, params, opts = job.op, job.index, job.answer, job.params, job.opts
    body = job.body.pop()
    table = None
    if job.body_format.decode_table is None:  # a JSON body: its own options, each one it leaves out from the query
        opts, params, data = op.from_json(body, params, job.options.only(op.options), job.settings)
    else:
        table = job.body_format.decode_table(body, job.content_type, **read_query(job.query, job.body_format.params))
        check_batch_size(table.num_rows, job.settings, field="body", noun=op.row_noun)
        declared_crs = coordinates.declared_crs(table)  # an old-style GeoJSON `crs` member
        if declared_crs and "crs" in op.options:
            opts = parse_options(merge_options({"crs": declared_crs}, job.options.given, job.settings), job.settings)
        params = replace(params, columns=_table_columns(table, params.columns, job.query))
        tables.check_answerable(table, answer.media_type, params.columns.id, op.reads(params))
        data = op.from_table(table, params)
    del body
    assert opts is not None  # parsed before the job for a table body, from it for a JSON body
    job.stages.mark("decode")
    raise_if_cancelled()  # a timed-out request stops between steps, as it did between thread hops
    out = op.run(index, data, opts, params)
    job.stages.mark("tag")
    raise_if_cancelled()
    headers = op.headers(index, out)
    upload = job.upload
    if upload is not None and (disposition := multipart.content_disposition(upload.filename, answer.media_type)):
        headers["Content-Disposition"] = disposition
    encoded: bytes | memoryview | list[memoryview]
    if answer.encode_table is None:  # JSON
        encoded = (op.encode_json_columns if job.shape == COLUMNS else op.encode_json)(index, data, out)
    else:
        answer_table = op.answer_table(table, data, out, params.prefix)
        if answer.media_type == GEOJSON:
            points = op.answer_points(table, answer_table, params)
            if points is not None:  # None: a GeoJSON body's own points, or none (the encoder refuses: 406)
                crs = None if opts.crs == WGS84 or "crs" not in op.options else str(opts.crs)
                answer_table = coordinates.with_geometry(answer_table, *points, crs=crs)
        encoded = answer.encode_table(answer_table)
    job.stages.mark("encode")
    return answer.response(encoded, headers={**headers, **job.stages.header()})


def _table_columns(table: pa.Table, cols: Any, query: Mapping[str, str | None]) -> Any:
    """The columns a table body is read by: its date column, and the coordinate columns (as named, a GeoJSON
    body's geometry, or found by their usual names: coordinates.py)."""
    id_col = query.get("id_col")
    # A name other than the default that names no column is a mistake: the rows would come back without their ids.
    # The default may name none (the client always sends it): the rows are then keyed by their order.
    if id_col and id_col != ID_COL.default and id_col not in table.column_names:
        raise InvalidInput(f"id_col names column {id_col!r}, which is not in the body (columns: "
                           f"{table.column_names})", field="id_col")
    lon, lat = coordinates.table_coordinates(table, query.get("lon_col"), query.get("lat_col"))
    return replace(cols, date=tables.date_column(table, cols.date), lon=lon, lat=lat)


def _answer_lines(op: BulkOperation, index: ServiceIndex, opts: Options, params: Any, lines: list[bytes],
                  first_row: int) -> bytes | memoryview:
    docs, bad = parse_lines(lines, first_row)
    data = op.from_lines(docs, params)
    data.errors.update(bad)
    return op.encode_lines(index, data, op.run(index, data, opts, params))


async def _stream(spool, answer_chunk: Callable[[list[bytes], int], bytes | memoryview],
                  settings: Settings) -> AsyncIterator[bytes | memoryview]:
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
