"""Single lookups without the framework stack: a pure-ASGI front that answers an ordinary GET /v1/pip itself.

A lookup's own work is a few tens of microseconds; FastAPI's routing, dependency solving and our middleware around
it cost several times that per request (docs/operations.md, "Load"). This front does for the routes given to it what
the stack does (request id, the read key, the expected layer set, metrics and the access log, the same headers) and
calls the route's fast answer (api/pip.get_pip_fast). Anything unusual goes on to the full stack, which answers it
exactly as before: a CORS request, a wrong or missing key, another layer set expected, a parameter the route does
not take, a value the route refuses (its error names the field, from the one place that writes it), a search that
runs in a thread, no index yet, or a fast answer that fails in any way. So no error is written twice, and a request
the front declines costs the stack's price once more than the front's checks.

POST /v1/pip with a JSON body of up to a megabyte (a DAG's or a script's batch) is answered here too: the front
reads the body, and the route's fast answer (api/pip.post_pip_fast) decodes, tags and encodes it exactly as the
route does (factory.run_job). Under the mixed load (bench/load.py) the stack's share of a 1,000-point batch, ~1 ms on
the event loop, was what the single lookups behind it waited for. A declined request reaches the stack with its
body as it arrived: what the front read is given to it first, then the rest of the stream.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from starlette.responses import Response

from ..errors import BodyTimeout, EnrichError, error_response
from ..io.formats import accepts
from ..io.media import JSON, compressed
from ..settings import get_settings
from .layer_version import SERVED_HEADER
from .observability import STARTED_KEY, new_request_id, observe
from .security import check_key

_SERVED = SERVED_HEADER.lower().encode("latin-1")
FAST_BODY_BYTES = 1 << 20  # POST bodies answered by the front: a batch of ~15,000 JSON points


@dataclass(frozen=True)
class FastRoute:
    """A GET route's fast answer: `answer(index, query)` gives the response, or None to leave it to the route."""

    path: str
    params: frozenset[str]  # the query parameters the route declares (strict_query refuses any other)
    answer: Callable[..., Response | None]


@dataclass(frozen=True)
class FastBodyRoute:
    """A POST route's fast answer for a body without query parameters: `answer(index, read, headers)` reads the
    body with `read()` and gives the response, or None to leave the request (and the body read) to the route."""

    path: str
    max_body: int  # bytes, by Content-Length: larger bodies, and bodies of no declared length, go to the route
    answer: Callable[..., Awaitable[Response | None]]


class FastPath:
    def __init__(self, app, routes: tuple[FastRoute, ...], body_routes: tuple[FastBodyRoute, ...] = ()):
        self.app = app
        self.routes = {route.path: route for route in routes}
        self.body_routes = {route.path: route for route in body_routes}

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and not scope.get("root_path"):
            if scope["method"] == "GET":
                route = self.routes.get(scope["path"])
                if route is not None and await self._answer(route, scope, send):
                    return
            elif scope["method"] == "POST" and not scope["query_string"]:
                body_route = self.body_routes.get(scope["path"])
                if body_route is not None:
                    return await self._answer_body(body_route, scope, receive, send)
        await self.app(scope, receive, send)

    async def _answer(self, route: FastRoute, scope, send) -> bool:
        """True once answered; False (nothing sent) leaves the request to the full stack."""
        started = time.perf_counter()
        admitted = _admit(scope)
        if admitted is None:
            return False
        index, request_id, headers = admitted
        accept = headers.get(b"accept")
        if accept is not None and accept != b"*/*" and not accepts(accept.decode("latin-1"), JSON):
            return False  # the stack's 406
        query = _query(scope["query_string"].decode("latin-1"))
        if not query.keys() <= route.params:
            return False
        try:
            response = route.answer(index, query)
        except Exception:  # noqa: BLE001 - the full stack answers it (and logs it, if it is a bug)
            return False
        if response is None:
            return False
        await _send(response, index, route.path, "GET", started, request_id, send)
        return True

    async def _answer_body(self, route: FastBodyRoute, scope, receive, send) -> None:
        started = time.perf_counter()
        admitted = _admit(scope)
        body = _Body(receive)
        response = None
        if admitted is not None:
            index, request_id, headers = admitted
            length = headers.get(b"content-length", b"")
            if length.isdigit() and int(length) <= min(route.max_body, get_settings().max_body_bytes):
                try:
                    response = await route.answer(index, body.read, headers)
                except BodyTimeout as exc:  # answered here: the route would wait a second timeout for the rest
                    response = error_response(exc)
                except Exception:  # noqa: BLE001 - the full stack answers it (and logs it, if it is a bug)
                    response = None
        if response is None:
            scope[STARTED_KEY] = started  # the stack's access log times the request from here, its body read too
            return await self.app(scope, body.replay, send)
        await _send(response, index, route.path, "POST", started, request_id, send)


