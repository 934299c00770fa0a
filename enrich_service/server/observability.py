"""Metrics (Prometheus), structured JSON logs, request ids, and the request timeout: one ASGI middleware.

Pure ASGI rather than BaseHTTPMiddleware, which would buffer and break the streamed NDJSON answers.
"""

from __future__ import annotations

import asyncio
import logging
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


def metrics_body() -> tuple[bytes, str]:
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


class JSONFormatter(logging.Formatter):
    """One JSON object per line; `extra` fields passed to a log call become keys."""

    _skip = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}

    def format(self, record: logging.LogRecord) -> str:
        out = {"ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"), "level": record.levelname,
               "logger": record.name, "msg": record.getMessage()}
        out.update({k: v for k, v in record.__dict__.items() if k not in self._skip})
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(out, default=str).decode()


def configure_logging(level: str = "INFO", json_logs: bool = True) -> None:
    handler = logging.StreamHandler()
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
        headers = dict(scope.get("headers") or ())
        request_id = headers.get(b"x-request-id", b"").decode("latin-1")[:128] or uuid.uuid4().hex
        started = time.perf_counter()
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
            body = orjson.dumps({"detail": f"request took longer than {self.timeout_s:g} s "
                                           f"(ENRICH_REQUEST_TIMEOUT_S); split the batch", "code": "timeout",
                                 "field": None})
            await send({"type": "http.response.start", "status": 504,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"x-request-id", request_id.encode("latin-1"))]})
            await send({"type": "http.response.body", "body": body})
        finally:
            elapsed = time.perf_counter() - started
            route = scope.get("route")
            path = getattr(route, "path", None) or "unmatched"
            REQUESTS.labels(path, scope["method"], str(status["code"])).inc()
            LATENCY.labels(path, scope["method"]).observe(elapsed)
            if path not in ("/healthz", "/readyz", "/metrics"):
                log.info("request", extra={"request_id": request_id, "method": scope["method"], "route": path,
                                           "status": status["code"], "ms": round(elapsed * 1000, 2)})
