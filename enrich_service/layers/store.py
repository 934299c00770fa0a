"""LayerStore: every version of every layer, loaded and ready to index, and which version is in force on a date."""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import shapely

from ..crs import TO_METRIC
from ..errors import LayerSourceError, NoVersionInForce, UnknownLayer
from ..server.disk_cache import code_digest
from .manifest import LayerSpec, Manifest, VersionSpec, load_manifest
from .reader import read_polygons_cached
from .sources import ResolvedFile, resolve

log = logging.getLogger(__name__)

_CODE = code_digest(Path(__file__))



def to_metric(geoms: np.ndarray) -> np.ndarray:
    return shapely.transform(geoms, lambda xy: np.column_stack(TO_METRIC.transform(xy[:, 0], xy[:, 1])))


@dataclass(eq=False)
class LayerVersion:
    """One version of one layer: features (one per published row) and their polygon parts, in EPSG:4326."""

    layer: str
    version: str
    effective_from: dt.date
    effective_to: dt.date | None
    keys: np.ndarray  # object array of str, one per feature (several features may share a key)
    labels: np.ndarray  # object array of str
    fields: list[dict]  # extra published properties, per feature
    geoms: np.ndarray  # shapely geometries per feature, valid
    area_m2: np.ndarray
    rank: np.ndarray  # int32 per feature: the tie-break order of the edge/overlap rule (lower wins)
    parts: np.ndarray  # shapely Polygons, prepared
    part_feature: np.ndarray  # int32: the feature each part belongs to
    parts_metric: np.ndarray  # the parts in EPSG:32611 metres, for nearest distances
    geometry_sha256: str  # of the geometry read (reader.RawLayer.geometry_sha256): what the parts are made from
    source: ResolvedFile
    source_crs: str
    repairs: tuple[str, ...]
    bbox: tuple[float, float, float, float] = field(init=False)

    def __post_init__(self) -> None:
        x0, y0, x1, y1 = (float(v) for v in shapely.total_bounds(self.geoms))
        self.bbox = (x0, y0, x1, y1)

    @property
    def n_features(self) -> int:
        return len(self.keys)

    def cache_key(self, code: str, *params: object) -> str | None:
        """The disk cache's key for what `code` (a code digest) derives from this version's parts: the digest of the
        geometry read, this module's code (which makes the parts from it), the libraries, and `params`. None when
        the geometry's digest is unknown: build afresh rather than risk a stale file."""
        if not self.geometry_sha256:
            return None
        inputs = (self.geometry_sha256, _CODE, shapely.__version__, shapely.geos_version_string, np.__version__,
                  *map(str, params))
        digest = hashlib.sha256("|".join(inputs).encode()).hexdigest()[:24]
        return f"{self.source.sha256[:16]}-{digest}-{code}"

    def describe(self) -> dict:
        return {
            "version": self.version,
            "effective_from": self.effective_from.isoformat(),
            "effective_to": self.effective_to.isoformat() if self.effective_to else None,
            "features": self.n_features,
            "parts": len(self.parts),
            "bbox": list(self.bbox),
            "source_crs": self.source_crs,
            "source": self.source.describe(),
            "sha256": self.source.sha256,
            "repairs": list(self.repairs),
        }


def _as_key(value: object) -> str | None:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        value = int(value)
    text = str(value).strip()
    return text or None


def _as_keys(column: np.ndarray) -> np.ndarray:
    """_as_key of every value; an integer column (the usual key: ids, cell numbers) in one step."""
    if column.dtype.kind in "iu":
        return column.astype(str).astype(object)
    return np.array([_as_key(v) for v in column], dtype=object)


