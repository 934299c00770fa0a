"""Building the index off the event loop and swapping it in: at start-up, on POST /v1/admin/reload, on SIGHUP, and
when another worker or replica accepted a new layer set (follow_accepted).

One build at a time; a build that fails validation is refused and the old index keeps serving. A start loads the
last accepted set (layers/accepted.py), never files in the boundary folder that no reload validated; only SIGHUP and
the admin reload read the boundary folder, and what passes there becomes the accepted set for everyone. Under
`serve --workers N` each worker holds its own index: POST /v1/admin/reload asks the supervisor, which passes
SIGHUP on to every worker, and answers with this worker's outcome once its own reload is done.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from pathlib import Path

from starlette.concurrency import run_in_threadpool

from ..errors import EnrichError, ReloadRefused
from ..index import ServiceIndex, build_index
from ..layers.accepted import AcceptedStore
from ..layers.manifest import load_manifest
from ..layers.sources import sha256_of
from ..settings import accepted_dir, get_settings
from .memory import (
    keep_pandas_out_of_pyarrow,
    release_freed_memory,
    release_startup_library_pages,
    served_by_enrich_service,
)
from .observability import RELOADS, record_index
from .warm_up import warm_up
from .workers import SUPERVISOR_ENV

log = logging.getLogger(__name__)


def _warm_mb() -> int:
    return get_settings().warm_heap_mb if served_by_enrich_service() else 0


def _release_in_background(app) -> None:
    # Not awaited: the reload answers as soon as the swap is done (answers from the new index are already going out).
    app.state.release_task = asyncio.ensure_future(run_in_threadpool(release_freed_memory, _warm_mb()))


def _lock(app) -> asyncio.Lock:
    if not hasattr(app.state, "reload_lock"):
        app.state.reload_lock = asyncio.Lock()
    return app.state.reload_lock


def accepted_store(settings=None) -> AcceptedStore:
    return AcceptedStore(accepted_dir(settings or get_settings()))


def _from_accepted(settings, generation: int) -> ServiceIndex | None:
    """The last accepted set, from its kept copies; None when there is none this manifest can use."""
    store = accepted_store(settings)
    accepted = store.read()
    if accepted is None:
        return None
    paths = store.paths(accepted)
    wanted = {v.source.file for spec in load_manifest(settings.manifest).layers.values() for v in spec.versions}
    if paths is None or set(paths) != wanted:
        log.warning("the accepted layer set %s does not fit this manifest (or its copies are gone): not used",
                    accepted.sha256[:12])
        return None
    return build_index(settings, generation, folders={name: p.parent for name, p in paths.items()},
                       validated=frozenset([accepted.sha256]))


def _from_disk(settings, generation: int, previous: ServiceIndex | None) -> ServiceIndex:
    """The files in the boundary folder, validated against `previous`, then recorded as the accepted set."""
    accepted = accepted_store(settings).read()
    try:
        index = build_index(settings, generation, previous=previous,
                            validated=frozenset([accepted.sha256] if accepted else []))
    except ReloadRefused as exc:
        _record_refusal(settings, exc.check or "unreadable", exc.message)
        raise
    except EnrichError as exc:
        _record_refusal(settings, "unreadable", exc.message)
        raise
    accepted_store(settings).record(index.store.files())
    return index


def _record_refusal(settings, check: str, reason: str) -> None:
    if settings.boundary_dir is None:
        return
    files = {}
    for spec in load_manifest(settings.manifest).layers.values():
        for v in spec.versions:
            path = Path(settings.boundary_dir) / v.source.file
            files[v.source.file] = sha256_of(path) if path.is_file() else "missing"
    accepted_store(settings).record_refusal(files, check, reason)


async def reload_index(app, source: str = "disk") -> ServiceIndex:
    """source: "disk" (SIGHUP, admin: the boundary folder, validated and accepted), "accepted" (follow the
    accepted set) or "start" (the accepted set; the boundary folder only when there is none yet)."""
    async with _lock(app):
        old = getattr(app.state, "index", None)
        if source == "start":
            keep_pandas_out_of_pyarrow()
        generation = (old.generation + 1) if old is not None else 0
        settings = get_settings()
        if source == "accepted" and old is not None:
            accepted = accepted_store(settings).read()
            if accepted is not None and accepted.sha256 == old.layers_sha256:
                return old  # this worker's own reload got there first
        try:
            index = None
            if source in ("start", "accepted"):
                index = await run_in_threadpool(_from_accepted, settings, generation)
                if index is None and source == "accepted":
                    raise ReloadRefused("no usable accepted layer set", check="accepted_set")
            if index is None:
                index = await run_in_threadpool(_from_disk, settings, generation, old)
        except EnrichError as exc:
            RELOADS.labels("refused").inc()
            log.error("index generation %d refused: %s", generation, exc.message)
            if old is None:
                app.state.load_error = exc.message
            _release_in_background(app)  # what the refused build allocated
            raise ReloadRefused(f"reload refused, still serving generation "
                                f"{old.generation if old else 'none'}"
                                f"{' (layer set ' + old.layers_sha256[:12] + ')' if old else ''}: {exc.message}",
                                check=getattr(exc, "check", None) or "unreadable") from None
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
        # The first index of a worker of `enrich-service serve`: warmed before it listens (the lifespan waits for
        # this). An app started in process (tests, notebooks) is not: its first requests are its own.
        if old is None and served_by_enrich_service():
            app.state.warm_up_seconds = await warm_up(app, index)
            released = release_startup_library_pages()
            log.info("start-up only library pages released: %.0f MB", released / 2**20)
            # Awaited, before the worker listens: in the background it made the first request pay for it. Nothing
            # was replaced, so nothing to collect.
            await run_in_threadpool(release_freed_memory, _warm_mb(), collect=False)
        else:
            _release_in_background(app)
        if old is None or old.layers_sha256 != index.layers_sha256:
            log.warning("serving layer set %s (generation %d, from %s)", index.layers_sha256[:12], generation,
                        index.store.read_from)
        return index


async def follow_accepted(app) -> None:
    """Every follow_interval_s: when the accepted set is not the one this worker serves, load it (from its kept
    copies). This is how a reload accepted by one worker reaches its siblings and the other replicas."""
    settings = get_settings()
    if settings.follow_interval_s <= 0:
        return
    store = accepted_store(settings)
    seen = None
    while True:
        await asyncio.sleep(settings.follow_interval_s)
        stamp = store.stamp()
        if stamp is None or stamp == seen:
            continue
        accepted = store.read()
        index = getattr(app.state, "index", None)
        if accepted is not None and (index is None or index.layers_sha256 != accepted.sha256):
            log.warning("following the accepted layer set %s", accepted.sha256[:12])
            try:
                await reload_index(app, "accepted")
            except EnrichError:
                pass  # logged; retried when accepted.json changes again
        seen = stamp


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
