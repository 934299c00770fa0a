"""Where a table's coordinates are: the columns the request names, else the geometry its schema metadata names (a
GeoJSON body's points), else the columns found by their usual names (Latitude, Longitude, lng, x, y, ... in any case).

The metadata (key `enrich.geometry`) is how a decoder tells the rest what the table's columns cannot: which columns
are the geometry, the rows that have none and why, the collection's own members (a GeoJSON `name`, `crs`). Every
table operation keeps schema metadata, so an answer table still carries it for the GeoJSON encoder."""

from __future__ import annotations

import orjson
import pyarrow as pa

from ..errors import InvalidInput

# The names spreadsheets and GIS exports use, matched case-insensitively; the first list is x, the second y.
LON_NAMES = ("lon", "lng", "long", "longitude", "x")
LAT_NAMES = ("lat", "latitude", "y")


def find_column(names: list[str], usual: tuple[str, ...], option: str, default: str) -> str:
    """The one column of `names` whose lower-cased name is among `usual`; `default` when none is (the reader then
    says it is missing, naming the option); a clear 4xx naming the candidates and the option when several are."""
    found = [name for name in names if name.strip().lower() in usual]
    if len(found) == 1:
        return found[0]
    if not found:
        return default
    raise InvalidInput(f"several columns could hold the coordinates: {', '.join(map(repr, found))}; choose one "
                       f"with {option}", field=option)


def coordinate_columns(names: list[str], lon_col: str | None, lat_col: str | None) -> tuple[str, str]:
    """(lon column, lat column): each as the request names it, else `lon`/`lat` exactly (the documented default,
    even beside an `x`), else found among the usual names."""
    lon = lon_col or ("lon" if "lon" in names else find_column(names, LON_NAMES, "lon_col", "lon"))
    lat = lat_col or ("lat" if "lat" in names else find_column(names, LAT_NAMES, "lat_col", "lat"))
    return lon, lat


def table_coordinates(table: pa.Table, lon_col: str | None, lat_col: str | None) -> tuple[str, str]:
    """A table body's coordinate columns: as named; for a GeoJSON body, its geometry; else by the usual names."""
    if not (lon_col or lat_col):
        geometry = geometry_columns(table)
        if geometry:
            return geometry
    return coordinate_columns(table.column_names, lon_col, lat_col)


METADATA_KEY = b"enrich.geometry"
_DEFAULT_CRS = ("urn:ogc:def:crs:OGC:1.3:CRS84", "urn:ogc:def:crs:OGC::CRS84", "CRS84", "EPSG:4326",
                "urn:ogc:def:crs:EPSG::4326")


def with_geometry(table: pa.Table, lon_col: str, lat_col: str, *, crs: str | None = None, id_col: str | None = None,
                  members: dict | None = None, json_columns: list[str] | None = None,
                  errors: dict[int, tuple[str, str]] | None = None) -> pa.Table:
    """The table with what a GeoJSON answer needs in its schema metadata: which columns are the geometry (and the
    feature ids), the collection's members, the CRS of the coordinates when not lon/lat. Other points for a GeoJSON
    body (a geocode's) keep what its metadata says of the rest."""
    meta = geometry_meta(table) or {"id": id_col, "members": members or {}, "json_columns": json_columns or [],
                                    "errors": {str(k): list(v) for k, v in (errors or {}).items()}}
    meta.update(lon=lon_col, lat=lat_col)
    if crs and not meta["members"]:
        meta["members"] = {"crs": {"type": "name", "properties": {"name": crs}}}
    return table.replace_schema_metadata({**(table.schema.metadata or {}), METADATA_KEY: orjson.dumps(meta)})


def geometry_meta(table: pa.Table) -> dict | None:
    raw = (table.schema.metadata or {}).get(METADATA_KEY)
    if raw is None:
        return None
    try:
        meta = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(meta, dict) or not {meta.get("lon"), meta.get("lat")} <= set(table.column_names):
        return None  # e.g. an Arrow body carrying metadata of its own that names no column of it
    return meta


def geometry_columns(table: pa.Table) -> tuple[str, str] | None:
    """A GeoJSON body's coordinate columns (None for other tables)."""
    meta = geometry_meta(table)
    return (meta["lon"], meta["lat"]) if meta else None


def row_errors(table: pa.Table) -> dict[int, tuple[str, str]]:
    """The rows of a GeoJSON body whose feature has no usable point, with why."""
    meta = geometry_meta(table)
    return {int(k): (v[0], v[1]) for k, v in meta["errors"].items()} if meta else {}


def declared_crs(table: pa.Table) -> str | None:
    """The CRS an old-style (2008) `crs` member names, None when it names lon/lat or nothing."""
    meta = geometry_meta(table)
    member = (meta or {}).get("members", {}).get("crs")
    props = member.get("properties") if isinstance(member, dict) else None
    name = props.get("name") if isinstance(props, dict) else None
    if not isinstance(name, str) or name.strip() in _DEFAULT_CRS:
        return None
    return name.strip()
