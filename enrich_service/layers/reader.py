"""Read a layer file into valid lon/lat polygons: reproject, repair with make_valid (logged), split into parts."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson
import shapely
from pyproj import CRS, Transformer

from ..crs import WGS84
from ..errors import LayerSourceError
from ..server.disk_cache import cached, code_digest

log = logging.getLogger(__name__)

_CODE = code_digest(Path(__file__))


@dataclass(frozen=True)
class RawLayer:
    geoms: np.ndarray  # shapely (Multi)Polygons in EPSG:4326, valid
    properties: dict[str, np.ndarray]
    source_crs: str
    repairs: tuple[str, ...]
    # sha256 of the geometry as WKB, worked out when it was read from the file and kept in the cache with it: what
    # the grid's disk cache is keyed by, without a pass over every polygon at each start.
    geometry_sha256: str = ""


def geometry_sha256(wkb: np.ndarray) -> str:
    h = hashlib.sha256()
    for item in wkb:
        h.update(item)
    return h.hexdigest()


def read_polygons_cached(path: Path, sha256: str, declared_crs: str, where: str, cache_dir: Path) -> RawLayer:
    """read_polygons through the disk cache, keyed by the file's sha256, the declared CRS and this module's code:
    parsing and repairing the city's GeoJSON is most of start-up; reading it back as WKB takes a few ms."""
    key = hashlib.sha256(f"{sha256}|{declared_crs}|{_CODE}".encode()).hexdigest()[:32]
    packed, hit = cached(Path(cache_dir) / "layers" / f"{key}.pickle",
                         lambda: _pack(read_polygons(path, declared_crs, where)))
    raw = _unpack(packed)
    for repair in raw.repairs if hit else ():
        log.info("%s: %s (repair cached for sha256 %s)", where, repair, sha256[:12])
    return raw


def _pack(raw: RawLayer) -> dict:
    wkb = shapely.to_wkb(raw.geoms)
    return {"wkb": wkb, "properties": raw.properties, "source_crs": raw.source_crs, "repairs": raw.repairs,
            "geometry_sha256": raw.geometry_sha256 or geometry_sha256(wkb)}  # read_polygons worked it out


def _unpack(packed: dict) -> RawLayer:
    """The geometry as read back from the WKB its digest was worked out from: the same coordinates, bit for bit."""
    return RawLayer(geoms=shapely.from_wkb(packed["wkb"]), properties=packed["properties"],
                    source_crs=packed["source_crs"], repairs=tuple(packed["repairs"]),
                    geometry_sha256=packed["geometry_sha256"])


def read_polygons(path: Path, declared_crs: str, where: str) -> RawLayer:
    read = _read_geojson if path.suffix.lower() in (".geojson", ".json") else _read_ogr
    file_crs, geoms, properties = read(path, where)
    if len(geoms) == 0:
        raise LayerSourceError(f"{where}: {path.name} has no features")

    source_crs = CRS.from_user_input(file_crs or declared_crs)
    if not source_crs.equals(WGS84, ignore_axis_order=True):
        to_wgs84 = Transformer.from_crs(source_crs, WGS84, always_xy=True)
        geoms = shapely.transform(geoms, lambda xy: np.column_stack(to_wgs84.transform(xy[:, 0], xy[:, 1])))

    geoms, repairs = _repair(geoms, where)
    return RawLayer(geoms=geoms, properties=properties, source_crs=source_crs.to_string(), repairs=repairs,
                    geometry_sha256=geometry_sha256(shapely.to_wkb(geoms)))


def _read_geojson(path: Path, where: str) -> tuple[str | None, np.ndarray, dict[str, np.ndarray]]:
    """GeoJSON without GDAL: orjson and shapely read the city's files quickly, and the service does not pay for
    pyogrio's import, which probes for geopandas (its cost: docs/engine.md, "Measured")."""
    try:
        doc = orjson.loads(path.read_bytes())
        features = doc["features"] if doc.get("type") == "FeatureCollection" else None
    except (OSError, orjson.JSONDecodeError, AttributeError, KeyError) as exc:
        raise LayerSourceError(f"{where}: cannot read {path.name}: {exc}") from None
    if not isinstance(features, list) or not all(isinstance(f, dict) for f in features):
        raise LayerSourceError(f"{where}: {path.name} is not a GeoJSON FeatureCollection")
    # Old-style (pre RFC 7946) files name their CRS, e.g. EPSG:2230 exports from the city's GIS.
    crs = ((doc.get("crs") or {}).get("properties") or {}).get("name")
    geometries = [f.get("geometry") for f in features]
    try:
        geoms = shapely.from_geojson([orjson.dumps(g) if g else "null" for g in geometries])
    except shapely.errors.GEOSException as exc:
        raise LayerSourceError(f"{where}: {path.name} has unreadable geometry: {exc}") from None
    names = list(dict.fromkeys(k for f in features for k in (f.get("properties") or {})))
    properties = {}
    for name in names:
        values = [(f.get("properties") or {}).get(name) for f in features]
        properties[name] = np.asarray(values) if None not in values else np.array(values, dtype=object)
    return crs, geoms, properties


def _read_ogr(path: Path, where: str) -> tuple[str | None, np.ndarray, dict[str, np.ndarray]]:
    """Every other format GDAL reads (shapefiles, zipped or not, GeoPackage...)."""
    from pyogrio.raw import read as ogr_read

    try:
        meta, _fids, wkb, field_data = ogr_read(str(path))
    except Exception as exc:  # pyogrio raises DataSourceError, DataLayerError, OSError...
        raise LayerSourceError(f"{where}: cannot read {path.name}: {exc}") from None
    try:
        geoms = shapely.from_wkb(wkb)
    except shapely.errors.GEOSException as exc:
        raise LayerSourceError(f"{where}: {path.name} has unreadable geometry: {exc}") from None
    return meta.get("crs"), geoms, {name: np.asarray(col) for name, col in zip(meta["fields"], field_data)}


def _repair(geoms: np.ndarray, where: str) -> tuple[np.ndarray, tuple[str, ...]]:
    """Keep every feature, made valid; only the polygonal part of a repair is kept (a ring's stray line is not area)."""
    missing = shapely.is_missing(geoms)
    if missing.any():
        raise LayerSourceError(f"{where}: features {np.flatnonzero(missing).tolist()} have no geometry")
    repairs = []
    invalid = np.flatnonzero(~shapely.is_valid(geoms))
    geoms = geoms.copy()
    for i in invalid:  # a handful of features per file at most; the reasons are worth a line each
        reason = shapely.is_valid_reason(geoms[i])
        fixed = shapely.make_valid(geoms[i])
        polys = [p for p in shapely.get_parts(fixed) if shapely.get_type_id(p) in (3, 6)]
        fixed = shapely.union_all(polys) if polys else shapely.Polygon()
        repairs.append(f"feature {int(i)}: {reason}; repaired with make_valid")
        log.warning("%s: feature %d invalid (%s); repaired with make_valid", where, i, reason)
        geoms[i] = fixed
    kinds = shapely.get_type_id(geoms)
    not_polygonal = np.flatnonzero(~np.isin(kinds, (3, 6)))
    if len(not_polygonal):
        raise LayerSourceError(f"{where}: features {not_polygonal.tolist()} are not polygons")
    return geoms, tuple(repairs)
