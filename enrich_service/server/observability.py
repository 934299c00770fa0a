"""Metrics (Prometheus), structured JSON logs, request ids, and the request timeout: one ASGI middleware.

Pure ASGI rather than BaseHTTPMiddleware, which would buffer and break the streamed NDJSON answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
import uuid

import orjson
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

log = logging.getLogger("enrich_service.access")

REGISTRY = CollectorRegistry()
REQUESTS = Counter("enrich_requests_total", "HTTP requests", ["route", "method", "status"], registry=REGISTRY)
LATENCY = Histogram("enrich_request_seconds", "HTTP request latency", ["route", "method"], registry=REGISTRY,
                    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
POINTS = Counter("enrich_points_tagged_total", "Points tagged, per layer", ["layer"], registry=REGISTRY)
GEOCODES = Counter("enrich_geocode_matches_total", "Geocoded records, per match level", ["level"],
                   registry=REGISTRY)
BUILD_SECONDS = Gauge("enrich_index_build_seconds", "Time the serving index took to build", registry=REGISTRY)
GENERATION = Gauge("enrich_index_generation", "Generation of the serving index (0 at start, +1 per reload)",
                   registry=REGISTRY)
LAYER_VERSION = Gauge("enrich_layer_version_info", "Layer versions loaded (1 per version)",
                      ["layer", "version", "sha256"], registry=REGISTRY)
RELOADS = Counter("enrich_reloads_total", "Index reloads, by outcome", ["outcome"], registry=REGISTRY)


def record_index(index) -> None:
    BUILD_SECONDS.set(index.build_seconds)
    GENERATION.set(index.generation)
    LAYER_VERSION.clear()
    for layer, versions in index.versions().items():
        for v in versions:
            LAYER_VERSION.labels(layer, v["version"], v["sha256"]).set(1)


_points_counted: dict[str, Counter] = {}  # layer -> its POINTS child (labels() builds its key and locks per call)


def count_points(layers: list[str], n: int) -> None:
    for layer in layers:
        child = _points_counted.get(layer)
        if child is None:
            child = _points_counted[layer] = POINTS.labels(layer)
        child.inc(n)


def metrics_body() -> tuple[bytes, str]:
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


class JSONFormatter(logging.Formatter):
    """One JSON object per line; `extra` fields passed to a log call become keys."""

    _skip = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}
    _second: tuple[int, str] = (-1, "")  # the last timestamp written: one strftime per second, not per line

    def format(self, record: logging.LogRecord) -> str:
        second = int(record.created)
        if second != self._second[0]:
            self._second = (second, self.formatTime(record, "%Y-%m-%dT%H:%M:%S"))
        out = {"ts": self._second[1], "level": record.levelname, "logger": record.name, "msg": record.getMessage()}
        out.update({k: v for k, v in record.__dict__.items() if k not in self._skip})
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(out, default=str).decode()


class BatchedAccessHandler(logging.StreamHandler):
    """stderr, with the access log's lines written in batches: a write (a system call) per request cost more than
    the rest of a single lookup's line. Access lines wait at most FLUSH_S (or ACCESS_BATCH lines); any other record
    is written at once, after the access lines before it, so the order holds. Exit flushes what is left
    (logging.shutdown); a process killed outright loses at most FLUSH_S of access lines."""

    FLUSH_S = 0.25
    ACCESS_BATCH = 512

    def __init__(self) -> None:
        super().__init__()
        self._pending: list[str] = []
        self._flusher: threading.Thread | None = None

    def emit(self, record: logging.LogRecord) -> None:  # called under self.lock (Handler.handle)
        try:
            self._pending.append(self.format(record))
            if record.name != log.name or len(self._pending) >= self.ACCESS_BATCH:
                self._write()
            elif self._flusher is None:
                self._flusher = threading.Thread(target=self._flush_every, name="access-log", daemon=True)
                self._flusher.start()
        except Exception:  # noqa: BLE001 - logging must not fail a request (the standard handlers' rule)
            self.handleError(record)

    def _write(self) -> None:
        lines, self._pending = self._pending, []
        self.stream.write("\n".join(lines) + "\n")  # one write: line buffering flushes once per call
        self.stream.flush()

    def flush(self) -> None:
        self.acquire()
        try:
            if self._pending:
                self._write()
        finally:
            self.release()
        super().flush()

    def _flush_every(self) -> None:
        while True:
            time.sleep(self.FLUSH_S)
            with contextlib.suppress(Exception):
                self.flush()


def configure_logging(level: str = "INFO", json_logs: bool = True) -> None:
    handler = BatchedAccessHandler()
    handler.setFormatter(JSONFormatter() if json_logs else
                         logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


class ObservabilityMiddleware:
    """Request id (X-Request-ID, echoed or made), access log, metrics, and a timeout that answers 504."""

    def __init__(self, app, timeout_s: float):
        self.app = app
        self.timeout_s = timeout_s

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        request_id = new_request_id(dict(scope.get("headers") or ()).get(b"x-request-id"))
        started = scope.get(STARTED_KEY) or time.perf_counter()  # the fast front's start, when it passed it on
        status = {"code": 500, "sent": False}

        async def send_with_id(message):
            if message["type"] == "http.response.start":
                status["code"], status["sent"] = message["status"], True
                message = {**message, "headers": [*message.get("headers", []),
                                                  (b"x-request-id", request_id.encode("latin-1"))]}
            await send(message)

        try:
            async with asyncio.timeout(self.timeout_s):
                await self.app(scope, receive, send_with_id)
        except TimeoutError:
            if status["sent"]:
                raise
            status["code"] = 504
            body = timeout_body(self.timeout_s)
            await send({"type": "http.response.start", "status": 504,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"x-request-id", request_id.encode("latin-1"))]})
            await send({"type": "http.response.body", "body": body})
        finally:
            route = scope.get("route")
            observe(getattr(route, "path", None) or "unmatched", scope["method"], status["code"],
                    time.perf_counter() - started, request_id)


STARTED_KEY = "enrich.started"  # in the scope: when the fast front (fast_path.py) began a request it then declined


def timeout_body(timeout_s: float) -> bytes:
    """The 504 answer's body: the request took longer than ENRICH_REQUEST_TIMEOUT_S."""
    return orjson.dumps({"detail": f"request took longer than {timeout_s:g} s (ENRICH_REQUEST_TIMEOUT_S); split the "
                                   f"batch", "code": "timeout", "field": None})


