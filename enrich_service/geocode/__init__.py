"""The local geocoder: normalize (normalize.py, words.py), the reference (reference.py), the matcher (matcher.py),
the result cache (cache.py), geocode-then-tag (join.py), the PostGIS loader (postgis.py) and the accuracy
evaluation (evaluate.py). `build_geocoder` is what the service index calls, beside the layers."""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from pathlib import Path

import numpy as np
import shapely

from ..layers.store import LayerStore, LayerVersion
from ..server.disk_cache import cached, code_digest
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
    return Geocoder(reference, cache_for(reference.sha256), outside_zips(store, reference, settings.cache_dir))


# A postal ZIP is another city's when its ZCTA lies mostly outside the city limits (less than this share of its area
# inside) and the city's own reference holds (almost) no street or address there: 92025 (Escondido) is 24% inside
# by area (San Pasqual Valley) with no reference street; 92014 (Del Mar) is 48% inside with 185 segments (Carmel
# Valley), 92127 52% with 368: San Diego's. Measured: docs/geocode.md.
OTHER_ZIP_MAX_SHARE = 0.5
OTHER_ZIP_MAX_REFERENCE = 20
SAN_DIEGO_POSTAL_PREFIX = "921"  # San Diego's own postal ZIPs (PO boxes, unique ZIPs) that have no ZCTA
# ... and La Jolla's outside 921xx: PO boxes (92038, 92039, 92092) and UCSD (92093)
SAN_DIEGO_POSTAL_OTHER = frozenset({"92038", "92039", "92092", "92093"})


class OtherCityZips:
    """The ZIPs that name another city: `zip in other` (a frozenset of the zip layer's, plus any ZIP the layer lacks
    outside San Diego's 921xx: "90210")."""

    def __init__(self, outside: frozenset, known: frozenset):
        self.outside, self.known = outside, known

    def __contains__(self, zip5: object) -> bool:
        return zip5 in self.outside or (bool(self.known) and zip5 not in self.known and isinstance(zip5, str)
                                        and len(zip5) == 5 and not zip5.startswith(SAN_DIEGO_POSTAL_PREFIX)
                                        and zip5 not in SAN_DIEGO_POSTAL_OTHER)

    def __len__(self) -> int:
        return len(self.outside)

    def __iter__(self):
        return iter(sorted(self.outside))


def inside_share(zips: LayerVersion, city: LayerVersion, cache_dir: Path | None = None) -> np.ndarray:
    """Each ZIP's share of its area inside the city limits. With `cache_dir`, read from the service's disk cache when
    both layer files (and the code that reads them) are unchanged: intersecting the ZIP areas with the limits took
    ~0.2 s of CPU of every start (docs/engine.md, "Start-up and memory")."""
    def build() -> np.ndarray:
        limits = shapely.union_all(city.geoms)
        return shapely.area(shapely.intersection(zips.geoms, limits)) / np.maximum(shapely.area(zips.geoms), 1e-30)

    if cache_dir is None:
        return build()
    here = Path(__file__).parent
    digest = code_digest(here / "__init__.py", here.parent / "layers" / "store.py")
    key = hashlib.sha256(f"{zips.source.sha256}:{city.source.sha256}".encode()).hexdigest()[:32]
    return cached(Path(cache_dir) / "zip-share" / f"{key}-{digest}.pickle", build)[0]


def outside_zips(store: LayerStore, reference=None, cache_dir: Path | None = None) -> OtherCityZips | frozenset:
    """The ZIPs of another city: an address given with one of them is that city's ("1200 Orange Ave, 92118" is
    Coronado, "4608 Gardena Ave 92020" El Cajon), whatever same-named street San Diego has."""
    zips, city = store.versions.get(ZIP_LAYER), store.versions.get(CITY_LIMITS)
    if not zips or not city:
        return frozenset()
    v = zips[-1]
    inside = inside_share(v, city[-1], cache_dir)
    held: Counter[str] = Counter()
    if reference is not None:
        held.update(reference.pt_zip_list)
        held.update(reference.seg_zip.tolist())
    outside = frozenset(str(k) for k, share in zip(v.keys, inside.tolist())
                        if share < OTHER_ZIP_MAX_SHARE and held.get(str(k), 0) < OTHER_ZIP_MAX_REFERENCE)
    return OtherCityZips(outside, frozenset(str(k) for k in v.keys))
