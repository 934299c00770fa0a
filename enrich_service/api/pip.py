"""Point-in-polygon: GET for one point (GIS staff), POST for batches in every registered media type."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import Annotated

import numpy as np
from fastapi import APIRouter, Depends, Request
from starlette.responses import Response

from ..bulk.options import OPTION_PARAMS, Options, QueryOptions
from ..bulk.tag_points import TAG_POINTS, tag_batch
from ..crs import WGS84
from ..engine.rules import RULE_NAMES
from ..engine.tagger import TagResult
from ..errors import EnrichError, InvalidInput
from ..index import ServiceIndex, current
from ..io.formats import FORMATS, json_shape, media_type, response_type
from ..io.geojson import looks_like_geojson
from ..io.media import JSON
from ..io.params import Param
from ..io.responses import JSONResponse
from ..io.tables import Columns
from ..points import PointBatch, Prepared, plain_lonlat
from ..server.observability import count_points, timeout_body
from ..settings import get_settings
from .common import declared, offload, options_from, query_options, read_query, require_accepts_json, strict_query
from .factory import BulkJob, Stages, add_bulk_route, run_job
from .schemas import ERROR_RESPONSES, PipRequest, PipResponse, PointAnswer

router = APIRouter(prefix="/v1", tags=["point in polygon"], dependencies=[Depends(strict_query)])

LON = Param("lon", "Longitude (or x in `crs`)", {"type": "number"}, required=True, example=-117.1627)
LAT = Param("lat", "Latitude (or y in `crs`)", {"type": "number"}, required=True, example=32.7167)
GET_PARAMS = (LON, LAT, *OPTION_PARAMS.values())  # every query parameter GET /v1/pip takes


def _required_number(query: Mapping[str, str | None], name: str) -> float:
    text = query.get(name)
    if text is None or text == "":
        raise InvalidInput(f"{name} is required", field=name)
    try:
        return float(text)
    except ValueError:
        raise InvalidInput(f"{name}: {text[:100]!r} is not a number", field=name) from None


@router.get("/pip", response_model=PointAnswer, responses=ERROR_RESPONSES,
            openapi_extra=declared(*GET_PARAMS), summary="Tag one point with every requested layer")
async def get_pip(request: Request, options: Annotated[QueryOptions, Depends(query_options)]):
    require_accepts_json(request)
    batch = _one_point(read_query(request.query_params, (LON, LAT)))
    index = current(request.app)
    opts = options.parsed(get_settings())
    if opts.nearest_within_m is None:
        # One point through the grid takes microseconds: answered on the event loop, since a hop to the threadpool
        # costs more than the lookup (docs/engine.md).
        tagged = tag_batch(index, batch, opts, Columns())
    else:  # a nearest-polygon search waits for the exact index, which a large batch may be holding
        tagged = await offload(tag_batch, index, batch, opts, Columns())
    return JSONResponse(_answer(*tagged, opts))


def get_pip_fast(index: ServiceIndex, query: Mapping[str, str]) -> JSONResponse | None:
    """GET /v1/pip without the framework stack (server/fast_path.py): the same steps as get_pip on a query already
    checked against GET_PARAMS. None where get_pip must answer: a nearest-polygon search (it runs in a thread) and
    every request it refuses, so each error comes from one place, in its order of checks."""
    try:
        opts = options_from(query).parsed(get_settings())
        if opts.nearest_within_m is not None:
            return None
        lon, lat = _required_number(query, "lon"), _required_number(query, "lat")
        if opts.crs is WGS84 and plain_lonlat(lon, lat):
            # The usual lookup: a valid point with nothing to flag, tagged without prepare's array passes.
            result = index.engine.tag(np.array([lon]), np.array([lat]), _ONE_VALID, opts.layers, opts.as_of)
            count_points(opts.layers, 1)
            return JSONResponse(_point_answer(lon, lat, [], result, opts))
        return JSONResponse(_answer(*tag_batch(index, _point_batch(lon, lat), opts, Columns()), opts))
    except EnrichError:
        return None


async def post_pip_fast(index: ServiceIndex, read: Callable[[], Awaitable[bytes]],
                        headers: Mapping[bytes, bytes]) -> Response | None:
    """POST /v1/pip without the framework stack (server/fast_path.py), for a JSON body and no query string: the same
    negotiation and the same job (factory.run_job) as the route. None where the route must answer: another media
    type, a GeoJSON body sent as JSON, and any request the route refuses (its error comes from the route)."""
    settings = get_settings()
    content_type = headers.get(b"content-type", b"").decode("latin-1") or None
    accept = headers.get(b"accept", b"").decode("latin-1") or None
    try:
        if media_type(content_type) != JSON:
            return None
        answer = FORMATS[response_type(accept, JSON)]
        if answer.media_type != JSON:
            return None
        shape = json_shape(accept, JSON, None)
    except EnrichError:
        return None
    stages = Stages()
    body = await read()  # a slow or gone client raises: the route answers it (408), from what arrived
    if looks_like_geojson(body):
        return None
    stages.mark("read")
    job = BulkJob(TAG_POINTS, index, [body], FORMATS[JSON], answer, shape, content_type, {}, _DEFAULT_PARAMS,
                  QueryOptions({}), None, settings, stages)
    del body
    try:
        async with asyncio.timeout(settings.request_timeout_s):  # the request timeout, as the middleware's
            return await offload(run_job, job)
    except EnrichError:
        return None
    except TimeoutError:
        return Response(timeout_body(settings.request_timeout_s), status_code=504, media_type=JSON)


_DEFAULT_PARAMS = TAG_POINTS.read_params(read_query({}, TAG_POINTS.params))
_ONE_VALID = np.ones(1, dtype=bool)
_ONE_VALID.flags.writeable = False  # shared by every fast lookup: the engine only reads it


def _one_point(query: Mapping[str, str | None]) -> PointBatch:
    return _point_batch(_required_number(query, "lon"), _required_number(query, "lat"))


def _point_batch(lon: float, lat: float) -> PointBatch:
    return PointBatch(ids=[None], x=np.array([lon], dtype=float), y=np.array([lat], dtype=float))


def _answer(prepared: Prepared, result: TagResult, opts: Options) -> dict:
    if not prepared.valid[0]:
        name, message = prepared.errors.get(0, ("lon", "not a finite number"))
        raise InvalidInput(f"{name}: {message}", field=name)
    flags = prepared.flags[0].split(",") if 0 in prepared.flags else []
    return _point_answer(float(prepared.lon[0]), float(prepared.lat[0]), flags, result, opts)


def _point_answer(lon: float, lat: float, flags: list[str], result: TagResult, opts: Options) -> dict:
    answer: dict = {"lon": lon, "lat": lat}
    labels, rules, details, distances = {}, {}, {}, {}
    for name, tags in result.layers.items():
        code = int(tags.codes[0])
        answer[name] = tags.dictionary[code] if code >= 0 else None
        labels[name] = tags.labels[code] if code >= 0 else None
        details[name] = tags.fields[code] if code >= 0 else {}
        rules[name] = RULE_NAMES[tags.rule[0]]
        if tags.distance_m is not None:
            distances[name] = None if np.isnan(tags.distance_m[0]) else float(tags.distance_m[0])
    answer.update(labels=labels, rules=rules, details=details, flags=flags, layers=result.layers_used())
    if opts.nearest_within_m is not None:
        answer["distance_m"] = distances
    return answer


add_bulk_route(router, "/pip", TAG_POINTS, name="post_pip", json_request=PipRequest, response_model=PipResponse,
               summary="Tag a batch of points (JSON, Arrow IPC stream, CSV or NDJSON)")
