"""Publish the enriched table as one unit: PostGIS first, then the portal files, then their metadata.

Three tasks, so the slow parts retry on their own and the visible switch is short:

1. `prepare_postgis` (task publish_postgis): checks the guards against the last publication, then COPYs the rows
   into a new version table `<table>__p<id>` (point geometry EPSG:4326, GiST index). Nobody reads it yet.
2. `stage_files` (task publish_files): writes `<basename>.csv`, `.geojson` (and the `.gpkg` fallback) under hidden
   staged names in the portal folder. The published files are untouched.
3. `commit` (task record_publication): in ONE PostGIS transaction (lock_timeout, statement_timeout) it checks the
   guards again under a row lock on the catalog `enrich_publications`, points the stable view `<table>` at the new
   version (`CREATE OR REPLACE VIEW`: grants, users' views on it and readers keep working) and records the
   publication; before COMMIT it renames the staged files and the metadata (written from what was loaded and
   staged) into place, keeping the old files; if anything fails the transaction rolls back and the old files are
   put back. Old version tables are dropped afterwards (never with CASCADE).

Guards (`PublishRefused`, never retried): a run older than the last publication cannot replace it; the row count
may change by at most `publish.max_row_change_share` against the last publication (a DAG run with conf
`{"allow_row_change": true}` lets a real change through); a column of the last publication may not disappear or
change its type (pin it in `source.column_types`).
"""

from __future__ import annotations

import json
import logging
import os
import re
import uuid
from datetime import datetime
from pathlib import Path

from .assemble import LAT, LON, is_internal
from .payloads import PostgisLoaded, StagedFile, StagedFiles
from .spec import DatasetSpec
from .workdir import atomic_path

log = logging.getLogger(__name__)

GEOM = "geom"
CATALOG = "enrich_publications"
STAGED = ".staged-"  # hidden staged files: .<name>.staged-<run>.<suffix>


class PublishRefused(Exception):
    """Publishing this run would lose or corrupt data; retrying cannot help."""


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
            # Arrow's %S already carries the fraction at the column's unit (05.123 for ms); %f is not Arrow's.
            cols.append(pc.strftime(col, format="%Y-%m-%dT%H:%M:%S" + ("%z" if t.tz else "")))
        else:
            cols.append(pa.array([None if v is None else json.dumps(v, default=str) for v in col.to_pylist()],
                                 pa.string()))
    return pa.table(cols, names=table.column_names)





def split_table_name(name: str) -> tuple[str, str]:
    schema, _, table = name.rpartition(".")
    return schema or "public", table


# ---- the run and the last publication -----------------------------------------------------------------------------

def run_info(dag_id: str, run_id: str, logical_date, allow_row_change: bool = False) -> dict:
    """What the guards need to know about a run. `logical_date` orders runs (a manual run: its run_after)."""
    when = logical_date.isoformat() if hasattr(logical_date, "isoformat") else str(logical_date)
    return {"dag_id": dag_id, "run_id": run_id, "logical_date": when, "allow_row_change": bool(allow_row_change)}


def _when(value) -> datetime:
    return value if isinstance(value, datetime) else datetime.fromisoformat(str(value))


def column_types(enriched_path: Path) -> list[list[str]]:
    """[[published column, Postgres type], ...] in table order (the geometry last)."""
    public, _ = public_table(enriched_path)
    import pyarrow as pa

    return [[c, "null" if pa.types.is_null(f.type) else _pg_type(f.type)]
            for c, f in zip(pg_columns(public.column_names), public.schema)] + \
        [[GEOM, "geometry(Point,4326)"]]


def check_guards(spec: DatasetSpec, last: dict | None, run: dict, rows: int, columns: list) -> None:
    """Raise PublishRefused when this run must not replace `last` (the last publication's catalog entry)."""
    if not last or not last.get("run_id"):
        return
    where = f"{spec.name}: nothing published, the last publication (run {last['run_id']}) is unchanged"
    _check_stale(spec, last, run, where)
    now = {name: t for name, t in columns}
    for name, t in last.get("columns") or []:
        if name not in now:
            raise PublishRefused(f"{where}: column {name!r} ({t}) of the last publication is missing from this run")
        if now[name] != t and now[name] != "null":
            raise PublishRefused(
                f"{where}: column {name!r} was {t} in the last publication and is {now[name]} in this run (a value "
                f"that is not a {t}?). Pin the column's type in the spec's source.column_types, or fix the source")
    share = spec.publish.max_row_change_share
    before = last.get("rows")
    if share is not None and before is not None and not run.get("allow_row_change"):
        change = abs(rows - before) / before if before else (0.0 if rows == 0 else float("inf"))
        if change > share:
            raise PublishRefused(
                f"{where}: row count changed from {before:,} (last publication) to {rows:,} (this run), "
                f"{change:.1%} > publish.max_row_change_share {share:.1%}. A truncated source? If the change is "
                f"real, trigger the run with conf {{\"allow_row_change\": true}}")


