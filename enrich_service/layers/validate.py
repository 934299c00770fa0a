"""Is a freshly built layer set right enough to serve? Checks against the manifest and the last accepted set.

Parseable is not right: a districts file where every feature says "3", where 8 of 9 districts are missing, or whose
lines moved 1 km reads fine and would tag every row wrong. Each check has a name; a refusal names the check that
failed (ReloadRefused.check), and the old set keeps serving.

  no_polygons     every version has polygons
  manifest_keys   the key set the manifest lists for a version (`keys:`), when it lists one
  feature_count   a version whose file changed has as many features as the accepted file of that version
  key_set         ... and the same keys
  area_change     ... and no key's area changed by more than MAX_AREA_CHANGE (symmetric difference over the
                  accepted area: a 1 km shift changes a district's area by ~nothing, its symmetric difference a lot)
  city_coverage   the newest version of a layer the manifest marks `min_city_coverage` covers that share of the
                  city limits
  known_places    every manifest sanity point answers as expected, for each layer it names

A deliberate change (a redistricting) is a new version in the manifest (its own file and effective date), which
has no accepted file to be compared with; it still passes manifest_keys, city_coverage and known_places.
"""

from __future__ import annotations

import logging

import numpy as np
import shapely

from ..errors import ReloadRefused
from .store import LayerStore, LayerVersion, to_metric

log = logging.getLogger(__name__)

# Largest share of a key's accepted area that may change (symmetric difference) without a new manifest version.
# Re-exports of the same lines differ by far less (repairs, rounding); a 1 km shift of a council district by 10-60 %.
MAX_AREA_CHANGE = 0.02


def _refuse(check: str, message: str):
    raise ReloadRefused(f"check {check} failed: {message}", check=check)


def _sample(values, n: int = 5) -> str:
    values = sorted(values)
    return ", ".join(map(repr, values[:n])) + (f" and {len(values) - n} more" if len(values) > n else "")


def validate_store(store: LayerStore, engine, previous: LayerStore | None) -> None:
    """Raise ReloadRefused naming the first failed check."""
    for name, versions in store.versions.items():
        for v in versions:
            if v.n_features == 0 or len(v.parts) == 0:
                _refuse("no_polygons", f"layer {name} version {v.version} has no polygons")
    for name, spec in store.specs.items():
        for vspec, v in zip(spec.versions, store.versions[name]):
            if vspec.keys and set(v.keys) != set(vspec.keys):
                _refuse("manifest_keys", f"layer {name} version {v.version}: keys {_keys_diff(set(vspec.keys), v)} "
                                         f"against the manifest's {len(vspec.keys)} keys")
    if previous is not None:
        for name, versions in store.versions.items():
            before = {v.version: v for v in previous.versions.get(name, [])}
            for v in versions:
                old = before.get(v.version)
                if old is not None and old.source.sha256 != v.source.sha256:
                    compare_versions(old, v)
    _check_coverage(store)
    _check_known_places(store, engine)


def _keys_diff(want: set, v: LayerVersion) -> str:
    got = set(v.keys)
    parts = []
    if want - got:
        parts.append(f"missing {_sample(want - got)}")
    if got - want:
        parts.append(f"unexpected {_sample(got - want)}")
    return "; ".join(parts)


def compare_versions(old: LayerVersion, new: LayerVersion) -> None:
    """The same version of a layer from a changed file: the same features, keys and (within MAX_AREA_CHANGE) areas."""
    where = f"layer {new.layer} version {new.version} (sha256 {new.source.sha256[:12]} against the accepted " \
            f"{old.source.sha256[:12]})"
    if set(old.keys) != set(new.keys):
        _refuse("key_set", f"{where}: keys {_keys_diff(set(old.keys), new)}")
    if old.n_features != new.n_features:
        _refuse("feature_count", f"{where}: {new.n_features} features, the accepted file has {old.n_features}")
    changed = {}
    old_m, new_m = to_metric(old.geoms), to_metric(new.geoms)
    for key in sorted(set(old.keys)):
        a = shapely.union_all(old_m[old.keys == key])
        b = shapely.union_all(new_m[new.keys == key])
        share = shapely.area(shapely.symmetric_difference(a, b)) / max(shapely.area(a), 1.0)
        if share > MAX_AREA_CHANGE:
            changed[key] = share
    if changed:
        worst = sorted(changed.items(), key=lambda kv: -kv[1])[:5]
        _refuse("area_change", f"{where}: {len(changed)} of {len(set(old.keys))} keys changed area by more than "
                               f"{MAX_AREA_CHANGE:.0%} (" + ", ".join(f"{k!r} {s:.0%}" for k, s in worst) + "); "
                               "a deliberate change is a new version in the manifest")


def _check_coverage(store: LayerStore) -> None:
    floors = {name: spec.min_city_coverage for name, spec in store.specs.items() if spec.min_city_coverage}
    if not floors or "city_limits" not in store.versions:
        return
    city = shapely.union_all(to_metric(store.versions["city_limits"][-1].geoms))
    for name, floor in floors.items():
        v = store.versions[name][-1]
        covered = shapely.area(shapely.intersection(city, shapely.union_all(to_metric(v.geoms)))) / city.area
        if covered < floor:
            _refuse("city_coverage", f"layer {name} version {v.version} covers {covered:.1%} of the city limits, "
                                     f"the manifest asks for at least {floor:.1%}")


def _check_known_places(store: LayerStore, engine) -> None:
    points = store.manifest.sanity_points
    if not points:
        return
    layers = sorted({layer for p in points for layer in p.expect if layer in store.versions})
    result = engine.tag(np.array([p.lon for p in points]), np.array([p.lat for p in points]),
                        np.ones(len(points), dtype=bool), layers)
    wrong = []
    for layer in layers:
        got = result.layers[layer].keys()
        for i, p in enumerate(points):
            if layer in p.expect and got[i] != p.expect[layer]:
                wrong.append(f"{p.name} answers {layer}={got[i]!r}, expected {p.expect[layer]!r}")
    if wrong:
        _refuse("known_places", f"{len(wrong)} known places answer wrong: " + "; ".join(wrong[:6]))
