"""What every bulk route shares: request options, the body size limit, and running CPU work off the event loop."""

from __future__ import annotations

import asyncio
import datetime as dt
import tempfile
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass

import anyio
from fastapi import Request

from ..engine.tagger import MAX_NEAREST_M
from ..errors import BodyTimeout, InvalidInput, PayloadTooLarge, UnknownParameter
from ..points import parse_crs, parse_date
from ..server.cancellation import run_with_flag
from ..settings import Settings, get_settings


@dataclass(frozen=True)
class Options:
    layers: list[str]
    as_of: dt.date | None
    crs: object  # pyproj CRS
    nearest_within_m: float | None


def route_query_names(request: Request) -> frozenset[str]:
    """The query parameters the matched route declares (its signature and its documented extra parameters)."""
    route = request.scope.get("route")
    names = getattr(route, "_enrich_query_names", None)
    if names is None:
        declared = {p.alias for p in getattr(getattr(route, "dependant", None), "query_params", ())}
        extra = getattr(route, "openapi_extra", None) or {}
        declared.update(p["name"] for p in extra.get("parameters", ()) if p.get("in") == "query")
        names = frozenset(declared)
        if route is not None:  # worked out once per route
            route._enrich_query_names = names
    return names


async def strict_query(request: Request) -> None:
    """Route dependency: every query parameter must be one the route declares."""
    query = request.query_params
    if query and request.scope.get("route") is not None:
        names = route_query_names(request)
        for name in query:
            if name not in names:
                raise UnknownParameter.of(name, names)


def check_options_usable(index, opts: Options) -> None:
    """Everything about the options that can fail, checked before any answer starts (a streamed answer cannot
    turn into a 4xx once its status line is out): the layers exist, each has a version in force on as_of."""
    index.store.check_layers(opts.layers)
    for name in opts.layers:
        index.store.version_on(name, opts.as_of)


def parse_options(raw: dict, settings: Settings) -> Options:
    """Options from a JSON body or from query parameters; every problem names its field."""
    layers = raw.get("layers")
    if layers is None or layers == "":
        layers = list(settings.default_layers)
    elif isinstance(layers, str):
        layers = [name.strip() for name in layers.split(",") if name.strip()]
    elif not (isinstance(layers, list) and all(name.__class__ is str for name in layers)):
        raise InvalidInput("layers must be a list of layer names (or a comma-separated string)", field="layers")
    if not layers:
        raise InvalidInput("layers is empty; name at least one layer", field="layers")
    if len(layers) > 100 or max(map(len, layers)) > 100:  # every message that names them stays readable
        raise InvalidInput("layers: at most 100 names of at most 100 characters", field="layers")
    nearest = raw.get("nearest_within_m")
    if isinstance(nearest, bool):
        raise InvalidInput("nearest_within_m must be a number of metres, not true/false", field="nearest_within_m")
    if nearest is not None and nearest != "":
        try:
            nearest = float(nearest)
        except (TypeError, ValueError):
            raise InvalidInput(f"nearest_within_m {nearest!r} is not a number", field="nearest_within_m") from None
        if not 0 <= nearest <= MAX_NEAREST_M:  # also refuses NaN
            raise InvalidInput(f"nearest_within_m must be between 0 and {MAX_NEAREST_M:g} metres",
                               field="nearest_within_m")
    else:
        nearest = None
    crs = raw.get("crs")
    if crs is not None and (isinstance(crs, bool) or not isinstance(crs, (str, int))):
        raise InvalidInput("crs must be a string such as 'EPSG:2230' or an EPSG number", field="crs")
    as_of = raw.get("as_of")
    if as_of is not None and not isinstance(as_of, (str, dt.date)):
        raise InvalidInput("as_of must be a date string YYYY-MM-DD", field="as_of")
    return Options(layers=list(dict.fromkeys(layers)), as_of=parse_date(as_of, "as_of"),
                   crs=parse_crs(crs), nearest_within_m=nearest)


