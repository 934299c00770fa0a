"""Publish the enriched table: to PostGIS (swap in a fully loaded table) and to portal files (rename into place).

PostGIS: the rows go into `<table>__staging` with COPY, with a point geometry (EPSG:4326, GiST-indexed), and the
staging table replaces the published one in the same transaction: readers see the old table or the new one, never
a partial one, and re-publishing the same run gives the same table.

Files: `<basename>.csv` (the source columns plus the new ones), `<basename>.geojson`, and `<basename>.metadata.json`
(row count, share unmatched per layer, layer versions and sha256, run id, the files' sha256). Each is written to a
temporary name in the folder and renamed into place; the metadata goes last, once every file it describes is in.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from .assemble import LAT, LON, is_internal
from .spec import DatasetSpec
from .workdir import atomic_path

GEOM = "geom"


def public_table(enriched_path: Path):
    """The enriched table without internal columns, dictionary columns as plain values."""
    import pyarrow.parquet as pq

    from enrich_service.client import plain_columns

    table = pq.read_table(enriched_path)
    return plain_columns(table.drop_columns([c for c in table.column_names if is_internal(c)])), table


def _points(full):
    import numpy as np
    import shapely

    x = full.column(LON).to_numpy(zero_copy_only=False).astype(float)
    y = full.column(LAT).to_numpy(zero_copy_only=False).astype(float)
    ok = np.isfinite(x) & np.isfinite(y)
    geoms = np.full(len(x), None, dtype=object)
    geoms[ok] = shapely.points(x[ok], y[ok])
    return geoms, ok


# ---- PostGIS ------------------------------------------------------------------------------------------------------

def pg_columns(names: list[str]) -> list[str]:
    """Column names as Postgres identifiers: lower case, [a-z0-9_], unique, and never `geom`."""
    seen: set[str] = set()
    out = []
    for name in names:
        col = re.sub(r"[^a-z0-9_]", "_", name.lower()).strip("_")[:60] or "col"
        if col[0].isdigit():
            col = f"c_{col}"
        base, i = col, 1
        while col in seen or col == GEOM:
            i += 1
            col = f"{base}_{i}"
        seen.add(col)
        out.append(col)
    return out


def _pg_type(t) -> str:
    import pyarrow as pa

    if pa.types.is_boolean(t):
        return "boolean"
    if pa.types.is_integer(t):
        return "bigint"
    if pa.types.is_floating(t) or pa.types.is_decimal(t):
        return "double precision"
    if pa.types.is_date(t):
        return "date"
    if pa.types.is_timestamp(t):
        return "timestamptz" if t.tz else "timestamp"
    return "text"


def _csv_ready(table):
    """Types the CSV writer and COPY both take: anything unusual becomes text."""
    import pyarrow as pa
    import pyarrow.compute as pc

    cols = []
    for col in table.columns:
        t = col.type
        if (pa.types.is_boolean(t) or pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_date(t)
                or pa.types.is_string(t) or pa.types.is_large_string(t)):
            cols.append(col)
        elif pa.types.is_timestamp(t):
            cols.append(pc.strftime(col, format="%Y-%m-%dT%H:%M:%S.%f" + ("%z" if t.tz else "")))
        else:
            cols.append(pa.array([None if v is None else json.dumps(v, default=str) for v in col.to_pylist()],
                                 pa.string()))
    return pa.table(cols, names=table.column_names)


def split_table_name(name: str) -> tuple[str, str]:
    schema, _, table = name.rpartition(".")
    return schema or "public", table


def publish_postgis(conn, table_name: str, enriched_path: Path, comment: str) -> dict:
    """Load the enriched rows into `table_name` (schema.table) on the psycopg 3 connection `conn`, atomically."""
    import io

    import pyarrow as pa
    import pyarrow.csv as pacsv
    import shapely
    from psycopg import sql

    public, full = public_table(enriched_path)
    schema, table = split_table_name(table_name)
    staging = f"{table}__staging"
    cols = pg_columns(public.column_names)
    public = _csv_ready(public)
    geoms, ok = _points(full)
    ewkb = shapely.to_wkb(shapely.set_srid(geoms, 4326), hex=True, include_srid=True)
    body = public.rename_columns(cols).append_column(GEOM, pa.array(ewkb, pa.string()))
    buf = io.BytesIO()
    pacsv.write_csv(body, buf, pacsv.WriteOptions(include_header=False))

    ident = lambda t: sql.Identifier(schema, t)  # noqa: E731
    defs = sql.SQL(", ").join(
        [sql.SQL("{} {}").format(sql.Identifier(c), sql.SQL(_pg_type(f.type))) for c, f in zip(cols, public.schema)]
        + [sql.SQL("{} geometry(Point, 4326)").format(sql.Identifier(GEOM))])
    with conn.transaction():
        conn.execute("CREATE EXTENSION IF NOT EXISTS postgis")  # a fresh database (a no-op where it is)
        conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(ident(staging)))
        conn.execute(sql.SQL("CREATE TABLE {} ({})").format(ident(staging), defs))
        with conn.cursor().copy(sql.SQL("COPY {} ({}) FROM STDIN (FORMAT csv)").format(
                ident(staging), sql.SQL(", ").join(map(sql.Identifier, cols + [GEOM])))) as copy:
            view = buf.getbuffer()
            for start in range(0, len(view), 8 << 20):
                copy.write(view[start:start + (8 << 20)])
        conn.execute(sql.SQL("CREATE INDEX {} ON {} USING gist ({})").format(
            sql.Identifier(f"{staging}_geom"), ident(staging), sql.Identifier(GEOM)))
        # The swap: the old table goes and the new one takes its name, in this one transaction.
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(ident(table)))
        conn.execute(sql.SQL("ALTER TABLE {} RENAME TO {}").format(ident(staging), sql.Identifier(table)))
        conn.execute(sql.SQL("ALTER INDEX {} RENAME TO {}").format(
            ident(f"{staging}_geom"), sql.Identifier(f"{table}_geom")))
        conn.execute(sql.SQL("COMMENT ON TABLE {} IS {}").format(ident(table), sql.Literal(comment)))
    conn.execute(sql.SQL("ANALYZE {}").format(ident(table)))
    return {"table": f"{schema}.{table}", "rows": public.num_rows, "with_geometry": int(ok.sum())}


def has_connection(conn_id: str) -> bool:
    """Whether Airflow knows the connection (metadata DB, AIRFLOW_CONN_* or a secrets backend)."""
    from airflow.sdk import BaseHook

    try:
        BaseHook.get_connection(conn_id)
        return True
    except Exception:  # AirflowNotFoundException, or no Airflow context at all
        return False


def postgis_hook_connection(conn_id: str):
    """A psycopg 3 connection from the Airflow Postgres connection `conn_id`."""
    from airflow.providers.postgres.hooks.postgres import PostgresHook

    conn = PostgresHook(postgres_conn_id=conn_id).get_conn()
    conn.autocommit = True  # transactions are explicit (conn.transaction())
    return conn


# ---- files ----------------------------------------------------------------------------------------------------

def write_csv(enriched_path: Path, dest: Path) -> Path:
    import pyarrow.csv as pacsv
    from enrich_service.csv_safety import formula_safe_table

    public, _ = public_table(enriched_path)
    with atomic_path(dest) as tmp:
        pacsv.write_csv(formula_safe_table(_csv_ready(public)), tmp)  # staff open it in Excel: no live formulas
    return dest


def _spatial_table(enriched_path: Path):
    import pyarrow as pa
    import shapely

    public, full = public_table(enriched_path)
    geoms, _ = _points(full)
    public = _csv_ready(public)
    wkb = pa.array(shapely.to_wkb(geoms), pa.binary())
    return public.append_column(pa.field("geometry", pa.binary(), metadata={
        b"ARROW:extension:name": b"geoarrow.wkb"}), wkb)


def write_spatial(enriched_path: Path, dest: Path, driver: str, layer: str | None = None) -> Path:
    """GeoJSON or GeoPackage (GDAL through pyogrio), written beside and renamed into place."""
    import pyogrio

    table = _spatial_table(enriched_path)
    with atomic_path(dest) as tmp:
        pyogrio.write_arrow(table, str(tmp), driver=driver, layer=layer or Path(dest).stem,
                            geometry_name="geometry", geometry_type="Point", crs="EPSG:4326")
    return dest


def unmatched(spec: DatasetSpec, enriched_path: Path) -> dict:
    import pyarrow.parquet as pq

    table = pq.read_table(enriched_path, columns=list(spec.layers.values()))
    n = table.num_rows
    return {layer: {"column": col, "unmatched": table.column(col).null_count,
                    "unmatched_share": round(table.column(col).null_count / n, 6) if n else 0.0}
            for layer, col in spec.layers.items()}


def write_metadata(dest: Path, doc: dict) -> Path:
    with atomic_path(dest) as tmp:
        tmp.write_text(json.dumps(doc, indent=2, sort_keys=True, default=str) + "\n")
    return dest
