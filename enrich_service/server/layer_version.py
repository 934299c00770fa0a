"""Which layer set an answer came from, and the caller's demand for one: in one place for every route.

A DAG run tags all its batches with one layer set: it sends the set's sha256 in X-Enrich-Expect-Layers, and a
worker that serves another set answers 409 (code layers_version_mismatch) instead of tagging, so the task retries
(on another replica, or once this one has followed the accepted set). Every answer that used the index names the
set in X-Enrich-Layers-Sha256. The check is made where a request takes its index (index.current), so the index
checked is the index that answers: a reload swapping in between cannot slip another set in.
"""

from __future__ import annotations

import contextvars
from dataclasses import dataclass

EXPECT_HEADER = "X-Enrich-Expect-Layers"
SERVED_HEADER = "X-Enrich-Layers-Sha256"


@dataclass
class _Pin:
    expected: str | None
    served: str | None = None


# One holder per request, set by the middleware; routes (sync ones run in a copied context) fill in the same object.
_PIN: contextvars.ContextVar[_Pin | None] = contextvars.ContextVar("enrich_layers_pin", default=None)


def pin(layers_sha256: str) -> str | None:
    """Called with the set the request's index serves: the set the caller expects when it is another one, else None
    (and the answer will name this set)."""
    holder = _PIN.get()
    if holder is None:
        return None
    if holder.expected and holder.expected != layers_sha256:
        return holder.expected
    holder.served = layers_sha256
    return None


class LayerVersionMiddleware:
    """Pure ASGI: reads the expected set, adds the served set to the response headers."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        expected = None
        for k, v in scope.get("headers", ()):
            if k == b"x-enrich-expect-layers":
                expected = v.decode("latin-1").strip().lower() or None
        holder = _Pin(expected)
        token = _PIN.set(holder)

        async def send_with_version(message):
            if message["type"] == "http.response.start" and holder.served:
                message = {**message, "headers": [*message.get("headers", ()),
                                                  (b"x-enrich-layers-sha256", holder.served.encode())]}
            await send(message)

        try:
            await self.app(scope, receive, send_with_version)
        finally:
            _PIN.reset(token)
