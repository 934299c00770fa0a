"""The local geocoder: normalize (normalize.py, words.py), the reference (reference.py), the matcher (matcher.py),
the result cache (cache.py), geocode-then-tag (join.py), the PostGIS loader (postgis.py) and the accuracy
evaluation (evaluate.py). `build_geocoder` is what the service index calls, beside the layers."""

from __future__ import annotations

import logging

import shapely

from ..layers.store import LayerStore
from ..settings import Settings
from .cache import cache_for
from .matcher import Geocoder
from .reference import load_reference_cached, reference_configured, resolve_reference

log = logging.getLogger(__name__)

ZIP_LAYER = "zip"
CITY_LIMITS = "city_limits"


def zip_points(store: LayerStore) -> dict[str, tuple[float, float]]:
    """A point inside each ZIP of the zip layer (its newest version): where a zip-level match lands."""
    versions = store.versions.get(ZIP_LAYER)
    if not versions:
        return {}
    v = versions[-1]
    pts = shapely.get_coordinates(shapely.point_on_surface(v.geoms))
    return {str(k): (float(x), float(y)) for k, (x, y) in zip(v.keys, pts)}


def build_geocoder(settings: Settings, store: LayerStore) -> Geocoder | None:
    """The geocoder over the configured reference; None when no reference is configured (the geocode endpoints
    then answer 503 and say so). A configured reference that cannot be read raises, like a broken layer."""
    if not reference_configured(settings):
        log.warning("no geocoder reference configured (ENRICH_REFERENCE_DIR unset and no manifest URLs): "
                    "/v1/geocode answers 503")
        return None
    files = resolve_reference(settings)
    reference = load_reference_cached(files, settings.cache_dir, zip_points(store))
    return Geocoder(reference, cache_for(reference.sha256), outside_zips(store))


def outside_zips(store: LayerStore) -> frozenset:
    """The ZIPs of the zip layer whose area lies wholly outside the city limits (beyond 100 m of them): an address
    given with one of them is another city's ("1200 Orange Ave, 92118" is Coronado)."""
    zips, city = store.versions.get(ZIP_LAYER), store.versions.get(CITY_LIMITS)
    if not zips or not city:
        return frozenset()
    v = zips[-1]
    limits = shapely.buffer(shapely.union_all(city[-1].geoms), 100.0 / 111_000.0)
    return frozenset(str(k) for k, g in zip(v.keys, v.geoms) if not shapely.intersects(g, limits))
