"""What a request reads: the layers and their indexes, built together, validated, then swapped in as one object.

Requests take `current(app)` once and use it to the end, so a reload that swaps `app.state.index` never changes
the index under a request in flight.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from dataclasses import dataclass, field

import numpy as np

from .engine.tagger import Engine
from .errors import NotReady, ReloadRefused
from .layers.store import LayerStore
from .settings import Settings

log = logging.getLogger(__name__)


@dataclass(eq=False)
class ServiceIndex:
    store: LayerStore
    engine: Engine
    built_at: dt.datetime
    build_seconds: float
    generation: int = 0
    extras: dict = field(default_factory=dict)  # e.g. the geocoder, built beside the layers

    def versions(self) -> dict[str, list[dict]]:
        return {name: [{"version": v.version, "sha256": v.source.sha256} for v in vs]
                for name, vs in self.store.versions.items()}


def build_index(settings: Settings, generation: int = 0) -> ServiceIndex:
    t0 = time.perf_counter()
    store = LayerStore.load(settings.manifest, settings.boundary_dir, settings.cache_dir)
    engine = Engine(store, grid_cells=settings.grid_cells, use_grid=settings.use_grid)
    index = ServiceIndex(store=store, engine=engine, built_at=dt.datetime.now(dt.timezone.utc),
                         build_seconds=time.perf_counter() - t0, generation=generation)
    validate(index)
    log.info("index generation %d ready in %.2fs (layers %.2fs, indexes %.2fs)", generation, index.build_seconds,
             store.load_seconds, engine.build_seconds)
    return index


def validate(index: ServiceIndex) -> None:
    """Refuse an index that cannot be right: an empty layer, or a known place answering wrong."""
    for name, versions in index.store.versions.items():
        for v in versions:
            if v.n_features == 0 or len(v.parts) == 0:
                raise ReloadRefused(f"layer {name} version {v.version} has no polygons")
    for point in index.store.manifest.sanity_points:
        layers = [layer for layer in point.expect if layer in index.store.versions]
        result = index.engine.tag(np.array([point.lon]), np.array([point.lat]), np.array([True]), layers)
        for layer in layers:
            got = result.layers[layer].keys()[0]
            if got != point.expect[layer]:
                raise ReloadRefused(f"sanity check failed: {point.name} answers {layer}={got!r}, "
                                    f"expected {point.expect[layer]!r}")


def current(app) -> ServiceIndex:
    index = getattr(app.state, "index", None)
    if index is None:
        raise NotReady("layers are still loading; retry shortly")
    return index
