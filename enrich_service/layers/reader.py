"""Read a layer file into valid lon/lat polygons: reproject, repair with make_valid (logged), split into parts."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pyogrio.raw import read as ogr_read
import shapely
from pyproj import CRS, Transformer

from ..errors import LayerSourceError

log = logging.getLogger(__name__)

WGS84 = CRS.from_epsg(4326)
# Metric CRS for areas and nearest distances: UTM zone 11N covers San Diego with < 0.1% scale error.
METRIC = CRS.from_epsg(32611)


@dataclass(frozen=True)
class RawLayer:
    geoms: np.ndarray  # shapely (Multi)Polygons in EPSG:4326, valid
    properties: dict[str, np.ndarray]
    source_crs: str
    repairs: tuple[str, ...]


def read_polygons(path: Path, declared_crs: str, where: str) -> RawLayer:
    try:
        meta, _fids, wkb, field_data = ogr_read(str(path))
    except Exception as exc:  # pyogrio raises DataSourceError, DataLayerError, OSError...
        raise LayerSourceError(f"{where}: cannot read {path.name}: {exc}") from None
    if len(wkb) == 0:
        raise LayerSourceError(f"{where}: {path.name} has no features")
    try:
        geoms = shapely.from_wkb(wkb)
    except shapely.errors.GEOSException as exc:
        raise LayerSourceError(f"{where}: {path.name} has unreadable geometry: {exc}") from None
    properties = {name: np.asarray(col) for name, col in zip(meta["fields"], field_data)}

    source_crs = CRS.from_user_input(meta["crs"]) if meta.get("crs") else CRS.from_user_input(declared_crs)
    if not source_crs.equals(WGS84, ignore_axis_order=True):
        to_wgs84 = Transformer.from_crs(source_crs, WGS84, always_xy=True)
        geoms = shapely.transform(geoms, lambda xy: np.column_stack(to_wgs84.transform(xy[:, 0], xy[:, 1])))

    geoms, repairs = _repair(geoms, where)
    return RawLayer(geoms=geoms, properties=properties, source_crs=source_crs.to_string(), repairs=repairs)


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
