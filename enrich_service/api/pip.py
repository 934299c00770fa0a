"""Point-in-polygon: GET for one point (GIS staff), POST for batches in JSON, Arrow, CSV or streamed NDJSON."""

from __future__ import annotations

import dataclasses
import functools
from typing import Annotated, Any

import numpy as np
import orjson
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response

from ..bulk import tag_points
from ..bulk.options import Options, check_batch_size, check_options_usable, merge_options, parse_options
from ..errors import InvalidInput, NotAcceptable
from ..index import ServiceIndex, current
from ..io import coordinates, formats, geojson, json_body, json_rows, multipart, results, tables
from ..io.dialect import Dialect
from ..io.media import GEOJSON, MULTIPART
from ..io.ndjson import has_lines, parse_lines
from ..io.responses import ARROW, CSV, JSON, NDJSON, JSONResponse, NDJSONResponse
from ..io.tables import Columns
from ..points import WGS84, PointBatch
from ..settings import get_settings
from .common import offload, read_body, route_query_names, spool_body, strict_query
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
            GEOJSON: {"schema": {"type": "object", "description": "A FeatureCollection of Points"}},
            MULTIPART: {"schema": {"type": "object", "properties": {"file": {"type": "string", "format": "binary"}},
                                   "required": ["file"]}},
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
             summary="Tag a batch of points (JSON, GeoJSON, Arrow IPC stream, CSV, NDJSON, or a form upload)")
async def post_pip(
    request: Request,
    layers: Annotated[str | None, Query(description="Bulk bodies: comma-separated layer names")] = None,
    as_of: Annotated[str | None, Query(description="Bulk bodies: YYYY-MM-DD")] = None,
    crs: Annotated[str | None, Query(description="Bulk bodies: CRS of the coordinates")] = None,
    nearest_within_m: Annotated[float | None, Query(ge=0, le=5000)] = None,
    id_col: Annotated[str, Query(description="Bulk bodies: the id column (none: ids are row numbers)")] = "id",
    lon_col: Annotated[str | None, Query(description="Bulk bodies: the longitude / x column (default: lon, else "
                                                      "the one named lng, long, longitude or x in any case)")] = None,
    lat_col: Annotated[str | None, Query(description="Bulk bodies: the latitude / y column (default: lat, else "
                                                      "the one named latitude or y in any case)")] = None,
    date_col: Annotated[str | None, Query(description="Bulk bodies: the date column (default: a column named "
                                                       "date, if any)")] = None,
    date_format: Annotated[str | None, Query(description="Table bodies: strptime format of the dates, e.g. "
                                                          "%m/%d/%Y (default: ISO YYYY-MM-DD)")] = None,
    delimiter: Annotated[str | None, Query(description="CSV bodies: comma, semicolon, tab or pipe (default: "
                                                        "sniffed)")] = None,
    prefix: Annotated[str, Query(description="CSV/Arrow answers: put in front of a result column named like an "
                                             "input column; input columns are never replaced")] =
    results.COLLISION_PREFIX,
):
    settings = get_settings()
    index = current(request.app)
    content_type = request.headers.get("content-type")
    params: dict[str, Any] = {"layers": layers, "as_of": as_of, "crs": crs, "nearest_within_m": nearest_within_m, "id_col": id_col,
              "lon_col": lon_col, "lat_col": lat_col, "date_col": date_col, "date_format": date_format,
              "delimiter": delimiter, "prefix": prefix}
    # A browser form or curl -F: the file, and options as form fields.
    upload, content_type, kind, params = await multipart.unwrap(
        content_type, functools.partial(read_body, request, settings), params, route_query_names(request))
    prefix = results.check_prefix(params["prefix"])
    dialect = Dialect.of(params["delimiter"], params["date_format"], kind)
    cols = Columns(id=params["id_col"] or "id", lon=params["lon_col"] or "lon", lat=params["lat_col"] or "lat",
                   date=params["date_col"])
    query = {name: params[name] for name in json_body.OPTIONS}

    if kind == NDJSON:  # every option checked before the status line goes out
        formats.response_type(request.headers.get("accept"), kind)
        opts = parse_options(query, settings)
        check_options_usable(index, opts)
        spool = await spool_body(request, settings)
        if not await offload(has_lines, spool):  # an empty batch, as in every other transport: 422 before any answer
            spool.close()
            check_batch_size(0, settings, field="body")
        chunk = functools.partial(_ndjson_chunk, index, opts=opts, cols=cols)
        return NDJSONResponse(answer_stream(spool, chunk, settings))

    body = upload.data if upload else await read_body(request, settings)
    if kind == JSON and geojson.looks_like_geojson(body):  # GeoJSON sent as application/json, as many tools do
        kind = GEOJSON
    answer_kind = formats.response_type(request.headers.get("accept"), kind)
    if kind == JSON:
        if answer_kind == GEOJSON:
            raise NotAcceptable(f"a {GEOJSON} answer needs the points as a table: send GeoJSON, CSV or Arrow",
                                field="Accept")
        raw, batch = await offload(json_body.decode_json, body, cols)
        # The body's options; one it leaves out may come from the query string.
        opts = parse_options(merge_options(raw, query, settings), settings)
        check_batch_size(len(batch), settings)
        table = None
    else:
        opts = parse_options(query, settings)
        check_options_usable(index, opts)
        table = await offload(formats.decode_table, kind, body, content_type, dialect.delimiter)
        check_batch_size(table.num_rows, settings, field="body")
        declared = coordinates.declared_crs(table)  # an old-style GeoJSON `crs` member
        if declared:
            opts = parse_options(merge_options({"crs": declared}, query, settings), settings)
        lon, lat = coordinates.table_coordinates(table, params["lon_col"], params["lat_col"])
        cols = dataclasses.replace(cols, lon=lon, lat=lat, date=tables.date_column(table, cols.date),
                                   date_format=dialect.date_format)
        tables.check_answerable(table, answer_kind, cols.id, (cols.lon, cols.lat, cols.date))
        batch = await offload(tables.batch_from_table, table, cols)
    del body
    prepared, result = await offload(tag_points.tag_batch, index, batch, opts, cols)
    headers = {"X-Enrich-Layers": orjson.dumps(result.layers_used()).decode()}
    if upload and (disposition := multipart.content_disposition(upload.filename, answer_kind)):
        headers["Content-Disposition"] = disposition

    if answer_kind == JSON:
        ids = batch.ids if isinstance(batch.ids, list) else (
            batch.ids.to_pylist() if batch.ids is not None else [None] * len(batch))
        payload = await offload(results.encode_json, ids, prepared, result, {})
        return Response(payload, media_type=JSON, headers=headers)
    out = await offload(results.answer_table, table, batch.ids, prepared, result, prefix)
    if answer_kind == GEOJSON and table is not None and coordinates.geometry_meta(table) is None:
        out = coordinates.with_geometry(out, cols.lon, cols.lat, crs=None if opts.crs == WGS84 else str(opts.crs))
    encode = formats.FORMATS[answer_kind].encode_table
    assert encode is not None  # every answer type but JSON and NDJSON is a table format
    return Response(await offload(encode, out), media_type=answer_kind, headers=headers)


def _ndjson_chunk(index: ServiceIndex, lines: list[bytes], first_row: int, opts: Options, cols: Columns) -> bytes:
    docs, bad = parse_lines(lines, first_row)
    batch = json_body.decode_points(docs, cols)
    batch.errors.update(bad)
    prepared, result = tag_points.tag_batch(index, batch, opts, cols)
    return json_rows.json_rows([("id", batch.ids)] + results.result_arrays(prepared, result), b"\n",
                            tail=b"\n")