def merge_options(body: dict, query: dict, settings: Settings, normalise: dict | None = None) -> dict:
    """A JSON body's options, each one it leaves out taken from the query string. Given in both with different
    values, the request is refused naming the option: silently preferring one answers a question not asked.
    Values are compared as read (`layers=a,b` is ["a", "b"]; 2230 is EPSG:2230); `normalise` reads options
    parse_options does not know (name -> function)."""
    merged = {}
    for name in query:
        in_body, in_query = body.get(name), query[name]
        if in_body is None or in_body == "" or in_query is None or in_query == "":
            merged[name] = in_query if in_body is None or in_body == "" else in_body
            continue
        read = (normalise or {}).get(name) or (lambda v, n=name: getattr(parse_options({n: v}, settings), n))
        if read(in_body) != read(in_query):
            raise InvalidInput(f"{name} is given in both the body ({_shown(in_body)}) and the query string "
                               f"({_shown(in_query)}) with different values; give it once", field=name)
        merged[name] = in_body
    return merged


def _shown(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


async def _chunks(request: Request, settings: Settings) -> AsyncIterator[bytes]:
    """The body's chunks, refusing early (by Content-Length) or as soon as it passes the configured maximum, and
    answering 408 when a slow client leaves more than body_timeout_s between two chunks."""
    limit = settings.max_body_bytes
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"body of {int(declared)} bytes exceeds the limit of {limit} bytes", field="body")
    stream = request.stream().__aiter__()
    size = 0
    while True:
        try:
            async with asyncio.timeout(settings.body_timeout_s):
                chunk = await stream.__anext__()
        except StopAsyncIteration:
            return
        except TimeoutError:
            raise BodyTimeout(f"no part of the body arrived for {settings.body_timeout_s:g} s "
                              f"(ENRICH_BODY_TIMEOUT_S); send the body without pauses", field="body") from None
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"body exceeds the limit of {limit} bytes", field="body")
        yield chunk


async def read_body(request: Request, settings: Settings | None = None) -> bytes:
    """The whole body (see _chunks for its limits)."""
    return b"".join([chunk async for chunk in _chunks(request, settings or get_settings())])


SPOOL_IN_MEMORY_BYTES = 16 * 1024 * 1024


async def spool_body(request: Request, settings: Settings | None = None) -> tempfile.SpooledTemporaryFile:
    """The whole body in a spool (memory up to 16 MB, then a temp file), read before any answer is sent.

    Streamed answers are read back from the spool in chunks: most HTTP clients (curl, httpx, requests) send the
    whole body before they read a byte of the answer, so answering while still reading deadlocks once the socket
    buffers fill; and holding a 10M-row body in memory is what streaming is meant to avoid."""
    spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY_BYTES, prefix="enrich-body-")
    try:
        async for chunk in _chunks(request, settings or get_settings()):
            spool.write(chunk)
    except BaseException:
        spool.close()
        raise
    spool.seek(0)
    return spool


def check_batch_size(n: int, settings: Settings, field: str = "points") -> None:
    if n == 0:
        raise InvalidInput(f"{field} is empty: send at least one point", field=field)
    if n > settings.max_batch:
        raise PayloadTooLarge(f"{n} rows exceed the batch limit of {settings.max_batch} "
                              f"(ENRICH_MAX_BATCH); split the batch", field=field)


async def offload(fn, *args):
    """Tagging and encoding are CPU work: run them in a thread so health checks and small lookups stay answered.
    A cancelled request (its timeout) does not wait for the thread: the thread's flag is set and its long loops stop
    at their next check (cancellation.py)."""
    cancelled = threading.Event()
    try:
        return await anyio.to_thread.run_sync(run_with_flag, cancelled, fn, *args, abandon_on_cancel=True)
    except anyio.get_cancelled_exc_class():
        cancelled.set()
        raise
