"""Geocode-join: addresses to places, tagged with the boundary layers in the same call.

POST /v1/geocode-join takes JSON records, an Arrow IPC stream or CSV (columns named by query parameters), or
streamed NDJSON lines; GET /v1/geocode answers one address for GIS staff.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from ..bulk.options import Options, check_batch_size, check_options_usable, merge_options, parse_options
from ..errors import InvalidInput
from ..geocode import join
from ..geocode.join import AddressColumns, Records
from ..geocode.matcher import LEVELS
from ..index import ServiceIndex, current
from ..io import coordinates, formats, geojson, json_body, multipart, results, tables
from ..io.dialect import Dialect
from ..io.media import GEOJSON, MULTIPART
from ..io.ndjson import has_lines, parse_lines
from ..io.responses import ARROW, CSV, JSON, NDJSON, JSONResponse, NDJSONResponse
from ..settings import get_settings
from .common import offload, read_body, route_query_names, spool_body, strict_query
from .ndjson import answer_stream
from .schemas import ERROR_RESPONSES, LAYER_EXAMPLE, LayerUsed, RowError, inline_schema

router = APIRouter(prefix="/v1", tags=["geocode"], dependencies=[Depends(strict_query)])

REFERENCE_HEADER = "X-Enrich-Geocode-Reference"
MIN_MATCH_DOC = (f"The coarsest match level to tag ({', '.join(join.TAGGED_LEVELS)}): coarser matches keep their "
                 f"point and level, their layer keys are null with rule below_min_match")
PREFIX_DOC = (f"CSV/Arrow answers: put in front of a result column named like an input column (default "
              f"{join.COLLISION_PREFIX!r}); input columns are never replaced")


class AddressRecord(BaseModel):
    id: str | int | float | None = Field(default=None, description="Echoed back; any string or number")
    address: str = Field(description="Street address or intersection", examples=["4608 Gardena Avenue"])
    city: str | None = Field(default=None, description="Optional; a city other than San Diego is flagged")
    zip: str | int | None = Field(default=None, description="Optional 5-digit ZIP: disambiguates same-named "
                                                            "streets and is the fallback location")
    lon: float | None = Field(default=None, description="Optional coordinates from an earlier geocode, checked "
                                                        "for the known bad cases (city centroid, 0/0, swapped)")
    lat: float | None = None
    date: str | None = Field(default=None, description="YYYY-MM-DD: tag with the layer versions in force that day")


class GeocodeJoinRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelled option is refused (422 naming it)
    records: list[AddressRecord] = Field(min_length=1)
    layers: list[str] | str | None = Field(default=None, examples=[LAYER_EXAMPLE],
                                           description="Layers to tag with (default: ENRICH_DEFAULT_LAYERS)")
    as_of: str | None = Field(default=None, description="YYYY-MM-DD: the layer versions in force that day")
    nearest_within_m: float | None = Field(default=None, ge=0, le=5000)
    min_match: str | None = Field(default=None, description=MIN_MATCH_DOC)


class GeocodeRow(BaseModel):
    """One answer per record, in input order; then `<layer>` and `<layer>_rule` for each layer."""

    model_config = ConfigDict(extra="allow")
    id: str | int | float | bool | None = None
    lon: float | None
    lat: float | None
    match: str = Field(description=f"One of {', '.join(LEVELS)}")
    score: float = Field(ge=0, le=1)
    matched_address: str | None = Field(description="The reference address, block, intersection or street matched")
    reason: str | None = Field(description="Why the match is not more precise (or none)")
    flags: str | None = None
    error: str | None = None


class GeocodeJoinResponse(BaseModel):
    results: list[GeocodeRow]
    count: int
    layers: dict[str, LayerUsed]
    geocode_reference: str = Field(description="sha256 of the reference the geocodes come from")
    errors: list[RowError]


_BULK_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            JSON: {"schema": inline_schema(GeocodeJoinRequest)},
            ARROW: {"schema": {"type": "string", "format": "binary"}},
            CSV: {"schema": {"type": "string"}},
            NDJSON: {"schema": {"type": "string"}},
            GEOJSON: {"schema": {"type": "object", "description": "A FeatureCollection; addresses in properties"}},
            MULTIPART: {"schema": {"type": "object", "properties": {"file": {"type": "string", "format": "binary"}},
                                   "required": ["file"]}},
        },
    }
}


def _join(index: ServiceIndex, records: Records, opts: Options, min_match: str | None = None) -> join.Joined:
    return join.geocode_join(index, records, opts.layers, opts.as_of, opts.nearest_within_m, min_match=min_match)


def _headers(index: ServiceIndex, joined: join.Joined) -> dict[str, str]:
    return {"X-Enrich-Layers": orjson.dumps(joined.result.layers_used()).decode(),
            REFERENCE_HEADER: join.reference_header(index)}


@router.get("/geocode", response_model=GeocodeRow, responses=ERROR_RESPONSES,
            summary="Geocode one address and tag it with every requested layer")
def get_geocode(
    request: Request,
    address: Annotated[str, Query(description="Street address or intersection",
                                  examples=["4608 Gardena Avenue, San Diego, CA 92110"])],
    city: Annotated[str | None, Query()] = None,
    zip: Annotated[str | None, Query(description="5-digit ZIP")] = None,
    layers: Annotated[str | None, Query(description="Comma-separated layer names")] = None,
    as_of: Annotated[str | None, Query(description="YYYY-MM-DD")] = None,
    nearest_within_m: Annotated[float | None, Query(ge=0, le=5000)] = None,
    min_match: Annotated[str | None, Query(description=MIN_MATCH_DOC)] = None,
):
    index = current(request.app)
    opts = parse_options({"layers": layers, "as_of": as_of, "nearest_within_m": nearest_within_m}, get_settings())
    records = Records(ids=[None], addresses=[address], cities=[city] if city else None, zips=[zip] if zip else None)
    joined = _join(index, records, opts, join.check_min_match(min_match))
    row = join.rows(None, joined)[0]
    del row["id"], row["error"]
    return JSONResponse(row, headers=_headers(index, joined))


@router.post("/geocode-join", response_model=GeocodeJoinResponse, responses=ERROR_RESPONSES,
             openapi_extra=_BULK_BODY,
             summary="Geocode a batch of address records and tag them (JSON, Arrow IPC stream, CSV or NDJSON)")
async def post_geocode_join(
    request: Request,
    layers: Annotated[str | None, Query(description="Bulk bodies: comma-separated layer names")] = None,
    as_of: Annotated[str | None, Query(description="Bulk bodies: YYYY-MM-DD")] = None,
    nearest_within_m: Annotated[float | None, Query(ge=0, le=5000)] = None,
    id_col: Annotated[str, Query(description="Bulk bodies: the id column")] = "id",
    address_col: Annotated[str, Query(description="Bulk bodies: the address column")] = "address",
    city_col: Annotated[str, Query(description="Bulk bodies: the city column (optional)")] = "city",
    zip_col: Annotated[str, Query(description="Bulk bodies: the ZIP column (optional)")] = "zip",
    lon_col: Annotated[str, Query(description="Bulk bodies: earlier longitude to check (optional)")] = "lon",
    lat_col: Annotated[str, Query(description="Bulk bodies: earlier latitude to check (optional)")] = "lat",
    date_col: Annotated[str | None, Query(description="Bulk bodies: the date column (default: a column named "
                                                       "date, if any)")] = None,
    min_match: Annotated[str | None, Query(description=MIN_MATCH_DOC)] = None,
    prefix: Annotated[str, Query(description=PREFIX_DOC)] = join.COLLISION_PREFIX,
    delimiter: Annotated[str | None, Query(description="CSV bodies: comma, semicolon, tab or pipe (default: "
                                                        "sniffed)")] = None,
):
    settings = get_settings()
    index = current(request.app)
    join.geocoder_of(index)  # 503 before reading a large body when there is no reference
    content_type = request.headers.get("content-type")
    params: dict[str, Any] = {"layers": layers, "as_of": as_of, "nearest_within_m": nearest_within_m, "id_col": id_col,
              "address_col": address_col, "city_col": city_col, "zip_col": zip_col, "lon_col": lon_col,
              "lat_col": lat_col, "date_col": date_col, "min_match": min_match, "prefix": prefix,
              "delimiter": delimiter}
    # A browser form or curl -F: the file, and options as form fields.
    upload, content_type, kind, params = await multipart.unwrap(
        content_type, functools.partial(read_body, request, settings), params, route_query_names(request))
    dialect = Dialect.of(params["delimiter"], None, kind)
    cols = AddressColumns(id=params["id_col"], address=params["address_col"], city=params["city_col"],
                          zip=params["zip_col"], lon=params["lon_col"], lat=params["lat_col"],
                          date=params["date_col"])
    query = {"layers": params["layers"], "as_of": params["as_of"], "nearest_within_m": params["nearest_within_m"]}
    prefix = join.check_prefix(params["prefix"])
    min_match = join.check_min_match(params["min_match"])

    if kind == NDJSON:
        formats.response_type(request.headers.get("accept"), kind)
        opts = parse_options(query, settings)
        check_options_usable(index, opts)
        spool = await spool_body(request, settings)
        if not await offload(has_lines, spool):  # an empty batch, as in every other transport: 422 before any answer
            spool.close()
            check_batch_size(0, settings, field="body")
        chunk = functools.partial(_ndjson_chunk, index, opts=opts, cols=cols, min_match=min_match)
        return NDJSONResponse(answer_stream(spool, chunk, settings),
                              headers={REFERENCE_HEADER: join.reference_header(index)})

    body = upload.data if upload else await read_body(request, settings)
    if kind == JSON and geojson.looks_like_geojson(body):
        kind = GEOJSON
    answer_kind = formats.response_type(request.headers.get("accept"), kind)
    table = None
    if kind == JSON:
        doc = json_body.loads(body)
        if not isinstance(doc, dict):
            raise InvalidInput("body must be a JSON object with a `records` list", field="body")
        json_body.check_keys(doc, ("records", "layers", "as_of", "nearest_within_m", "min_match"))
        merged = merge_options(doc, {**query, "min_match": min_match}, settings,
                               normalise={"min_match": join.check_min_match})
        opts = parse_options(merged, settings)
        min_match = join.check_min_match(merged["min_match"])
        records = doc.get("records")
        if records is None:
            raise InvalidInput("records is missing", field="records")
        if isinstance(records, list):
            check_batch_size(len(records), settings, field="records")
        records = await offload(join.records_from_json, records, cols)
    else:
        opts = parse_options(query, settings)
        table = await offload(formats.decode_table, kind, body, content_type, dialect.delimiter)
        check_batch_size(table.num_rows, settings, field="body")
        cols = dataclasses.replace(cols, date=tables.date_column(table, cols.date))
        tables.check_answerable(table, answer_kind, cols.id, (cols.address, cols.city, cols.zip, cols.lon, cols.lat,
                                                             cols.date))
        records = await offload(join.records_from_table, tables.with_local_days(table, cols.date), cols)
    del body
    joined = await offload(_join, index, records, opts, min_match)
    headers = _headers(index, joined)
    if upload and (disposition := multipart.content_disposition(upload.filename, answer_kind)):
        headers["Content-Disposition"] = disposition

    if answer_kind == JSON:
        payload = await offload(_encode_json, index, records, joined)
        return Response(payload, media_type=JSON, headers=headers)
    out = await offload(join.answer_table, table, records.ids, joined, prefix)
    if answer_kind == GEOJSON:  # the geocoded points are the features' geometry: the first two columns appended
        first = table.num_columns if table is not None else 1
        out = coordinates.with_geometry(out, out.column_names[first], out.column_names[first + 1])
    encode = formats.FORMATS[answer_kind].encode_table
    assert encode is not None  # every answer type but JSON and NDJSON is a table format
    return Response(await offload(encode, out), media_type=answer_kind, headers=headers)


def _encode_json(index: ServiceIndex, records: Records, joined: join.Joined) -> bytes:
    rows = join.rows(records.ids, joined)
    body = {"results": rows, "count": len(rows), "layers": joined.result.layers_used(),
            "geocode_reference": join.reference_header(index),
            "errors": results.error_list(records.ids, joined.prepared, joined.result)}
    return json_body.dumps(body)


def _ndjson_chunk(index: ServiceIndex, lines: list[bytes], first_row: int, opts: Options,
                  cols: AddressColumns, min_match: str | None = None) -> bytes:
    docs, bad = parse_lines(lines, first_row)
    records = join.records_from_json(docs, cols)
    records.errors.update(bad)
    joined = _join(index, records, opts, min_match)
    return b"".join(json_body.dumps(row) + b"\n" for row in join.rows(records.ids, joined))
