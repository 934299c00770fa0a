"""Load the geocoder's reference into PostGIS, so SQL users and the DAGs can see and join the same data.

Two tables, `geocode_address_points` and `geocode_street_segments`, each with the normalized street key the
geocoder joins on (`street_key`), and a catalog `geocode_reference` with each file's sha256. As for the layers,
each table is COPYed into a staging table and refilled in place in one transaction (enrich_service/postgis/
publish.py), so grants and users' views on the tables stay.
"""

from __future__ import annotations

import logging

import psycopg
from psycopg import sql

from ..layers.sources import ResolvedFile
from ..postgis.publish import analyze, create_table, refill, stage, upsert
from .normalize import clean_zip
from .reference import POINTS_FILE, SEGMENTS_FILE, ReferenceFiles, normalize_street, read_points, read_segments

log = logging.getLogger(__name__)

CATALOG = "geocode_reference"
POINTS_TABLE = "geocode_address_points"
SEGMENTS_TABLE = "geocode_street_segments"

_CATALOG_COLUMNS = (("name", "text PRIMARY KEY"), ("file", "text"), ("sha256", "text"), ("table_name", "text"),
                    ("rows", "int"), ("loaded_at", "timestamptz DEFAULT now()"))
# (column, type) in COPY order.
_POINTS_COLUMNS = (("osm_node_id", "text"), ("housenumber", "text"), ("number", "int"), ("street", "text"),
                   ("street_key", "text"), ("unit", "text"), ("city", "text"), ("zip", "text"),
                   ("geom", "geometry(Point, 4326) NOT NULL"))
_SEGMENTS_COLUMNS = (("roadsegid", "text"), ("rd20full", "text"), ("street_key", "text"), ("xstrt1", "text"),
                     ("xstrt2", "text"), ("llowaddr", "int"), ("lhighaddr", "int"), ("rlowaddr", "int"),
                     ("rhighaddr", "int"), ("zip", "text"), ("cpname", "text"),
                     ("geom", "geometry(Geometry, 4326) NOT NULL"))


def load_reference_postgis(conn: psycopg.Connection, files: ReferenceFiles, schema: str = "public") -> list[str]:
    """Load both reference files; returns the table names. Idempotent: re-running replaces the tables."""
    with conn.transaction():
        conn.execute("CREATE EXTENSION IF NOT EXISTS postgis")
        create_table(conn, sql.Identifier(schema, CATALOG), _CATALOG_COLUMNS, if_not_exists=True)
    keys: dict[str, str] = {}

    def key(name: str) -> str:
        if name not in keys:
            keys[name] = normalize_street(name)[0]
        return keys[name]

    points = read_points(files.points.path)
    point_rows = [
        (r.get("osm_node_id"), r["housenumber"], _int_prefix(r["housenumber"]), r["street"], key(r["street"]),
         r.get("unit") or None, r.get("city") or None, clean_zip(r["postcode"]) or None,
         f"SRID=4326;POINT({float(r['lon'])} {float(r['lat'])})")
        for r in points.to_dict("records") if _is_float(r["lon"]) and _is_float(r["lat"])]
    segments = read_segments(files.segments.path)
    segment_rows = [
        (str(r.get("roadsegid", "")), r["rd20full"], key(r["rd20full"]), r["xstrt1"], r["xstrt2"],
         _number(r["llowaddr"]), _number(r["lhighaddr"]), _number(r["rlowaddr"]), _number(r["rhighaddr"]),
         clean_zip(r["zip"]) or None, r.get("cpname") or None, f"SRID=4326;{r['wkt_wgs84']}")
        for r in segments.to_dict("records") if r["wkt_wgs84"]]
    tables = [
        _load(conn, schema, POINTS_TABLE, _POINTS_COLUMNS, point_rows, ("street_key", "number"), POINTS_FILE,
              files.points),
        _load(conn, schema, SEGMENTS_TABLE, _SEGMENTS_COLUMNS, segment_rows, ("street_key",), SEGMENTS_FILE,
              files.segments),
    ]
    return tables


def _load(conn: psycopg.Connection, schema: str, table: str, columns: tuple[tuple[str, str], ...],
          rows: list[tuple], index_cols: tuple[str, ...], name: str, source: ResolvedFile) -> str:
    with conn.transaction():
        staging = stage(conn, None, f"{table}__staging", columns, rows=rows)
        refill(conn, schema, table, columns, staging, indexes=(("geom",), index_cols))
        upsert(conn, sql.Identifier(schema, CATALOG), {"name": name, "file": source.path.name,
                                                       "sha256": source.sha256, "table_name": table,
                                                       "rows": len(rows)}, key=("name",), touch="loaded_at")
    analyze(conn, schema, table)
    log.info("loaded %s (%d rows)", table, len(rows))
    return table


def _int_prefix(text: str) -> int | None:
    digits = ""
    for ch in text.strip():
        if not ch.isdigit():
            break
        digits += ch
    return int(digits) if digits else None


def _number(value) -> int | None:
    """An address range bound; blank, NaN or the file's int64-minimum placeholder becomes NULL."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return int(number) if 0 <= number < 2**31 else None


def _is_float(text: str) -> bool:
    try:
        float(text)
        return True
    except (TypeError, ValueError):
        return False
