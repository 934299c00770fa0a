"""GeoJSON (application/geo+json) in and out: a FeatureCollection of points is tagged and comes back as the same
features, each with the result columns added to its properties.

In: each feature's properties become the columns of a table (what a CSV or Arrow answer carries, and where the id
and date columns are found) and its Point geometry the coordinates, appended as two columns. A feature without a
usable point is its row's error; a polygon or line is refused (422 naming the feature): tagging it needs an
assignment rule (largest overlap) this service does not make.
Out: the features as sent, properties extended; or, for a table body (CSV, Arrow), one Point feature per row.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from ..codecs import dumps, loads
from ..errors import InvalidInput, MalformedBody

GEOJSON = "application/geo+json"
# Names of the coordinate columns a GeoJSON body's table gets (when a property has one of them: geometry_lon, ...).
GEOMETRY_COLUMNS = ("lon", "lat")
_GEOMETRY_PREFIX = "geometry_"
_DEFAULT_CRS = ("urn:ogc:def:crs:OGC:1.3:CRS84", "urn:ogc:def:crs:OGC::CRS84", "CRS84", "EPSG:4326",
                "urn:ogc:def:crs:EPSG::4326")
_LOOKS_LIKE = re.compile(rb'"type"\s*:\s*"Feature(?:Collection)?"')
_POINTS_BODY = re.compile(rb'"points"\s*:\s*\[')


def looks_like_geojson(body: bytes) -> bool:
    """A JSON body that is GeoJSON rather than {points: [...]} (sent as application/json, as many tools do)."""
    head = bytes(body[:1 << 16])
    return bool(_LOOKS_LIKE.search(head)) and not _POINTS_BODY.search(head)


@dataclass
class GeoBody:
    """A decoded FeatureCollection: its members (to answer with), features, properties as a table with the point
    coordinates appended, and what the features themselves say."""

    collection: dict
    features: list
    table: pa.Table
    x: np.ndarray
    y: np.ndarray
    lon_col: str
    lat_col: str
    ids: list | None  # the features' own ids, when any feature has one
    crs: str | None  # the legacy `crs` member, when it names something other than lon/lat
    errors: dict[int, tuple[str, str]] = field(default_factory=dict)


def decode_geojson(body: bytes) -> GeoBody:
    doc = loads(body)
    if not isinstance(doc, dict) or doc.get("type") not in ("FeatureCollection", "Feature"):
        raise InvalidInput("a GeoJSON body must be a FeatureCollection (or one Feature)", field="type")
    if doc["type"] == "Feature":
        doc = {"type": "FeatureCollection", "features": [doc]}
    features = doc.get("features")
    if not isinstance(features, list):
        raise InvalidInput("features must be a list of Feature objects", field="features")
    n = len(features)
    x, y = np.full(n, np.nan), np.full(n, np.nan)
    errors: dict[int, tuple[str, str]] = {}
    rows: list[dict] = []
    for i, feature in enumerate(features):
        if not isinstance(feature, dict) or feature.get("type") != "Feature":
            errors[i] = ("features", "not a GeoJSON Feature object")
            rows.append({})
            continue
        props = feature.get("properties")
        if props is not None and not isinstance(props, dict):
            errors[i] = ("properties", "must be an object or null")
            props = None
        rows.append(props or {})
        point = _point(feature.get("geometry"), i, feature.get("id"))
        if isinstance(point, str):
            errors[i] = ("geometry", point)
        else:
            x[i], y[i] = point
    ids = [f.get("id") if isinstance(f, dict) else None for f in features]
    table = _properties_table(rows)
    lon_col, lat_col = GEOMETRY_COLUMNS
    if lon_col in table.column_names or lat_col in table.column_names:
        lon_col, lat_col = (_GEOMETRY_PREFIX + name for name in GEOMETRY_COLUMNS)
    table = table.append_column(lon_col, pa.array(x, from_pandas=True)).append_column(
        lat_col, pa.array(y, from_pandas=True))
    return GeoBody(collection=doc, features=features, table=table, x=x, y=y, lon_col=lon_col, lat_col=lat_col,
                   ids=ids if any(v is not None for v in ids) else None, crs=_crs_member(doc.get("crs")),
                   errors=errors)


def _point(geometry: object, i: int, feature_id: object) -> tuple[float, float] | str:
    """(x, y) of a Point geometry, or why there is none (that row's error). Another geometry type is refused."""
    if geometry is None:
        return "missing (null)"
    if not isinstance(geometry, dict):
        return "not a GeoJSON geometry object"
    kind = geometry.get("type")
    if kind != "Point":
        if kind in ("Polygon", "MultiPolygon", "LineString", "MultiLineString", "MultiPoint", "GeometryCollection"):
            named = f"features[{i}]" + (f" (id {feature_id!r})" if feature_id is not None else "")
            raise InvalidInput(f"{named} is a {kind}: only Point features are tagged; send a point per feature "
                               f"(e.g. each parcel's representative point)", field=f"features[{i}].geometry",
                               row=i)
        return f"type {str(kind)[:40]!r} is not a GeoJSON geometry type"
    coords = geometry.get("coordinates")
    if not isinstance(coords, list) or len(coords) < 2:
        return "coordinates must be [x, y]"
    cx, cy = coords[0], coords[1]
    if not all(v.__class__ in (int, float) for v in (cx, cy)):  # bool is not a coordinate
        return "coordinates must be numbers"
    return float(cx), float(cy)


def _properties_table(rows: list[dict]) -> pa.Table:
    """Properties as columns (every key any feature has, in first-seen order). A column mixing kinds (numbers
    and text) or holding objects and lists is written as text: JSON for those, the text as it is."""
    names = list(dict.fromkeys(key for row in rows for key in row))
    columns = {}
    for name in names:
        values = [row.get(name) for row in rows]
        kinds = set(map(type, values)) - {type(None)}
        arr = None
        if len(kinds) <= 1 or kinds == {int, float}:
            try:
                arr = pa.array(values) if kinds <= {int, float, str, bool} else None
            except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):  # an int beyond 64 bits
                arr = None
        if arr is None:
            arr = pa.array([v if v is None or v.__class__ is str else dumps(v).decode() for v in values],
                           pa.string())
        columns[name] = arr
    if not names:
        return pa.table({"_": pa.nulls(len(rows))}).drop_columns(["_"])
    return pa.table(columns)


