"""Point-in-polygon: GET for one point (GIS staff), POST for batches in JSON, Arrow, CSV or streamed NDJSON."""

from __future__ import annotations

import dataclasses
import functools
from typing import Annotated

import numpy as np
import orjson
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response

from ..bulk import tag_points
from ..bulk.options import Options, check_batch_size, check_options_usable, merge_options, parse_options
from ..errors import InvalidInput
from ..index import ServiceIndex, current
from ..io import arrow, csv_text, formats, json_body, json_rows, results, tables
from ..io.ndjson import has_lines, parse_lines
from ..io.responses import ARROW, CSV, JSON, NDJSON, JSONResponse, NDJSONResponse
from ..io.tables import Columns
from ..points import PointBatch
from ..settings import get_settings
from .common import offload, read_body, spool_body, strict_query
from .ndjson import answer_stream
from .schemas import ERROR_RESPONSES, PipRequest, PipResponse, PointAnswer, inline_schema

router = APIRouter(prefix="/v1", tags=["point in polygon"], dependencies=[Depends(strict_query)])

_BULK_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            JSON: {"schema": inline_schema(PipRequest)},
            ARROW: {"schema": {"type": "string", "format": "binary"}},
            CSV: {"schema": {"type": "string"}},
            NDJSON: {"schema": {"type": "string"}},
        },
    }
}


def _query_param(name: str, schema: dict, description: str, required: bool = False, example=None) -> dict:
    param = {"name": name, "in": "query", "required": required, "schema": schema, "description": description}
    if example is not None:
        param["example"] = example
    return param


# The single lookup reads its query itself, like the bulk bodies: FastAPI's per-parameter validation cost more CPU
# than the lookup (about 200 us of ~700 us per request), and single lookups are what GIS tools call in bursts.
# The parameters are declared here for OpenAPI; parse_options and _required_number check them and name the field.
_SINGLE_PARAMS = {"parameters": [
    _query_param("lon", {"type": "number"}, "Longitude (or x in `crs`)", True, -117.1627),
    _query_param("lat", {"type": "number"}, "Latitude (or y in `crs`)", True, 32.7167),
    _query_param("layers", {"type": "string"}, "Comma-separated layer names"),
    _query_param("as_of", {"type": "string", "format": "date"}, "YYYY-MM-DD: the layer versions in force that day"),
    _query_param("crs", {"type": "string"}, "e.g. EPSG:2230; default EPSG:4326"),
    _query_param("nearest_within_m", {"type": "number", "minimum": 0, "maximum": 5000},
                 "Outside every polygon: the nearest within this many metres"),
]}


def _required_number(query, name: str) -> float:
    text = query.get(name)
    if text is None or text == "":
        raise InvalidInput(f"{name} is required", field=name)
    try:
        return float(text)
    except ValueError:
        raise InvalidInput(f"{name}: {text[:100]!r} is not a number", field=name) from None


@router.get("/pip", response_model=PointAnswer, responses=ERROR_RESPONSES, openapi_extra=_SINGLE_PARAMS,
            summary="Tag one point with every requested layer")
async def get_pip(request: Request):
    query = request.query_params
    lon, lat = _required_number(query, "lon"), _required_number(query, "lat")
    settings = get_settings()
    index = current(request.app)
    opts = parse_options({name: query.get(name) for name in json_body.OPTIONS}, settings)
    batch = PointBatch(ids=[None], x=np.array([lon], dtype=float), y=np.array([lat], dtype=float))
    if opts.nearest_within_m is None:
        # One point through the grid takes microseconds: answered on the event loop, since a hop to the threadpool
        # costs more than the lookup (bench/load.py: about 200 us of CPU per request on this machine).
        prepared, result = tag_points.tag_batch(index, batch, opts, Columns())
    else:  # a nearest-polygon search waits for the exact index, which a large batch may be holding
        prepared, result = await offload(tag_points.tag_batch, index, batch, opts, Columns())
    if not prepared.valid[0]:
        name, message = prepared.errors.get(0, ("lon", "not a finite number"))
        raise InvalidInput(f"{name}: {message}", field=name)
    answer: dict = {"lon": float(prepared.lon[0]), "lat": float(prepared.lat[0])}
    labels, rules, details, distances = {}, {}, {}, {}
    for name, tags in result.layers.items():
        code = int(tags.codes[0])
        answer[name] = tags.dictionary[code] if code >= 0 else None
        labels[name] = tags.labels[code] if code >= 0 else None
        details[name] = tags.fields[code] if code >= 0 else {}
        rules[name] = tags.rule_names()[0]
        if tags.distance_m is not None:
            distances[name] = None if np.isnan(tags.distance_m[0]) else float(tags.distance_m[0])
    answer.update(labels=labels, rules=rules, details=details,
                  flags=prepared.flags[0].split(",") if 0 in prepared.flags else [], layers=result.layers_used())
    if opts.nearest_within_m is not None:
        answer["distance_m"] = distances
    return JSONResponse(answer)


