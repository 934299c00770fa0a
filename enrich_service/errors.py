"""Domain errors, and the one table that maps them to HTTP statuses.

Code anywhere in the service raises these; `install_handlers` turns them into JSON bodies of the one shape clients see:
`{"detail": "...", "code": "...", "field": "...", "row": n}`: detail, code and field always (field null when no one
field is at fault), row only when known.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from .io.responses import JSONResponse

log = logging.getLogger(__name__)


class EnrichError(Exception):
    """Base of every error the service reports to a client."""

    code = "error"

    def __init__(self, message: str, *, field: str | None = None, row: int | None = None):
        super().__init__(message)
        self.message = message
        self.field = field
        self.row = row

    def body(self) -> dict:
        out: dict = {"detail": self.message, "code": self.code, "field": self.field}
        if self.row is not None:
            out["row"] = self.row
        return out


class InvalidInput(EnrichError):
    """A field of the request is missing, of the wrong type or out of range."""

    code = "invalid_input"


class MalformedBody(EnrichError):
    """The body cannot be decoded at all (bad JSON, garbage bytes, not Arrow)."""

    code = "malformed_body"


class UnknownParameter(InvalidInput):
    """A query or body parameter the route does not take (a misspelling silently ignored is a wrong answer)."""

    code = "unknown_parameter"

    @classmethod
    def of(cls, name: str, known) -> UnknownParameter:
        """Naming the parameter, and the nearest valid name when one is close ("did you mean as_of?")."""
        from rapidfuzz import fuzz, process

        known = sorted(set(known))
        shown = name if len(name) <= 60 else name[:60] + "..."
        best = process.extractOne(name[:200], known, scorer=fuzz.WRatio, processor=str.lower, score_cutoff=70)
        hint = f"did you mean {best[0]}?" if best else f"known: {', '.join(known)}"
        return cls(f"{shown}: unknown parameter; {hint}", field=shown)


class UnknownLayer(InvalidInput):
    code = "unknown_layer"


class UnknownCRS(InvalidInput):
    code = "unknown_crs"


class NoVersionInForce(InvalidInput):
    """`as_of` falls before the first version of a layer."""

    code = "no_version_in_force"


class PayloadTooLarge(EnrichError):
    code = "payload_too_large"


class BodyTimeout(EnrichError):
    """The client paused sending its body for longer than ENRICH_BODY_TIMEOUT_S."""

    code = "body_timeout"

    @classmethod
    def after(cls, seconds: float) -> BodyTimeout:
        return cls(f"no part of the body arrived for {seconds:g} s (ENRICH_BODY_TIMEOUT_S); send the body without "
                   f"pauses", field="body")


class ClientDisconnected(EnrichError):
    """The client closed the connection before its body was complete: nobody is left to answer. Logged with nginx's
    499 (client closed request), not as a server error."""

    code = "client_disconnected"


class UnsupportedMediaType(EnrichError):
    code = "unsupported_media_type"


class NotAcceptable(EnrichError):
    code = "not_acceptable"


class Unauthorized(EnrichError):
    code = "unauthorized"


class NotReady(EnrichError):
    """Layers are not loaded yet."""

    code = "not_ready"


class LayerSourceError(EnrichError):
    """A layer file is missing, corrupt, or does not match its manifest sha256."""

    code = "layer_source_error"


class ReloadRefused(LayerSourceError):
    """A reload built an index that failed validation; the old index keeps serving. `check` names what failed."""

    code = "reload_refused"

    def __init__(self, message: str, *, check: str | None = None, **kwargs):
        super().__init__(message, **kwargs)
        self.check = check

    def body(self) -> dict:
        out = super().body()
        if self.check is not None:
            out["check"] = self.check
        return out


class LayersVersionMismatch(EnrichError):
    """The caller expects one layer set (X-Enrich-Expect-Layers) and this worker serves another: retry elsewhere or
    later, never mix two sets in one run."""

    code = "layers_version_mismatch"


STATUS: dict[type[EnrichError], int] = {
    MalformedBody: 400,
    Unauthorized: 401,
    NotAcceptable: 406,
    BodyTimeout: 408,
    ReloadRefused: 409,
    LayersVersionMismatch: 409,
    PayloadTooLarge: 413,
    UnsupportedMediaType: 415,
    InvalidInput: 422,
    ClientDisconnected: 499,
    LayerSourceError: 500,
    NotReady: 503,
}


def status_of(exc: EnrichError) -> int:
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return 400


_ABSOLUTE_PATH = re.compile(r"(?<![\w/.])/(?:[\w.+@-]+/)+([\w.+@-]*)")
PATH_KEYS = frozenset({"path", "paths", "dir", "directory", "cache_dir"})


def redact_paths(value):
    """What a public route may show: no keys naming files on the server, no absolute paths inside texts (their
    last part stays: the file's name is what a caller can act on). Admin routes show the full detail."""
    if isinstance(value, dict):
        return {k: redact_paths(v) for k, v in value.items() if k not in PATH_KEYS}
    if isinstance(value, list):
        return [redact_paths(v) for v in value]
    if isinstance(value, str) and "/" in value:
        return _ABSOLUTE_PATH.sub(lambda m: m.group(1) or "<path>", value)
    return value


def is_admin(request: Request) -> bool:
    return request.url.path.startswith("/v1/admin")


async def _enrich_error(request: Request, exc: EnrichError) -> JSONResponse:
    return error_response(exc, admin=is_admin(request))


def error_response(exc: EnrichError, admin: bool = False) -> JSONResponse:
    """A domain error's answer (also the fast front's, server/fast_path.py, for a body that stopped arriving)."""
    status = status_of(exc)
    if status >= 500:
        log.error("request failed: %s", exc.message)
    headers = {"WWW-Authenticate": "ApiKey"} if status == 401 else None
    body = exc.body() if admin else redact_paths(exc.body())
    return JSONResponse(body, status_code=status, headers=headers)


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    """FastAPI's own parameter validation, reshaped so the message names the field."""
    errors = exc.errors()
    first = errors[0] if errors else {}
    loc = [str(p) for p in first.get("loc", ()) if p not in ("query", "body", "path", "header")]
    field = ".".join(loc) or None
    message = f"{field}: {first.get('msg', 'invalid')}" if field else str(first.get("msg", "invalid request"))
    body = {"detail": message, "code": InvalidInput.code, "field": field, "errors": _plain(errors)}
    return JSONResponse(body, status_code=422)


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    headers = dict(getattr(exc, "headers", None) or {})
    if exc.status_code == 405:  # Starlette lists only the first matching route's methods; list them all
        methods = {m for r in request.app.routes if getattr(r, "path", None) == request.url.path
                   for m in (getattr(r, "methods", None) or ())}
        headers["Allow"] = ", ".join(sorted(methods))
    return JSONResponse({"detail": str(exc.detail), "code": "http_error", "field": None},
                        status_code=exc.status_code, headers=headers or None)


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    """A bug, not the caller's fault: logged with its traceback, answered in the one shape without internals."""
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return JSONResponse({"detail": "internal server error; the service log has the details", "code": "internal_error",
                         "field": None}, status_code=500)


def _plain(errors: Sequence[Any]) -> list[dict]:
    # Validation errors may carry exception objects or bytes in ctx/input: keep only JSON-safe parts.
    return [{"loc": [str(p) for p in e.get("loc", ())], "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))}
            for e in errors]


def install_handlers(app: FastAPI) -> None:
    # FastAPI's decorator form: it types each handler with the exception class it takes.
    app.exception_handler(EnrichError)(_enrich_error)
    app.exception_handler(RequestValidationError)(_validation_error)
    app.exception_handler(StarletteHTTPException)(_http_error)
    app.exception_handler(Exception)(_unexpected_error)
