"""A layer version as GeoJSON for display: simplified, coordinates rounded, built once per (file, tolerance).

Display only: answers never come from these shapes (the index tags against the full-resolution polygons).
"""

from __future__ import annotations

import gzip
import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import orjson
import shapely

from .store import LayerVersion

# Metres per degree of latitude; a degree of longitude is shorter (cos 33° ≈ 0.84 in San Diego), so a tolerance
# converted with this is a little finer than asked east-west, never coarser.
_M_PER_DEGREE = 111_320.0
# 6 decimals of a degree: about 10 cm, finer than any display tolerance.
_DECIMALS = 6
# Most bytes the cache holds (GeoJSON and its gzip): the four layers at a few tolerances fit many times over
# (the ZIP areas, the largest, are 2.9 MB unsimplified), and a client asking for a new tolerance on every request
# cannot grow the service past it.
_CACHE_BYTES = 32 << 20


@dataclass(frozen=True)
class DisplayFeatures:
    body: bytes  # GeoJSON FeatureCollection
    gzipped: bytes
    etag: str

    @property
    def size(self) -> int:
        return len(self.body) + len(self.gzipped)


_cache: OrderedDict[tuple, DisplayFeatures] = OrderedDict()
_lock = threading.Lock()


def display_features(version: LayerVersion, simplify_m: float) -> DisplayFeatures:
    """The version's features simplified to `simplify_m` metres (0: as published), cached by sha256 and tolerance:
    a reload that brings a new file brings new shapes, one that brings the same file reuses them."""
    simplify_m = round(float(simplify_m), 3)
    key = (version.layer, version.version, version.source.sha256, simplify_m)
    with _lock:
        hit = _cache.get(key)
        if hit is not None:
            _cache.move_to_end(key)
            return hit
    built = _build(version, simplify_m)
    with _lock:
        _cache[key] = built
        while len(_cache) > 1 and sum(f.size for f in _cache.values()) > _CACHE_BYTES:
            _cache.popitem(last=False)
    return built


def _build(version: LayerVersion, simplify_m: float) -> DisplayFeatures:
    geoms = version.geoms
    if simplify_m > 0:
        geoms = shapely.simplify(geoms, simplify_m / _M_PER_DEGREE, preserve_topology=True)
    geoms = shapely.transform(geoms, lambda xy: np.round(xy, _DECIMALS))
    texts = shapely.to_geojson(geoms)
    parts = []
    for i, text in enumerate(texts):
        props = {"key": version.keys[i], "label": version.labels[i], **version.fields[i]}
        parts.append(b'{"type":"Feature","id":%d,"properties":%s,"geometry":%s}'
                     % (i, orjson.dumps(props, option=orjson.OPT_SERIALIZE_NUMPY), text.encode()))
    meta = orjson.dumps({"layer": version.layer, "version": version.version, "sha256": version.source.sha256,
                         "effective_from": version.effective_from.isoformat(),
                         "effective_to": version.effective_to.isoformat() if version.effective_to else None,
                         "simplify_m": simplify_m, "bbox": list(version.bbox)})
    body = b'{"type":"FeatureCollection","metadata":%s,"features":[%s]}' % (meta, b",".join(parts))
    etag = f'"{version.source.sha256[:16]}-{version.version}-{simplify_m:g}"'
    return DisplayFeatures(body=body, gzipped=gzip.compress(body, compresslevel=6), etag=etag)