@router.post("/pip", response_model=PipResponse, responses=ERROR_RESPONSES, openapi_extra=_BULK_BODY,
             summary="Tag a batch of points (JSON, Arrow IPC stream, CSV or NDJSON)")
async def post_pip(
    request: Request,
    layers: Annotated[str | None, Query(description="Bulk bodies: comma-separated layer names")] = None,
    as_of: Annotated[str | None, Query(description="Bulk bodies: YYYY-MM-DD")] = None,
    crs: Annotated[str | None, Query(description="Bulk bodies: CRS of the coordinates")] = None,
    nearest_within_m: Annotated[float | None, Query(ge=0, le=5000)] = None,
    id_col: Annotated[str, Query(description="Bulk bodies: the id column")] = "id",
    lon_col: Annotated[str, Query(description="Bulk bodies: the longitude / x column")] = "lon",
    lat_col: Annotated[str, Query(description="Bulk bodies: the latitude / y column")] = "lat",
    date_col: Annotated[str | None, Query(description="Bulk bodies: the date column (default: a column named "
                                                       "date, if any)")] = None,
    prefix: Annotated[str, Query(description="CSV/Arrow answers: put in front of a result column named like an "
                                             "input column; input columns are never replaced")] =
    results.COLLISION_PREFIX,
):
    settings = get_settings()
    prefix = results.check_prefix(prefix)
    index = current(request.app)
    kind = formats.media_type(request.headers.get("content-type"))
    answer_kind = formats.response_type(request.headers.get("accept"), kind)
    cols = Columns(id=id_col, lon=lon_col, lat=lat_col, date=date_col)
    query = {"layers": layers, "as_of": as_of, "crs": crs, "nearest_within_m": nearest_within_m}

    if kind == NDJSON:  # every option checked before the status line goes out
        opts = parse_options(query, settings)
        check_options_usable(index, opts)
        spool = await spool_body(request, settings)
        if not await offload(has_lines, spool):  # an empty batch, as in every other transport: 422 before any answer
            spool.close()
            check_batch_size(0, settings, field="body")
        chunk = functools.partial(_ndjson_chunk, index, opts=opts, cols=cols)
        return NDJSONResponse(answer_stream(spool, chunk, settings))

    if kind != JSON:
        opts = parse_options(query, settings)
        check_options_usable(index, opts)
    body = await read_body(request, settings)
    if kind == JSON:
        raw, batch = await offload(json_body.decode_json, body, cols)
        # The body's options; one it leaves out may come from the query string.
        opts = parse_options(merge_options(raw, {k: query[k] for k in json_body.OPTIONS}, settings), settings)
        check_batch_size(len(batch), settings)
        table = None
    else:
        charset = csv_text.csv_charset(request.headers.get("content-type")) if kind == CSV else None
        table = await offload(arrow.decode_arrow, body) if kind == ARROW else \
            await offload(csv_text.decode_csv, body, charset)
        check_batch_size(table.num_rows, settings, field="body")
        cols = dataclasses.replace(cols, date=tables.date_column(table, cols.date))
        tables.check_answerable(table, answer_kind, cols.id, (cols.lon, cols.lat, cols.date))
        batch = await offload(tables.batch_from_table, table, cols)
    del body
    prepared, result = await offload(tag_points.tag_batch, index, batch, opts, cols)
    layers_header = orjson.dumps(result.layers_used()).decode()

    if answer_kind == JSON:
        ids = batch.ids if isinstance(batch.ids, list) else (
            batch.ids.to_pylist() if batch.ids is not None else [None] * len(batch))
        payload = await offload(results.encode_json, ids, prepared, result, {})
        return Response(payload, media_type=JSON, headers={"X-Enrich-Layers": layers_header})
    out = await offload(results.answer_table, table, batch.ids, prepared, result, prefix)
    encode = arrow.encode_arrow if answer_kind == ARROW else csv_text.encode_csv
    return Response(await offload(encode, out), media_type=answer_kind, headers={"X-Enrich-Layers": layers_header})


def _ndjson_chunk(index: ServiceIndex, lines: list[bytes], first_row: int, opts: Options, cols: Columns) -> bytes:
    docs, bad = parse_lines(lines, first_row)
    batch = json_body.decode_points(docs, cols)
    batch.errors.update(bad)
    prepared, result = tag_points.tag_batch(index, batch, opts, cols)
    return json_rows.json_rows([("id", batch.ids)] + results.result_arrays(prepared, result), b"\n",
                            tail=b"\n")