def new_request_id(given: bytes | None) -> str:
    """The client's X-Request-ID (its first 128 characters), or a new one."""
    return (given or b"").decode("latin-1")[:128] or uuid.uuid4().hex


UNLOGGED = frozenset({"/healthz", "/readyz", "/metrics"})
_counted: dict[tuple[str, str, int], tuple] = {}  # (route, method, status) -> its two metric children


def observe(route: str, method: str, status: int, elapsed: float, request_id: str) -> None:
    """A request's metrics and its access log line: every route, whichever path answered it (fast_path.py too)."""
    children = _counted.get((route, method, status))
    if children is None:  # labels() takes a lock and builds its key each call: looked up once per combination
        children = _counted[route, method, status] = (REQUESTS.labels(route, method, str(status)),
                                                      LATENCY.labels(route, method))
    children[0].inc()
    children[1].observe(elapsed)
    if route not in UNLOGGED and log.isEnabledFor(logging.INFO):
        log.handle(_access_record({"request_id": request_id, "method": method, "route": route, "status": status,
                                   "ms": round(elapsed * 1000, 2)}))


_template: dict = {}


def _access_record(fields: dict) -> logging.LogRecord:
    """The record log.info("request", extra=fields) makes, made from a copy of the first one: the logging module
    looks for its caller in the stack and reads the process and thread for every record, most of a lookup's log
    line. Handlers, filters and formatters see the same record."""
    if _template.get("process") != os.getpid():
        _template.clear()
        _template.update(log.makeRecord(log.name, logging.INFO, __file__, 0, "request", (), None).__dict__)
    record = logging.LogRecord.__new__(logging.LogRecord)
    record.__dict__.update(_template)
    now = time.time()
    thread = threading.current_thread()
    record.__dict__.update(fields, created=now, msecs=int((now - int(now)) * 1000) + 0.0,
                           relativeCreated=_template["relativeCreated"] + (now - _template["created"]) * 1000,
                           thread=thread.ident, threadName=thread.name)
    return record