class _Body:
    """The request body as the front reads it, and the same stream again for the full stack when it declines."""

    def __init__(self, receive):
        self._receive = receive
        self._read: list[bytes] = []
        self._more = True
        self._replayed = False

    async def read(self) -> bytes:
        settings = get_settings()
        while self._more:
            try:
                async with asyncio.timeout(settings.body_timeout_s):
                    message = await self._receive()
            except TimeoutError:
                raise BodyTimeout.after(settings.body_timeout_s) from None
            if message["type"] != "http.request":
                raise ConnectionError("the client went away")  # the stack sees the disconnect again
            self._read.append(message.get("body", b""))
            self._more = message.get("more_body", False)
        return b"".join(self._read)

    async def replay(self):
        if not self._replayed:
            self._replayed = True
            if self._read:
                return {"type": "http.request", "body": b"".join(self._read), "more_body": self._more}
        return await self._receive()


def _admit(scope) -> tuple[Any, bytes | None, dict[bytes, bytes]] | None:
    """(the index, the client's request id, the request's headers) when the front may answer: no CORS request, the
    read key if one is required, an index, the layer set the client expects if it says; else None."""
    request_id = expected = key = origin = None
    headers: dict[bytes, bytes] = {}
    for name, value in scope["headers"]:  # as the stack reads them: the last request id and expected set,
        if name == b"x-request-id":       # the first key (Starlette's Headers.get)
            request_id = value
        elif name == b"x-enrich-expect-layers":
            expected = value
        elif name == b"x-api-key":
            key = value if key is None else key
        elif name == b"origin":
            origin = value
        elif name == b"content-encoding" and compressed((value.decode("latin-1"),)):
            return None  # the stack refuses a compressed body, naming it (any one such header is enough)
        headers.setdefault(name, value)
    settings = get_settings()
    if origin is not None and settings.cors_origins:
        return None
    if settings.read_requires_key:
        try:
            check_key((key or b"").decode("latin-1"), settings)
        except EnrichError:
            return None
    index = getattr(scope["app"].state, "index", None)
    if index is None:
        return None
    if expected is not None and expected.decode("latin-1").strip().lower() not in ("", index.layers_sha256):
        return None
    return index, request_id, headers


async def _send(response: Response, index, path: str, method: str, started: float, given_id: bytes | None,
                send) -> None:
    request_id = new_request_id(given_id)
    try:  # the stack's headers, in its order: the response's own, the request id, the layer set
        await send({"type": "http.response.start", "status": response.status_code,
                    "headers": [*response.raw_headers, (b"x-request-id", request_id.encode("latin-1")),
                                (_SERVED, index.layers_sha256.encode())]})
        await send({"type": "http.response.body", "body": response.body})
    finally:
        observe(path, method, response.status_code, time.perf_counter() - started, request_id)


def _query(text: str) -> dict[str, str]:
    """The query string as a dict, as parse_qsl(text, keep_blank_values=True) reads it (the last value of a name
    wins, as in the dict the route reads): without an escape to decode, a split costs a fifth of parse_qsl."""
    if "%" in text or "+" in text:
        return dict(parse_qsl(text, keep_blank_values=True))
    out = {}
    for pair in text.split("&"):
        if pair:
            name, _, value = pair.partition("=")
            out[name] = value
    return out
