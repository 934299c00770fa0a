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
from .errors import EnrichError, NotReady, ReloadRefused
from .geocode import build_geocoder
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
        out = {name: [{"version": v.version, "sha256": v.source.sha256} for v in vs]
               for name, vs in self.store.versions.items()}
        geocoder = self.extras.get("geocoder")
        if geocoder is not None:  # the geocoder's reference, reported like a layer (version: its sha256 prefix)
            out["geocode_reference"] = [{"version": geocoder.sha256[:12], "sha256": geocoder.sha256}]
        return out


def build_index(settings: Settings, generation: int = 0) -> ServiceIndex:
    t0 = time.perf_counter()
    store = LayerStore.load(settings.manifest, settings.boundary_dir, settings.cache_dir)
    engine = Engine(store, grid_cells=settings.grid_cells, use_grid=settings.use_grid)
    try:
        geocoder = build_geocoder(settings, store)  # beside the layers: a reload swaps both at once
    except EnrichError as exc:
        if generation > 0:  # a reload keeps the serving index (and its geocoder) rather than lose the geocoder
            raise
        # At start, point lookups do not wait on the geocoder: the layers serve, /v1/geocode answers 503.
        log.error("geocoder reference unusable, geocoding off until a reload: %s", exc.message)
        geocoder = None
    index = ServiceIndex(store=store, engine=engine, built_at=dt.datetime.now(dt.timezone.utc),
                         build_seconds=time.perf_counter() - t0, generation=generation,
                         extras={"geocoder": geocoder})
    validate(index)
    log.info("index generation %d ready in %.2fs (layers %.2fs, indexes %.2fs, geocoder %.2fs)", generation,
             index.build_seconds, store.load_seconds, engine.build_seconds,
             geocoder.ref.load_seconds if geocoder is not None else 0.0)
    return index


def validate(index: ServiceIndex) -> None:
    """Refuse an index that cannot be right: an empty layer, or a known place answering wrong."""
    for name, versions in index.store.versions.items():
        for v in versions:
            if v.n_features == 0 or len(v.parts) == 0:
                raise ReloadRefused(f"layer {name} version {v.version} has no polygons")
    geocoder = index.extras.get("geocoder")
    if geocoder is not None and (len(geocoder.ref.pt_lon) == 0 or len(geocoder.ref.seg_geom) == 0):
        raise ReloadRefused("the geocoder reference has no address points or no street segments")
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