def _crs_member(member: object) -> str | None:
    """The CRS an old-style (2008) `crs` member names, None when it names lon/lat or nothing."""
    if not isinstance(member, dict):
        return None
    name = (member.get("properties") or {}).get("name") if isinstance(member.get("properties"), dict) else None
    if not isinstance(name, str) or name.strip() in _DEFAULT_CRS:
        return None
    return name.strip()


def encode_geojson(answer: pa.Table, first_result: int, geo: GeoBody | None = None,
                   lon: np.ndarray | None = None, lat: np.ndarray | None = None) -> bytes:
    """The answer as a FeatureCollection. For a GeoJSON body: its features as sent, each one's properties extended
    with the result columns (answer.columns[first_result:]). For a table body: a Point feature per row (lon/lat,
    null where the row had no usable point), every column a property."""
    if geo is not None:
        results = answer.select(list(range(first_result, answer.num_columns))).to_pylist()
        out = []
        for feature, extra in zip(geo.features, results):
            if isinstance(feature, dict) and feature.get("type") == "Feature":
                props = feature.get("properties")
                out.append({**feature, "properties": {**(props if isinstance(props, dict) else {}), **extra}})
            else:  # what was sent is no feature: a feature carrying its error, so the answer keeps every row
                out.append({"type": "Feature", "geometry": None, "properties": extra})
        return dumps({**geo.collection, "features": out})
    if lon is None or lat is None:
        raise MalformedBody("a GeoJSON answer needs the points' coordinates", field="body")
    rows = answer.to_pylist()
    valid = np.isfinite(lon) & np.isfinite(lat)
    return dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature",
         "geometry": {"type": "Point", "coordinates": [float(lon[i]), float(lat[i])]} if valid[i] else None,
         "properties": row} for i, row in enumerate(rows)]})
