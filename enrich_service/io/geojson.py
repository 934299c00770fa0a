"""GeoJSON (application/geo+json) as one more table format: a FeatureCollection of points in, the same features
out with the result columns added to their properties.

In: each feature's properties become the table's columns, its Point's x and y two more (`lon`, `lat`; or
`geometry_lon`, `geometry_lat` when a property already has one of those names), and its `id` one more when any
feature has one (`id`, or `feature_id` beside an `id` property). What the table cannot hold in its columns rides in
its schema metadata, which every table operation keeps: which columns are the geometry, the collection's own
members (name, crs), and each row whose feature has no usable point, with why (that row's error). A polygon or line
is refused, 422 naming the feature: tagging one needs an assignment rule (largest overlap) not made here.
Out: a Point feature per row from the geometry columns, every other column a property; for a table body (CSV,
Arrow) the request's coordinate columns are the geometry.
"""

from __future__ import annotations

import re

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from ..errors import InvalidInput, NotAcceptable
from .coordinates import geometry_meta, with_geometry
from .json_body import dumps, loads
from .media import GEOJSON

GEOMETRY_COLUMNS = ("lon", "lat")
_GEOMETRY_PREFIX = "geometry_"
_NOT_POINTS = ("Polygon", "MultiPolygon", "LineString", "MultiLineString", "MultiPoint", "GeometryCollection")
_LOOKS_LIKE = re.compile(rb'"type"\s*:\s*"Feature(?:Collection)?"')
_POINTS_BODY = re.compile(rb'"points"\s*:\s*\[')


def looks_like_geojson(body: bytes) -> bool:
    """A JSON body that is GeoJSON rather than {points: [...]} (sent as application/json, as many tools do)."""
    head = bytes(body[:1 << 16])
    return bool(_LOOKS_LIKE.search(head)) and not _POINTS_BODY.search(head)


def decode_geojson(body: bytes, content_type: str | None = None) -> pa.Table:
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
    ids: list = [None] * n
    for i, feature in enumerate(features):
        if not isinstance(feature, dict) or feature.get("type") != "Feature":
            errors[i] = ("features", "not a GeoJSON Feature object")
            rows.append({})
            continue
        ids[i] = feature.get("id")
        props = feature.get("properties")
        if props is not None and not isinstance(props, dict):
            errors[i] = ("properties", "must be an object or null")
            props = None
        rows.append(props or {})
        point = _point(feature.get("geometry"), i, ids[i])
        if isinstance(point, str):
            errors[i] = ("geometry", point)
        else:
            x[i], y[i] = point
    table, json_columns = _properties_table(rows)
    lon_col, lat_col = GEOMETRY_COLUMNS
    if lon_col in table.column_names or lat_col in table.column_names:
        lon_col, lat_col = (_GEOMETRY_PREFIX + name for name in GEOMETRY_COLUMNS)
    table = table.append_column(lon_col, pa.array(x, from_pandas=True)).append_column(
        lat_col, pa.array(y, from_pandas=True))
    id_col = None
    if any(v is not None for v in ids):
        id_col = "id" if "id" not in table.column_names else "feature_id"
        table = table.append_column(id_col, _column(ids)[0])
    members = {k: v for k, v in doc.items() if k not in ("type", "features")}
    return with_geometry(table, lon_col, lat_col, id_col=id_col, members=members, json_columns=json_columns,
                         errors=errors)


def _point(geometry: object, i: int, feature_id: object) -> tuple[float, float] | str:
    """(x, y) of a Point geometry, or why there is none (that row's error). Another geometry type is refused."""
    if geometry is None:
        return "missing (null)"
    if not isinstance(geometry, dict):
        return "not a GeoJSON geometry object"
    kind = geometry.get("type")
    if kind != "Point":
        if kind in _NOT_POINTS:
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


def _column(values: list) -> tuple[pa.Array, bool]:
    """A property's values as one Arrow column, and whether it holds JSON text. Numbers, text or booleans keep
    their type; objects and lists become JSON text (given back as objects in a GeoJSON answer); a column mixing
    kinds (numbers and text) becomes text."""
    kinds = set(map(type, values)) - {type(None)}
    if kinds <= {int, float} or len(kinds) == 1 and kinds <= {str, bool}:
        try:
            return pa.array(values), False
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):  # an int beyond 64 bits
            pass
    nested = bool(kinds) and kinds <= {dict, list}
    return pa.array([v if v is None or (v.__class__ is str and not nested) else dumps(v).decode()
                     for v in values], pa.string()), nested


def _properties_table(rows: list[dict]) -> tuple[pa.Table, list[str]]:
    """Properties as columns: every key any feature has, in first-seen order."""
    names = list(dict.fromkeys(key for row in rows for key in row))
    columns, json_columns = {}, []
    for name in names:
        columns[name], nested = _column([row.get(name) for row in rows])
        if nested:
            json_columns.append(name)
    if not names:
        return pa.table({"_": pa.nulls(len(rows))}).drop_columns(["_"]), []
    return pa.table(columns), json_columns


def encode_geojson(table: pa.Table) -> bytes:
    """The answer table as a FeatureCollection: a Point per row (null where the row has none), every other column
    a property, the GeoJSON body's own members and feature ids given back."""
    meta = geometry_meta(table)
    if meta is None:
        raise NotAcceptable(f"a {GEOJSON} answer needs points: send a GeoJSON, CSV or Arrow body with coordinate "
                            f"columns", field="Accept")
    lon, lat, id_col = meta["lon"], meta["lat"], meta.get("id")
    x, y = _numbers(table.column(lon)), _numbers(table.column(lat))
    valid = np.isfinite(x) & np.isfinite(y)
    ids = table.column(id_col).to_pylist() if id_col in table.column_names else None
    properties = table.select([n for n in table.column_names if n not in (lon, lat, id_col)]).to_pylist()
    json_columns = [n for n in meta.get("json_columns", ()) if n in table.column_names]
    features = []
    for i, props in enumerate(properties):
        for name in json_columns:
            if props[name] is not None:
                props[name] = orjson.loads(props[name])
        feature: dict = {"type": "Feature"}
        if ids is not None and ids[i] is not None:
            feature["id"] = ids[i]
        feature["geometry"] = {"type": "Point", "coordinates": [float(x[i]), float(y[i])]} if valid[i] else None
        feature["properties"] = props
        features.append(feature)
    return dumps({"type": "FeatureCollection", **meta.get("members", {}), "features": features})


def _numbers(col: pa.ChunkedArray) -> np.ndarray:
    """A coordinate column as float64 (NaN where it holds no number): floats as decoded, or a CSV's text."""
    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        try:
            return np.asarray(pc.cast(pc.utf8_trim_whitespace(col), pa.float64()).to_numpy(zero_copy_only=False),
                              dtype=np.float64)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            return np.array([_float(v) for v in col.to_pylist()], dtype=np.float64)
    try:
        return np.asarray(pc.cast(col, pa.float64(), safe=False).to_numpy(zero_copy_only=False), dtype=np.float64)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return np.full(len(col), np.nan)


def _float(value: object) -> float:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return np.nan
