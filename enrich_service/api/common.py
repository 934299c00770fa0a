"""What every route shares: the query read by hand against what the route declares, the options dependency, the
body read within its limits, and CPU work run off the event loop."""

from __future__ import annotations

import asyncio
import tempfile
import threading
from collections.abc import AsyncIterator, Iterable, Mapping

import anyio
from fastapi import Request
from starlette.requests import ClientDisconnect

from ..bulk.options import OPTIONS, QueryOptions
from ..errors import (
    BodyTimeout,
    ClientDisconnected,
    MalformedBody,
    NotAcceptable,
    PayloadTooLarge,
    UnknownParameter,
    UnsupportedMediaType,
)
from ..io.formats import accepts
from ..io.media import JSON, compressed
from ..io.params import Param
from ..server.cancellation import run_with_flag
from ..settings import Settings, get_settings


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


def read_query(query: Mapping[str, str | None], params: Iterable[Param]) -> dict[str, str | None]:
    """The declared parameters' values as sent in a query string (or a form's fields), the default where absent.
    Read by hand rather than by FastAPI's per-parameter validation, which costs more CPU than a single lookup; each
    value is checked where it is read, naming its field."""
    return {param.name: query.get(param.name, param.default) for param in params}


async def query_options(request: Request) -> QueryOptions:
    """Route dependency: the request options as the query string gives them, for every route the same way."""
    return options_from(request.query_params)


def options_from(query: Mapping[str, str]) -> QueryOptions:
    """The request options a query mapping gives (the route dependency's and the GET fast path's one reading)."""
    return QueryOptions({name: query.get(name) for name in OPTIONS})


def require_accepts_json(request: Request) -> None:
    """For routes that answer JSON only: an Accept that takes no JSON is refused, not answered with JSON anyway."""
    accept = request.headers.get("accept")
    if not accepts(accept, JSON):
        raise NotAcceptable(f"this route answers {JSON} only; Accept {accept!r} refuses it", field="Accept")


def declared(*params: Param) -> dict:
    """openapi_extra documenting query parameters read by hand (strict_query accepts exactly these)."""
    return {"parameters": [param.openapi() for param in params]}


async def _chunks(request: Request, settings: Settings) -> AsyncIterator[bytes]:
    """The body's chunks, refusing early (by Content-Length) or as soon as it passes the configured maximum, and
    answering 408 when a slow client leaves more than body_timeout_s between two chunks."""
    encoding = compressed(request.headers.getlist("content-encoding"))
    if encoding:  # read as sent, it would be decoded as if plain: refused, naming why
        raise UnsupportedMediaType(f"Content-Encoding {encoding}: bodies are read uncompressed; send the body "
                                   f"without Content-Encoding", field="Content-Encoding")
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
            raise BodyTimeout.after(settings.body_timeout_s) from None
        except ClientDisconnect:
            raise ClientDisconnected(f"the client closed the connection after {size} bytes of the body",
                                     field="body") from None
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"body exceeds the limit of {limit} bytes", field="body")
        yield chunk


async def read_body(request: Request, settings: Settings | None = None) -> bytes:
    """The whole body (see _chunks for its limits). A body that declares its length is copied into one buffer of
    that size as it arrives: joining its chunks at the end held the body twice (its chunks and the join) and
    faulted in fresh memory for both on a worker's first bulk request."""
    chunks = _chunks(request, settings or get_settings())
    declared = request.headers.get("content-length")
    size = int(declared) if declared and declared.isdigit() else -1
    if size < PREALLOCATE_FROM_BYTES:
        return b"".join([chunk async for chunk in chunks])
    body = bytearray(size)  # refused by _chunks before anything is read if the size is over the limit
    view, filled = memoryview(body), 0
    async for chunk in chunks:
        end = filled + len(chunk)
        if end > size:  # the HTTP parser frames the body by its Content-Length: never seen, never trusted
            raise MalformedBody(f"body is longer than its Content-Length of {size} bytes", field="body")
        view[filled:end] = chunk
        filled = end
    view.release()
    if filled < size:
        del body[filled:]
    return body  # type: ignore[return-value]  # a bytearray: every reader takes it as it takes bytes


PREALLOCATE_FROM_BYTES = 1 << 20


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
