"""Single lookups without the framework stack: a pure-ASGI front that answers an ordinary GET /v1/pip itself.

A lookup's own work is a few tens of microseconds; FastAPI's routing, dependency solving and our middleware around
it cost several times that per request (docs/operations.md, "Load"). This front does for the routes given to it what
the stack does (request id, the read key, the expected layer set, metrics and the access log, the same headers) and
calls the route's fast answer (api/pip.get_pip_fast). Anything unusual goes on to the full stack, which answers it
exactly as before: a CORS request, a wrong or missing key, another layer set expected, a parameter the route does
not take, a value the route refuses (its error names the field, from the one place that writes it), a search that
runs in a thread, no index yet, or a fast answer that fails in any way. So no error is written twice, and a request
the front declines costs the stack's price once more than the front's checks.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import parse_qsl

from starlette.responses import Response

from ..errors import EnrichError
from ..settings import get_settings
from .layer_version import SERVED_HEADER
from .observability import new_request_id, observe
from .security import check_key

_SERVED = SERVED_HEADER.lower().encode("latin-1")


@dataclass(frozen=True)
class FastRoute:
    """A GET route's fast answer: `answer(index, query)` gives the response, or None to leave it to the route."""

    path: str
    params: frozenset[str]  # the query parameters the route declares (strict_query refuses any other)
    answer: Callable[..., Response | None]


class FastPath:
    def __init__(self, app, routes: tuple[FastRoute, ...]):
        self.app = app
        self.routes = {route.path: route for route in routes}

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["method"] == "GET" and not scope.get("root_path"):
            route = self.routes.get(scope["path"])
            if route is not None and await self._answer(route, scope, send):
                return
        await self.app(scope, receive, send)

    async def _answer(self, route: FastRoute, scope, send) -> bool:
        """True once answered; False (nothing sent) leaves the request to the full stack."""
        started = time.perf_counter()
        request_id = expected = key = origin = None
        for name, value in scope["headers"]:  # as the stack reads them: the last request id and expected set,
            if name == b"x-request-id":       # the first key (Starlette's Headers.get)
                request_id = value
            elif name == b"x-enrich-expect-layers":
                expected = value
            elif name == b"x-api-key":
                key = value if key is None else key
            elif name == b"origin":
                origin = value
        settings = get_settings()
        if origin is not None and settings.cors_origins:
            return False
        if settings.read_requires_key:
            try:
                check_key((key or b"").decode("latin-1"), settings)
            except EnrichError:
                return False
        index = getattr(scope["app"].state, "index", None)
        if index is None:
            return False
        if expected is not None and expected.decode("latin-1").strip().lower() not in ("", index.layers_sha256):
            return False
        query = _query(scope["query_string"].decode("latin-1"))
        if not query.keys() <= route.params:
            return False
        try:
            response = route.answer(index, query)
        except Exception:  # noqa: BLE001 - the full stack answers it (and logs it, if it is a bug)
            return False
        if response is None:
            return False
        request_id = new_request_id(request_id)
        try:  # the stack's headers, in its order: the response's own, the request id, the layer set
            await send({"type": "http.response.start", "status": response.status_code,
                        "headers": [*response.raw_headers, (b"x-request-id", request_id.encode("latin-1")),
                                    (_SERVED, index.layers_sha256.encode())]})
            await send({"type": "http.response.body", "body": response.body})
        finally:
            observe(route.path, "GET", response.status_code, time.perf_counter() - started, request_id)
        return True


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