def build_version(spec: LayerSpec, i: int, resolved: ResolvedFile, cache_dir: Path) -> LayerVersion:
    vspec: VersionSpec = spec.versions[i]
    where = f"layer {spec.name} version {vspec.version}"
    raw = read_polygons_cached(resolved.path, resolved.sha256, vspec.crs, where, cache_dir)
    if spec.key not in raw.properties:
        raise LayerSourceError(f"{where}: key field {spec.key!r} not in {resolved.path.name} "
                               f"(fields: {sorted(raw.properties)})")
    keys = _as_keys(raw.properties[spec.key])
    if any(k is None for k in keys):
        raise LayerSourceError(f"{where}: features {[j for j, k in enumerate(keys) if k is None]} have no "
                               f"{spec.key!r}")
    if spec.label_template:
        cols = {name: raw.properties[name] for name in raw.properties}
        labels = np.array([spec.label_template.format(**{n: _as_key(c[j]) for n, c in cols.items()})
                           for j in range(len(keys))], dtype=object)
    elif spec.label and spec.label in raw.properties:
        labels = np.array([_as_key(v) for v in raw.properties[spec.label]], dtype=object)
    else:
        labels = keys.copy()
    fields = [{f: _plain(raw.properties[f][j]) for f in vspec.fields if f in raw.properties} for j in range(len(keys))]

    geoms = raw.geoms
    if (shapely.get_type_id(geoms) == 3).all():  # one polygon per feature: each is its own part, not copied
        parts, part_feature = geoms, np.arange(len(geoms))
    else:
        parts, part_feature = shapely.get_parts(geoms, return_index=True)
    keep = ~shapely.is_empty(parts)
    parts, part_feature = parts[keep], part_feature[keep].astype(np.int32)
    # Projected once, the parts: a feature's area is the sum of its parts' areas in order, as GEOS sums a
    # multipolygon's (the same float), and an empty feature's is 0. A layer of 50,000 polygons paid a second
    # projection of every feature at each start (docs/engine.md).
    parts_metric = to_metric(parts)
    area = np.bincount(part_feature, weights=shapely.area(parts_metric), minlength=len(geoms))
    # The documented tie-break: smaller area first (the more specific polygon), then key, then file order.
    rank = np.empty(len(keys), dtype=np.int32)
    rank[np.lexsort((np.arange(len(keys)), keys.astype(str), area))] = np.arange(len(keys), dtype=np.int32)
    shapely.prepare(parts)
    return LayerVersion(
        layer=spec.name, version=vspec.version, effective_from=vspec.effective_from,
        effective_to=spec.effective_to(i), keys=keys, labels=labels, fields=fields, geoms=geoms, area_m2=area,
        rank=rank, parts=parts, part_feature=part_feature, parts_metric=parts_metric,
        geometry_sha256=raw.geometry_sha256, source=resolved, source_crs=raw.source_crs, repairs=raw.repairs,
    )


def _plain(value: object) -> object:
    return value.item() if isinstance(value, np.generic) else value


@dataclass(eq=False)
class LayerStore:
    """All layers and versions. Immutable once built: a reload builds a new store and swaps it in."""

    specs: dict[str, LayerSpec]
    versions: dict[str, list[LayerVersion]]
    manifest: Manifest
    source_mode: str  # "dir:<path>" or "download:<cache>"
    load_seconds: float
    read_from: str = ""  # source_mode, or "accepted:<folder>" when read from the accepted set's kept copies

    @classmethod
    def load(cls, manifest_path: Path, boundary_dir: Path | None, cache_dir: Path,
             folders: dict[str, Path] | None = None) -> LayerStore:
        """`folders`: file name -> the folder to read it from instead (the accepted set's kept copies)."""
        t0 = time.perf_counter()
        manifest: Manifest = load_manifest(manifest_path)
        versions: dict[str, list[LayerVersion]] = {}
        folders = folders or {}
        for name, spec in manifest.layers.items():
            versions[name] = [build_version(spec, i, resolve(v.source, folders.get(v.source.file, boundary_dir),
                                                             cache_dir), cache_dir)
                              for i, v in enumerate(spec.versions)]
        mode = f"dir:{boundary_dir}" if boundary_dir is not None else f"download:{cache_dir}"
        store = cls(specs=manifest.layers, versions=versions, manifest=manifest, source_mode=mode,
                    load_seconds=time.perf_counter() - t0,
                    read_from=f"accepted:{next(iter(folders.values())).parents[1]}" if folders else mode)
        log.info("loaded %d layers (%d versions) from %s in %.2fs", len(versions),
                 sum(len(v) for v in versions.values()), mode, store.load_seconds)
        return store

    def files(self) -> dict[str, tuple[Path, str]]:
        """Every layer file: name -> (path read, sha256)."""
        return {v.source.path.name: (v.source.path, v.source.sha256) for vs in self.versions.values() for v in vs}

    def check_layers(self, layers: list[str]) -> None:
        for name in layers:
            if name not in self.versions:
                raise UnknownLayer(f"unknown layer {name!r}; known layers: {', '.join(self.versions)}",
                                   field="layers")

    def version_on(self, layer: str, day: dt.date | None) -> LayerVersion:
        """The version in force on `day` (the newest when day is None)."""
        self.check_layers([layer])
        versions = self.versions[layer]
        if day is None:
            return versions[-1]
        i = self.version_index(layer, np.array([np.datetime64(day, "D")]))[0]
        if i < 0:
            raise NoVersionInForce(
                f"as_of {day.isoformat()} is before the first version of {layer} "
                f"(in force from {versions[0].effective_from.isoformat()})", field="as_of")
        return versions[i]

    def version_index(self, layer: str, days: np.ndarray) -> np.ndarray:
        """Vectorized: for datetime64[D] days, the index of the version in force (-1: before the first version).
        NaT picks the newest version."""
        starts = np.array([np.datetime64(v.effective_from, "D") for v in self.versions[layer]])
        idx = np.searchsorted(starts, days, side="right") - 1
        idx[np.isnat(days)] = len(starts) - 1
        return idx.astype(np.int32)

    def describe(self) -> dict:
        return {
            name: {
                "description": self.specs[name].description,
                "key": self.specs[name].key,
                "versions": [v.describe() for v in vs],
            }
            for name, vs in self.versions.items()
        }