def _check_stale(spec: DatasetSpec, last: dict, run: dict, where: str) -> None:
    if last["run_id"] != run["run_id"] and _when(run["logical_date"]) < _when(last["logical_date"]):
        raise PublishRefused(
            f"{where}: stale run: this run is for {run['logical_date']}, older than the last publication's "
            f"{_when(last['logical_date']).isoformat()} (run {last['run_id']}). A newer publication cannot be "
            f"overwritten by an older run; trigger a new run to republish")


def refuse_stale_early(spec: DatasetSpec, run: dict) -> None:
    """Before any work: a run older than the last publication is refused at once (commit checks it again, under
    a lock). Says nothing when the last publication cannot be read now."""
    from psycopg import Error as PgError

    from enrich_service.postgis import PublishTimeout, deadline

    last = None
    if spec.postgis is not None and has_connection(spec.postgis.conn_id):
        try:
            with connect(spec, f"enrich-check {spec.name}") as conn, deadline(conn, 10, "reading the catalog"):
                if conn.execute("SELECT to_regclass(%s)", (f"{split_table_name(spec.postgis.table)[0]}.{CATALOG}",
                                                          )).fetchone()[0]:
                    last = last_from_postgis(conn, spec.postgis.table)
        except (PgError, PublishTimeout, OSError) as exc:
            log.warning("%s: last publication not checked before the run: %s", spec.name, exc)
    elif spec.portal is not None:
        last = last_from_metadata(spec)
    if last and last.get("run_id"):
        _check_stale(spec, last, run, f"{spec.name}: refused before any work, the last publication is unchanged")


def last_from_metadata(spec: DatasetSpec) -> dict | None:
    """The last publication as its metadata.json records it (portal-only datasets)."""
    path = metadata_path(spec)
    if path is None or not path.exists():
        return None
    doc = json.loads(path.read_text())
    return {"run_id": doc.get("run_id"), "logical_date": doc.get("logical_date"), "rows": doc.get("rows"),
            "columns": doc.get("columns")}


# ---- PostGIS ----------------------------------------------------------------------------------------------------

def connect(spec: DatasetSpec, application_name: str = "enrich-publish"):
    """The publishing connection: the spec's Airflow Postgres connection with keepalives and the spec's time limits."""
    from enrich_service.postgis import connect as pg_connect

    p = spec.publish
    return pg_connect(**_conn_params(spec.postgis.conn_id), statement_timeout_s=p.statement_timeout_seconds,
                      lock_timeout_s=p.lock_timeout_seconds, application_name=application_name[:63])


def _conn_params(conn_id: str) -> dict:
    from airflow.sdk import BaseHook

    c = BaseHook.get_connection(conn_id)
    params = {k: v for k, v in {"host": c.host, "port": c.port, "user": c.login, "password": c.password,
                                 "dbname": c.schema}.items() if v not in (None, "")}
    for k, v in (c.extra_dejson or {}).items():  # libpq settings in the extras (sslmode, keepalives_idle...)
        if k in ("sslmode", "sslrootcert", "sslcert", "sslkey", "keepalives", "keepalives_idle",
                 "keepalives_interval", "keepalives_count", "tcp_user_timeout", "target_session_attrs"):
            params[k] = v
    return params


def _ensure_catalog(conn, schema: str) -> None:
    from psycopg import sql

    conn.execute("CREATE EXTENSION IF NOT EXISTS postgis")  # a fresh database (a no-op where it is)
    conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
    conn.execute(sql.SQL("""CREATE TABLE IF NOT EXISTS {} (table_name text PRIMARY KEY, dataset text, dag_id text,
        run_id text, logical_date timestamptz, version_table text, rows bigint, columns jsonb,
        published_at timestamptz)""").format(sql.Identifier(schema, CATALOG)))


