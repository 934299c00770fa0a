"""Warm-up before a worker of `enrich-service serve` listens: a few requests through the app's own routes, so the
first client's request costs what the later ones do (an app started in process, by a test, is not warmed).

Much of what a request uses is made on first use: numba loads each compiled kernel from its cache when first
called (and starts its thread pool on the first parallel call), pyarrow imports pandas on its first conversion to
numpy, and each media type's decoder and encoder and the geocoder's matcher run for the first time. Without this,
the first 1M-point request after start-up took ~0.4 s longer than the next ones (docs/engine.md, "Start-up and
memory"). Here every bulk route answers a tiny batch in every body format, the single lookups and the geocoder
answer once, and the engine and the JSON row writer run once on each side of their parallel thresholds. The
requests go through the router, not the middleware: they are in neither the request log nor the request metrics
(the points counter does count their few points). The geocoder's result cache is emptied afterwards. A failure is logged and
the worker serves anyway: the first requests are then only slower.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterable
from urllib.parse import urlencode

import numpy as np
import orjson

log = logging.getLogger(__name__)


def _body_requests(lon: float, lat: float, address: str | None,
                   layers: list[str]) -> Iterable[tuple[str, str, str, bytes]]:
    """(method, path with query, content type, body) for every route and media type worth warming, asking for
    every layer (each grid's kernels are compiled per cell type)."""
    import pyarrow as pa

    from ..io.arrow_stream import stream_buffer
    from ..io.media import ARROW, CSV, GEOJSON, JSON, NDJSON

    pts = [(1, lon, lat), (2, lon + 1e-4, lat + 1e-4)]
    pip = "/v1/pip?" + urlencode({"layers": ",".join(layers)})
    join = "/v1/geocode-join?" + urlencode({"layers": ",".join(layers)})
    table = pa.table({"id": pa.array([i for i, _, _ in pts], pa.int64()), "lon": pa.array([x for _, x, _ in pts]),
                      "lat": pa.array([y for _, _, y in pts])})
    yield "POST", pip, JSON, orjson.dumps({"points": [{"id": i, "lon": x, "lat": y} for i, x, y in pts]})
    yield "POST", pip, ARROW, stream_buffer(table).to_pybytes()
    yield "POST", pip, CSV, b"id,lon,lat\n" + b"".join(f"{i},{x!r},{y!r}\n".encode() for i, x, y in pts)
    yield "POST", pip, GEOJSON, orjson.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {"id": i}, "geometry": {"type": "Point", "coordinates": [x, y]}}
        for i, x, y in pts]})
    yield "POST", pip, NDJSON, b"".join(orjson.dumps({"id": i, "lon": x, "lat": y}) + b"\n" for i, x, y in pts)
    yield "GET", "/v1/pip?" + urlencode({"lon": repr(lon), "lat": repr(lat), "layers": ",".join(layers)}), "", b""
    if address is None:
        return
    records = [{"id": 1, "address": address}, {"id": 2, "address": "1 Nowhere Strete"}]
    yield "POST", join, JSON, orjson.dumps({"records": records})
    yield "POST", join, ARROW, stream_buffer(pa.Table.from_pylist(records)).to_pybytes()
    yield "GET", "/v1/geocode?" + urlencode({"address": address}), "", b""


async def _call(app, method: str, target: str, content_type: str, body: bytes, key: str | None) -> int:
    """One request through the app's router (not its middleware); returns the status."""
    path, _, query = target.partition("?")
    headers = [(b"content-type", content_type.encode())] if content_type else []
    headers += [(b"x-api-key", key.encode())] if key else []
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": query.encode(), "root_path": "",
             "headers": headers + [(b"content-length", str(len(body)).encode()), (b"host", b"warm-up")],
             "client": ("127.0.0.1", 0), "server": ("127.0.0.1", 0), "app": app, "state": {}}
    sent = False
    status = 0

    async def receive():
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message):
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    # What FastAPI's own AsyncExitStackMiddleware, skipped with the others, puts in every request's scope.
    async with contextlib.AsyncExitStack() as stack:
        scope["fastapi_middleware_astack"] = stack
        await app.router(scope, receive, send)
    return status


def _warm_sized_kernels(index, layers: list[str], bbox: tuple[float, float, float, float]) -> None:
    """The engine and the JSON row writer once above the sizes where they go parallel (numba loads the parallel
    kernels and starts its threads on the first such call), and the row writer once below: the tiny batches are
    written by results.small_json_rows, so without this a worker's first answer of 5,000-50,000 JSON rows loaded
    its kernel (10-15 ms). No route counts these points."""
    from ..engine import grid
    from ..io import json_rows

    n = max(grid.SERIAL_BELOW, json_rows.SERIAL_BELOW)
    x0, y0, x1, y1 = bbox
    rng = np.random.default_rng(0)
    lon, lat = rng.uniform(x0, x1, n), rng.uniform(y0, y1, n)
    index.engine.tag(lon, lat, np.ones(n, dtype=bool), layers)
    json_rows.json_rows([("id", np.arange(n))], b",")
    json_rows.json_rows([("id", np.arange(2))], b",")


async def warm_up(app, index) -> float:
    """Warm every path on `index` (already app.state.index); returns the seconds it took."""
    from starlette.concurrency import run_in_threadpool

    from ..settings import get_settings
    from .security import configured_keys

    t0, cpu0 = time.perf_counter(), time.process_time()
    settings = get_settings()
    key = next(iter(configured_keys(settings)), None)
    layers = list(index.store.versions)
    x0, y0, x1, y1 = index.store.versions[layers[0]][-1].bbox
    address = None
    geocoder = index.geocoder
    if geocoder is not None and len(geocoder.ref.pt_label):
        zips = geocoder.ref.pt_zip
        address = f"{geocoder.ref.pt_label[0]}, San Diego, CA {zips[0] if len(zips) else ''}".strip()
    answered: list[str] = []
    try:
        if index.engine.grid:
            await run_in_threadpool(_warm_sized_kernels, index, layers, (x0, y0, x1, y1))
        for method, target, content_type, body in _body_requests((x0 + x1) / 2, (y0 + y1) / 2, address, layers):
            status = await _call(app, method, target, content_type, body, key)
            name = " ".join(filter(None, (method, target.split("?")[0], content_type)))
            answered.append(f"{name}: {status}")
            if status != 200:
                log.warning("warm-up: %s answered %d", name, status)
    except Exception:  # a warm-up must never keep a worker from serving
        log.exception("warm-up failed; the first requests will be slower")
    finally:
        if geocoder is not None and geocoder.cache is not None:
            geocoder.cache.clear()  # the warm-up's own addresses are no client's
    seconds = time.perf_counter() - t0
    # The process's CPU (every thread's): the wall time says little on a busy machine.
    log.info("warm-up done in %.2fs (CPU %.2fs): %s", seconds, time.process_time() - cpu0, ", ".join(answered))
    return seconds
