"""Liveness (the process answers) and readiness (layers loaded and indexed)."""

import os

from fastapi import APIRouter, Request
from fastapi.responses import Response

from ..errors import redact_paths
from ..io.responses import JSONResponse
from ..server.observability import metrics_body
from ..server.reload import accepted_store

router = APIRouter(tags=["health"])


# HEAD too, for the load balancers and uptime checkers that probe with it (not in the spec: the same as GET).
@router.get("/healthz", summary="The process is alive")
@router.head("/healthz", include_in_schema=False)
def healthz() -> dict:
    return {"status": "ok"}


@router.get("/readyz", summary="Layers are loaded and indexed")
@router.head("/readyz", include_in_schema=False)
def readyz(request: Request):
    index = getattr(request.app.state, "index", None)
    if index is None:
        error = getattr(request.app.state, "load_error", None)
        return JSONResponse({"status": "loading" if error is None else "failed", "detail": redact_paths(error)},
                              status_code=503)
    # worker_pid: with --workers N, which worker (and so which index generation) answered. layers_sha256: the set
    # it serves; accepted_sha256: the set accepted.json names (they differ for a moment after a reload elsewhere,
    # until this worker follows; longer means it lags, and its log says why).
    accepted = accepted_store().read()
    return redact_paths({"status": "ready", "generation": index.generation, "worker_pid": os.getpid(),
            "layers_sha256": index.layers_sha256, "accepted_sha256": accepted.sha256 if accepted else None,
            "source": index.store.read_from, "versions": index.versions()})  # public: file names, never paths


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
def metrics() -> Response:
    body, content_type = metrics_body()
    return Response(body, media_type=content_type)