def last_from_postgis(conn, table_name: str, lock: bool = False) -> dict | None:
    from psycopg import sql

    schema, table = split_table_name(table_name)
    row = conn.execute(sql.SQL("SELECT run_id, logical_date, rows, columns, version_table FROM {} "
                               "WHERE table_name = %s" + (" FOR UPDATE" if lock else "")).format(
        sql.Identifier(schema, CATALOG)), (f"{schema}.{table}",)).fetchone()
    if row is None or row[0] is None:
        return None
    return {"run_id": row[0], "logical_date": row[1], "rows": row[2], "columns": row[3], "version_table": row[4]}


def _version_prefix(table: str) -> str:
    return f"{table[:48]}__p"


def prepare_postgis(conn, spec: DatasetSpec, enriched_path: Path, run: dict) -> dict:
    """Guards, then the rows into a new version table (one transaction, bounded on both sides). Returns its name."""
    from psycopg import OperationalError

    from enrich_service.postgis import explain

    try:
        return _prepare(conn, spec, enriched_path, run)
    except OperationalError as exc:
        table = spec.postgis.table if spec.postgis else "?"
        message = explain(exc, f"{spec.name}: loading {table}") or (
            f"{spec.name}: lost the connection to PostGIS while loading {table} "
            f"({type(exc).__name__}: {str(exc).strip()}); nothing was published, the last publication is unchanged")
        raise RuntimeError(message) from exc


def _prepare(conn, spec: DatasetSpec, enriched_path: Path, run: dict) -> dict:
    import io

    import pyarrow as pa
    import pyarrow.csv as pacsv
    import shapely
    from psycopg import sql

    from enrich_service.postgis import deadline
    from enrich_service.postgis import publish as pg

    p = spec.publish
    schema, table = split_table_name(spec.postgis.table)
    step = f"{spec.name}: loading {schema}.{table}"
    with deadline(conn, p.statement_timeout_seconds + 5, f"{step} (catalog)"):
        _ensure_catalog(conn, schema)
        last = last_from_postgis(conn, spec.postgis.table)
    public, full = public_table(enriched_path)
    columns = column_types(enriched_path)
    check_guards(spec, last, run, public.num_rows, columns)
    # An all-null column keeps the type it was published with.
    previous = {name: t for name, t in (last or {}).get("columns") or []}
    cols = [c for c, _ in columns[:-1]]
    types = [previous.get(c, "text") if t == "null" else t for c, t in columns[:-1]]
    public = _csv_ready(public)
    geoms, ok = _points(full)
    ewkb = shapely.to_wkb(shapely.set_srid(geoms, 4326), hex=True, include_srid=True)
    body = public.rename_columns(cols).append_column(GEOM, pa.array(ewkb, pa.string()))
    buf = io.BytesIO()
    pacsv.write_csv(body, buf, pacsv.WriteOptions(include_header=False))

    version = f"{_version_prefix(table)}{uuid.uuid4().hex[:10]}"
    limit = p.statement_timeout_seconds + min(5.0, p.statement_timeout_seconds)
    with conn.transaction():
        ident = pg.stage(conn, schema, version, [*zip(cols, types), (GEOM, "geometry(Point, 4326)")],
                         csv=buf.getbuffer(), limit_s=limit, what=step)
        with deadline(conn, limit, f"{step}: indexing {version}"):
            pg.create_index(conn, f"{version}_geom", ident, [GEOM], gist=True)
            conn.execute(sql.SQL("COMMENT ON TABLE {} IS {}").format(ident, sql.Literal(
                f"{spec.name}: version loaded by {run['dag_id']} run {run['run_id']}")))
    pg.analyze(conn, schema, version, limit, step)
    return {"table": f"{schema}.{table}", "version_table": version, "rows": public.num_rows,
            "with_geometry": int(ok.sum()), "columns": [[c, t] for c, t in zip(cols, types)] + [columns[-1]]}


