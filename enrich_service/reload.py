"""Building the index off the event loop and swapping it in: at start-up, on POST /v1/admin/reload, on SIGHUP.

One build at a time; a build that fails validation is refused and the old index keeps serving. Under
`serve --workers N` each worker holds its own index: POST /v1/admin/reload asks the supervisor, which passes
SIGHUP on to every worker, and answers with this worker's outcome once its own reload is done.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal

from starlette.concurrency import run_in_threadpool

from .errors import EnrichError, ReloadRefused
from .index import ServiceIndex, build_index
from .memory import release_freed_memory
from .observability import RELOADS, record_index
from .settings import get_settings
from .workers import SUPERVISOR_ENV

log = logging.getLogger(__name__)


def _release_in_background(app) -> None:
    # Not awaited: the reload answers as soon as the swap is done (answers from the new index are already going out).
    app.state.release_task = asyncio.ensure_future(run_in_threadpool(release_freed_memory))


def _lock(app) -> asyncio.Lock:
    if not hasattr(app.state, "reload_lock"):
        app.state.reload_lock = asyncio.Lock()
    return app.state.reload_lock


async def reload_index(app) -> ServiceIndex:
    async with _lock(app):
        old = getattr(app.state, "index", None)
        generation = (old.generation + 1) if old is not None else 0
        try:
            index = await run_in_threadpool(build_index, get_settings(), generation)
        except EnrichError as exc:
            RELOADS.labels("refused").inc()
            log.error("index generation %d refused: %s", generation, exc.message)
            if old is None:
                app.state.load_error = exc.message
            _release_in_background(app)  # what the refused build allocated
            raise ReloadRefused(f"reload refused, still serving generation "
                                f"{old.generation if old else 'none'}: {exc.message}") from None
        except Exception as exc:  # a reader bug must not take the serving index down with it
            RELOADS.labels("failed").inc()
            log.exception("index generation %d failed", generation)
            if old is None:
                app.state.load_error = str(exc)
            raise ReloadRefused(f"reload failed: {exc}") from None
        app.state.index = index  # the swap: one reference assignment, atomic for every reader
        app.state.load_error = None
        RELOADS.labels("swapped").inc()
        record_index(index)
        _release_in_background(app)
        return index


async def _reload_on_signal(app) -> ServiceIndex | EnrichError:
    log.info("SIGHUP: reloading layers")
    try:
        return await reload_index(app)
    except EnrichError as exc:  # logged by reload_index; the old index keeps serving
        return exc


def reload_on_sighup(app) -> None:
    """The SIGHUP handler: a reload in the background, kept where reload_every_worker can wait for it."""
    app.state.signal_reload = asyncio.ensure_future(_reload_on_signal(app))


async def reload_every_worker(app) -> ServiceIndex:
    """reload_index in every worker of the supervisor (or in this process when it has none)."""
    supervisor = os.environ.get(SUPERVISOR_ENV, "")
    if not supervisor.isdigit() or int(supervisor) != os.getppid():
        return await reload_index(app)
    before = getattr(app.state, "signal_reload", None)
    os.kill(int(supervisor), signal.SIGHUP)  # passed on to every worker, this one included
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10  # the supervisor looks at its signals every 0.5 s
    while getattr(app.state, "signal_reload", None) is before:
        if loop.time() > deadline:
            log.warning("the supervisor did not pass the reload on; reloading this worker only")
            return await reload_index(app)
        await asyncio.sleep(0.05)
    outcome = await asyncio.shield(app.state.signal_reload)
    if isinstance(outcome, EnrichError):
        raise outcome
    return outcome
