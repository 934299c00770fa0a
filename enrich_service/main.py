"""The application: routers, the lifespan that builds the index, error handlers, middleware. Nothing else."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys

from fastapi import Depends, FastAPI
from fastapi.middleware.cors import CORSMiddleware

from . import __version__
from .api import admin, geocode, health, layers, page, pip
from .bulk.geocode_join import REFERENCE_HEADER
from .errors import EnrichError, install_handlers
from .io.responses import JSONResponse
from .server.fast_path import FAST_BODY_BYTES, FastBodyRoute, FastPath, FastRoute
from .server.layer_version import SERVED_HEADER, LayerVersionMiddleware
from .server.memory import keep_freed_memory
from .server.observability import ObservabilityMiddleware, configure_logging
from .server.parallel import passive_threads
from .server.reload import follow_accepted, reload_index, reload_on_sighup
from .server.security import require_read_key
from .settings import get_settings

log = logging.getLogger(__name__)

GIL_SWITCH_S = 0.0005


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI):
    # Ready before serving: uvicorn listens only once the lifespan has started, so a worker takes no connection
    # before its index is built (under --workers N its siblings take them; behind nginx, the other replicas).
    # A worker whose load failed still starts, so /readyz can say why (503 "failed").
    await _initial_load(app)
    follow = asyncio.create_task(follow_accepted(app))
    loop = asyncio.get_running_loop()
    with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
        loop.add_signal_handler(signal.SIGHUP, reload_on_sighup, app)
    yield
    follow.cancel()


async def _initial_load(app: FastAPI) -> None:
    with contextlib.suppress(EnrichError):  # logged by reload_index; /readyz reports it
        await reload_index(app, "start")


def create_app() -> FastAPI:
    settings = get_settings()
    keep_freed_memory(settings.keep_freed_mb)  # every worker process builds its app here
    passive_threads()
    # Batches run in threads (api/common.offload) and hold the GIL; the event loop waiting to answer a single lookup
    # got it back only after Python's switch interval, 5 ms by default, per wait. 0.5 ms bounds that wait.
    sys.setswitchinterval(GIL_SWITCH_S)
    if not logging.getLogger().handlers:  # started by uvicorn directly rather than `enrich-service serve`
        configure_logging(settings.log_level, settings.json_logs)
    app = FastAPI(
        title="City enrichment service",
        version=__version__,
        description="Tags city records with council district, neighborhood and zip: batch point-in-polygon, "
                    "single-point lookups and geocode-join.",
        default_response_class=JSONResponse,
        lifespan=lifespan,
        # /docs and /redoc are served by api/page.py from the npm packages installed here, not from a CDN.
        docs_url=None, redoc_url=None, swagger_ui_oauth2_redirect_url=None,
    )
    read = [Depends(require_read_key)]
    app.include_router(health.router)
    app.include_router(layers.router, dependencies=read)
    app.include_router(pip.router, dependencies=read)
    app.include_router(geocode.router, dependencies=read)
    app.include_router(admin.router)
    app.include_router(page.router)  # the page for GIS staff, /docs and /redoc: static, no key needed
    page.mount_assets(app, settings)
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["*"],
                           expose_headers=["X-Enrich-Layers", SERVED_HEADER, "X-Request-ID", REFERENCE_HEADER])
    app.add_middleware(ObservabilityMiddleware, timeout_s=settings.request_timeout_s)
    app.add_middleware(LayerVersionMiddleware)  # X-Enrich-Expect-Layers in, X-Enrich-Layers-Sha256 out
    # Outermost: an ordinary single lookup is answered before the stack above, anything else passes through.
    app.add_middleware(FastPath, routes=(
        FastRoute("/v1/pip", frozenset(param.name for param in pip.GET_PARAMS), pip.get_pip_fast),),
        body_routes=(FastBodyRoute("/v1/pip", FAST_BODY_BYTES, pip.post_pip_fast),))
    install_handlers(app)
    return app