def _switch_view(conn, spec: DatasetSpec, prepared: dict, run: dict) -> None:
    """Within the caller's transaction: point the stable view at the prepared version and record it."""
    from psycopg import sql

    from enrich_service.postgis import publish as pg

    schema, table = split_table_name(spec.postgis.table)
    conn.execute(sql.SQL("INSERT INTO {} (table_name) VALUES (%s) ON CONFLICT DO NOTHING").format(
        sql.Identifier(schema, CATALOG)), (f"{schema}.{table}",))
    last = last_from_postgis(conn, spec.postgis.table, lock=True)  # one publisher at a time from here on
    check_guards(spec, last, run, prepared["rows"], prepared["columns"])
    version = prepared["version_table"]
    if conn.execute("SELECT to_regclass(%s)", (f"{schema}.{version}",)).fetchone()[0] is None:
        raise RuntimeError(f"{spec.name}: the prepared table {schema}.{version} is gone; clear publish_postgis")
    kind = conn.execute("SELECT c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                        "WHERE n.nspname = %s AND c.relname = %s", (schema, table)).fetchone()
    if kind and kind[0] != "v":
        # Published by an older version of this pipeline as a plain table: it becomes the first version (views
        # made on it keep reading it, and it is kept while they exist).
        legacy = f"{_version_prefix(table)}legacy"
        log.warning("%s.%s was a table: renamed to %s, the name is now a view", schema, table, legacy)
        conn.execute(sql.SQL("ALTER TABLE {} RENAME TO {}").format(sql.Identifier(schema, table),
                                                                   sql.Identifier(legacy)))
        kind = None
    # The view lists the last publication's columns in their order, new ones after them (CREATE OR REPLACE VIEW
    # may only add columns at the end).
    names = [c for c, _ in prepared["columns"]]
    order = [c for c, _ in (last or {}).get("columns") or [] if c in names] if kind else []
    order += [c for c in names if c not in order]
    pg.point_view(conn, sql.Identifier(schema, table), sql.Identifier(schema, version), order)
    conn.execute(sql.SQL("COMMENT ON VIEW {} IS {}").format(sql.Identifier(schema, table), sql.Literal(
        f"{spec.name}: published by {run['dag_id']} run {run['run_id']} (rows from {version})")))
    conn.execute(sql.SQL("""UPDATE {} SET dataset = %s, dag_id = %s, run_id = %s, logical_date = %s,
        version_table = %s, rows = %s, columns = %s, published_at = now() WHERE table_name = %s""").format(
        sql.Identifier(schema, CATALOG)),
        (spec.name, run["dag_id"], run["run_id"], run["logical_date"], version, prepared["rows"],
         json.dumps([[c, dict(prepared["columns"])[c]] for c in order]), f"{schema}.{table}"))


def drop_old_versions(conn, spec: DatasetSpec) -> list[str]:
    """Drop the version tables the view no longer reads (no CASCADE: one with users' views on it stays)."""
    from enrich_service.postgis.publish import drop_versions

    schema, table = split_table_name(spec.postgis.table)
    current = (last_from_postgis(conn, spec.postgis.table) or {}).get("version_table")
    return drop_versions(conn, schema, _version_prefix(table), keep=current)


def publish_postgis(conn, table_name: str, enriched_path: Path, comment: str, spec: DatasetSpec | None = None,
                    run: dict | None = None) -> dict:
    """Prepare and switch in one call, on a connection of the caller's (scripts, benchmarks, tests)."""
    from dataclasses import replace

    from .spec import PostgisOutput

    spec = spec or _adhoc_spec(table_name)
    spec = replace(spec, postgis=PostgisOutput(table=table_name))
    if run is None:  # not a DAG run: it takes the last publication's place in time (never makes a DAG run stale)
        _ensure_catalog(conn, split_table_name(table_name)[0])
        last = last_from_postgis(conn, table_name)
        run = run_info("adhoc", comment, last["logical_date"] if last else datetime.now().astimezone())
    prepared = prepare_postgis(conn, spec, enriched_path, run)
    with conn.transaction():
        _timeouts(conn, spec)
        _switch_view(conn, spec, prepared, run)
    drop_old_versions(conn, spec)
    return {k: v for k, v in prepared.items() if k != "columns"}


def _adhoc_spec(table_name: str) -> DatasetSpec:
    """A spec for publishing an enriched file outside a DAG: only the table and the default publish settings."""
    from .spec import Coordinates, PostgisOutput, Source

    return DatasetSpec(name=table_name.rpartition(".")[2], path=Path("."), source=Source(kind="parquet", path="."),
                       coordinates=Coordinates(lon="lon", lat="lat"), layers={},
                       postgis=PostgisOutput(table=table_name))


def _timeouts(conn, spec: DatasetSpec) -> None:
    from enrich_service.postgis import set_local_timeouts

    set_local_timeouts(conn, spec.publish.lock_timeout_seconds, spec.publish.statement_timeout_seconds)


def has_connection(conn_id: str) -> bool:
    """Whether Airflow knows the connection (metadata DB, AIRFLOW_CONN_* or a secrets backend)."""
    from airflow.sdk import BaseHook

    try:
        BaseHook.get_connection(conn_id)
        return True
    except Exception:  # AirflowNotFoundException, or no Airflow context at all
        return False


def postgis_hook_connection(conn_id: str, statement_timeout_s: float = 900, lock_timeout_s: float = 10):
    """A psycopg 3 autocommit connection from the Airflow Postgres connection `conn_id`, with keepalives and
    time limits (transactions are explicit: conn.transaction())."""
    from enrich_service.postgis import connect as pg_connect

    return pg_connect(**_conn_params(conn_id), statement_timeout_s=statement_timeout_s,
                      lock_timeout_s=lock_timeout_s)


# ---- files ----------------------------------------------------------------------------------------------------

def write_csv(enriched_path: Path, dest: Path) -> Path:
    """The portal CSV; staff open it in Excel, so no cell is written as a live formula (csv_safety)."""
    import pyarrow.csv as pacsv

    from enrich_service.io.csv_safety import formula_safe_table

    public, _ = public_table(enriched_path)
    with atomic_path(dest) as tmp:
        pacsv.write_csv(formula_safe_table(_csv_ready(public)), tmp)
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


def portal_folder(spec: DatasetSpec) -> Path | None:
    from .spec import resolve

    return Path(resolve(spec.portal.folder)) if spec.portal else None


def metadata_path(spec: DatasetSpec) -> Path | None:
    folder = portal_folder(spec)
    return folder / f"{spec.portal.basename}.metadata.json" if folder and spec.portal else None


def _run_tag(run: dict) -> str:
    return re.sub(r"[^A-Za-z0-9]", "", run["run_id"])[-24:]


def staged_name(dest: Path, run: dict) -> Path:
    return dest.with_name(f".{dest.stem}{STAGED}{_run_tag(run)}{dest.suffix}")


def _clear_staged(folder: Path, run: dict) -> None:
    """Staged files of other (failed) runs: never published, removed."""
    mine = f"{STAGED}{_run_tag(run)}."
    for p in folder.glob(f".*{STAGED}*"):
        if mine not in p.name:
            p.unlink(missing_ok=True)


def stage_files(spec: DatasetSpec, enriched_path: Path, run: dict) -> StagedFiles:
    """The portal files under hidden staged names; the published ones are not touched. Returns name -> staged."""
    from enrich_service.layers.sources import sha256_of

    folder = portal_folder(spec)
    assert folder is not None and spec.portal is not None  # only specs with a portal output stage files
    base = spec.portal.basename
    folder.mkdir(parents=True, exist_ok=True)
    wanted = {folder / f"{base}.csv": lambda p: write_csv(enriched_path, p),
              folder / f"{base}.geojson": lambda p: write_spatial(enriched_path, p, "GeoJSON", layer=base)}
    _clear_staged(folder, run)
    files: dict[str, StagedFile] = {}
    for dest, write in wanted.items():
        staged = write(staged_name(dest, run))
        files[dest.name] = {"staged": str(staged), "bytes": staged.stat().st_size, "sha256": sha256_of(staged)}
    return {"folder": str(folder), "files": files}


def stage_geopackage(spec: DatasetSpec, enriched_path: Path, run: dict, folder: Path) -> PostgisLoaded:
    """No PostGIS connection: the rows and points as `<basename>.gpkg`, staged like the portal files."""
    from enrich_service.layers.sources import sha256_of

    name = spec.portal.basename if spec.portal else spec.name
    assert spec.postgis is not None  # the GeoPackage stands in for the PostGIS output
    dest = folder / f"{name}.gpkg"
    staged = write_spatial(enriched_path, staged_name(dest, run), "GPKG", layer=spec.postgis.table.rpartition(".")[2])
    return {"geopackage": str(dest), "rows": None, "staged": str(staged), "sha256": sha256_of(staged)}


class _FileSwap:
    """Renames staged files into place, keeping the files they replace until `done()`; `undo()` puts those back.
    The staged files stay (hard links) so a retried commit finds them."""

    def __init__(self, tag: str):
        self.tag = tag
        self.moved: list[tuple[Path, Path | None]] = []

    def put(self, staged: Path, dest: Path) -> None:
        backup = None
        if dest.exists():
            backup = dest.with_name(f".{dest.name}.{self.tag}.previous")
            backup.unlink(missing_ok=True)
            os.link(dest, backup)
        tmp = dest.with_name(f".{dest.name}.{self.tag}.incoming")
        tmp.unlink(missing_ok=True)
        os.link(staged, tmp)
        self.moved.append((dest, backup))
        os.replace(tmp, dest)

    def undo(self) -> None:
        for dest, backup in reversed(self.moved):
            if backup is not None:
                os.replace(backup, dest)
            else:
                dest.unlink(missing_ok=True)
        self.moved = []

    def done(self) -> None:
        for _, backup in self.moved:
            if backup is not None:
                backup.unlink(missing_ok=True)


def commit(spec: DatasetSpec, run: dict, postgis: dict, files: dict, doc: dict) -> dict:
    """Make the prepared publication the published one, everywhere or nowhere. `doc` is the metadata without
    the PostGIS and file parts, which are filled in here from what was loaded and staged."""
    doc = {**doc, "logical_date": run["logical_date"],
           # (the version table's name is internal: a re-run of the same run publishes identical metadata)
           "postgis": {k: v for k, v in (postgis or {}).items() if k not in ("columns", "staged", "version_table")}
           or None,
           "files": {name: {k: v for k, v in f.items() if k != "staged"} for name, f in (files or {}).get(
               "files", {}).items()} or None,
           "columns": (postgis or {}).get("columns") or doc.get("columns")}
    folder = portal_folder(spec)
    pairs: list[tuple[Path, Path]] = []
    if files:
        pairs += [(Path(f["staged"]), folder / name) for name, f in files["files"].items()]
    if postgis and postgis.get("staged"):
        pairs.append((Path(postgis["staged"]), Path(postgis["geopackage"])))
    meta_dest = metadata_path(spec)
    if meta_dest is not None:
        meta_staged = staged_name(meta_dest, run)
        write_metadata(meta_staged, doc)
        pairs.append((meta_staged, meta_dest))  # last: it describes the others
    swap = _FileSwap(_run_tag(run))

    def put_files():
        try:
            for staged, dest in pairs:
                if not staged.exists():
                    raise RuntimeError(f"{spec.name}: staged file {staged} is missing; clear publish_files")
                swap.put(staged, dest)
        except BaseException:
            swap.undo()
            raise

    if spec.postgis is not None and postgis and postgis.get("version_table"):
        from psycopg import OperationalError

        from enrich_service.postgis import backend_of, deadline, explain, terminate

        p = spec.publish
        with connect(spec, f"enrich-commit {spec.name}") as conn:
            backend = backend_of(conn)
            try:
                with deadline(conn, p.statement_timeout_seconds + min(5.0, p.statement_timeout_seconds),
                              f"{spec.name}: switching {spec.postgis.table}"), conn.transaction():
                    _timeouts(conn, spec)
                    _switch_view(conn, spec, postgis, run)
                    put_files()  # inside the transaction: a failed COMMIT puts them back
            except PublishRefused:
                raise
            except BaseException as exc:
                if conn.broken:  # its transaction may still hold the view's lock: end it before looking
                    terminate(backend)
                put_back = bool(swap.moved) and not _committed(spec, run, postgis)
                if put_back:
                    swap.undo()
                message = explain(exc, f"{spec.name}: switching {spec.postgis.table}")
                if message is None and isinstance(exc, OperationalError):
                    message = (f"{spec.name}: lost the connection to PostGIS while switching {spec.postgis.table} "
                               f"({str(exc).strip()}); the switch was rolled back"
                               + (" and the files were put back" if put_back else "")
                               + ": the last publication is unchanged")
                if message:
                    raise RuntimeError(message) from exc
                raise
            swap.done()
            try:
                drop_old_versions(conn, spec)
            except Exception as exc:  # the publication is in; leftovers go next time
                log.warning("old versions of %s not dropped: %s", spec.postgis.table, exc)
    else:
        guard_files_only(spec, run, doc)
        put_files()
        swap.done()
    for staged, _ in pairs:
        staged.unlink(missing_ok=True)
    return doc


def _committed(spec: DatasetSpec, run: dict, postgis: dict) -> bool:
    """After an error around COMMIT: did the switch commit after all? (False when PostGIS cannot say.)"""
    if spec.postgis is None:
        return False
    try:
        with connect(spec, "enrich-commit-check") as conn:
            last = last_from_postgis(conn, spec.postgis.table)
    except Exception:
        return False
    return last is not None and last["version_table"] == postgis["version_table"] and last["run_id"] == run["run_id"]


def guard_files_only(spec: DatasetSpec, run: dict, doc: dict) -> None:
    check_guards(spec, last_from_metadata(spec), run, doc["rows"], doc.get("columns") or [])
