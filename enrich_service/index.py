"""What a request reads: the layers and their indexes, built together, validated, then swapped in as one object.

Requests take `current(app)` once and use it to the end, so a reload that swaps `app.state.index` never changes
the index under a request in flight.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from .engine.tagger import Engine
from .errors import EnrichError, LayersVersionMismatch, NotReady, ReloadRefused
from .geocode import build_geocoder
from .geocode.matcher import Geocoder
from .layers.accepted import set_sha256
from .layers.store import LayerStore
from .layers.validate import validate_store
from .server.layer_version import EXPECT_HEADER, pin
from .settings import Settings

log = logging.getLogger(__name__)


@dataclass(eq=False)
class ServiceIndex:
    store: LayerStore
    engine: Engine
    built_at: dt.datetime
    build_seconds: float
    generation: int = 0
    geocoder: Geocoder | None = None  # built beside the layers, swapped with them; None: geocoding is off

    @cached_property
    def layers_sha256(self) -> str:
        """The layer set's one sha256 (over every layer file's): what X-Enrich-Layers-Sha256 names."""
        return set_sha256({name: sha for name, (_, sha) in self.store.files().items()})

    def versions(self) -> dict[str, list[dict]]:
        out = {name: [{"version": v.version, "sha256": v.source.sha256} for v in vs]
               for name, vs in self.store.versions.items()}
        if self.geocoder is not None:  # the geocoder's reference, reported like a layer (version: its sha256 prefix)
            sha = self.geocoder.sha256
            out["geocode_reference"] = [{"version": sha[:12], "sha256": sha}]
        return out


def build_index(settings: Settings, generation: int = 0, previous: ServiceIndex | None = None,
                folders: dict[str, Path] | None = None, validated: frozenset[str] = frozenset()) -> ServiceIndex:
    """Load, index and validate. `folders`: read these files from there (the accepted set) instead of the boundary
    folder; `previous`: the accepted index to compare a changed file with; `validated`: layer sets (sha256) that
    passed validation before, so not validated again (the files are the same bytes)."""
    t0 = time.perf_counter()
    store = LayerStore.load(settings.manifest, settings.boundary_dir, settings.cache_dir, folders)
    engine = Engine(store, grid_cells=settings.grid_cells, use_grid=settings.use_grid,
                    cache_dir=settings.cache_dir)
    try:
        geocoder = build_geocoder(settings, store)  # beside the layers: a reload swaps both at once
    except EnrichError as exc:
        if generation > 0:  # a reload keeps the serving index (and its geocoder) rather than lose the geocoder
            raise
        # At start, point lookups do not wait on the geocoder: the layers serve, /v1/geocode answers 503.
        log.error("geocoder reference unusable, geocoding off until a reload: %s", exc.message)
        geocoder = None
    index = ServiceIndex(store=store, engine=engine, built_at=dt.datetime.now(dt.UTC),
                         build_seconds=time.perf_counter() - t0, generation=generation,
                         geocoder=geocoder)
    if index.layers_sha256 not in validated:
        validate(index, previous)
    log.info("index generation %d ready in %.2fs (layers %.2fs, indexes %.2fs, geocoder %.2fs)", generation,
             index.build_seconds, store.load_seconds, engine.build_seconds,
             geocoder.ref.load_seconds if geocoder is not None else 0.0)
    return index


def validate(index: ServiceIndex, previous: ServiceIndex | None = None) -> None:
    """Refuse an index that cannot be right (layers/validate.py: each check named), compared with `previous`, the
    accepted index it would replace (None: with the manifest only)."""
    validate_store(index.store, index.engine, previous.store if previous is not None else None)
    geocoder = index.geocoder
    if geocoder is not None and (len(geocoder.ref.pt_lon) == 0 or len(geocoder.ref.seg_geom) == 0):
        raise ReloadRefused("the geocoder reference has no address points or no street segments",
                            check="geocode_reference")


def current(app) -> ServiceIndex:
    index = getattr(app.state, "index", None)
    if index is None:
        raise NotReady("layers are still loading; retry shortly")
    expected = pin(index.layers_sha256)
    if expected is not None:
        raise LayersVersionMismatch(f"this worker serves layer set {index.layers_sha256}, the request expects "
                                    f"{expected}; retry (the replicas follow the accepted set)",
                                    field=EXPECT_HEADER)
    return index
