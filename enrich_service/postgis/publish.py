"""Stage, COPY, swap: the one way rows reach a published PostGIS table.

Rows are COPYed into a table nobody reads (`stage`); the swap then happens inside the caller's transaction, in one
of two ways that both keep what users built on the published name (grants, their views) and never use CASCADE:

- `refill`: the published table is refilled in place (DELETE + INSERT from the stage). Same table, same grants,
  same dependent views; readers see the old rows until COMMIT. The boundary layers and the geocoder reference.
- `point_view`: a stable view is pointed at a new version table (CREATE OR REPLACE VIEW). The dataset DAGs, where
  one task prepares the version table and a later one switches; `drop_versions` then removes the versions no view
  reads.

Each step may be bounded on the client side too (`limit_s`: connect.deadline), for a connection that goes silent.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import psycopg
from psycopg import errors as pgerrors
from psycopg import sql

from .connect import deadline

log = logging.getLogger(__name__)

# (name, SQL type) in COPY order; a type may carry constraints ("int PRIMARY KEY", "text NOT NULL").
Columns = Sequence[tuple[str, str]]
COPY_CHUNK = 8 << 20  # bytes per write of a CSV body


@contextlib.contextmanager
def bounded(conn: psycopg.Connection, limit_s: float | None, what: str) -> Iterator[None]:
    """`deadline(conn, limit_s, what)`, or no client-side bound when `limit_s` is None."""
    if limit_s is None:
        yield
    else:
        with deadline(conn, limit_s, what):
            yield


def column_list(names: Iterable[str]) -> sql.Composed:
    return sql.SQL(", ").join(map(sql.Identifier, names))


def create_table(conn: psycopg.Connection, table: sql.Composable, columns: Columns, *, temp: bool = False,
                 if_not_exists: bool = False, primary_key: Sequence[str] = ()) -> None:
    defs = [sql.SQL("{} {}").format(sql.Identifier(name), sql.SQL(kind)) for name, kind in columns]
    if primary_key:
        defs.append(sql.SQL("PRIMARY KEY ({})").format(column_list(primary_key)))
    conn.execute(sql.SQL("CREATE {}TABLE {}{} ({}){}").format(
        sql.SQL("TEMP " if temp else ""), sql.SQL("IF NOT EXISTS " if if_not_exists else ""), table,
        sql.SQL(", ").join(defs), sql.SQL(" ON COMMIT DROP" if temp else "")))


def stage(conn: psycopg.Connection, schema: str | None, name: str, columns: Columns, *,
          rows: Iterable[Sequence[Any]] = (), csv: bytes | memoryview | None = None, limit_s: float | None = None,
          what: str = "") -> sql.Identifier:
    """Within the caller's transaction: create the table `schema.name` (schema None: a temporary table dropped at
    COMMIT) and COPY into it either `rows` (tuples in column order) or `csv` (a headerless CSV body)."""
    table = sql.Identifier(name) if schema is None else sql.Identifier(schema, name)
    with bounded(conn, limit_s, f"{what}: CREATE TABLE {name}"):
        create_table(conn, table, columns, temp=schema is None)
    statement = sql.SQL("COPY {} ({}) FROM STDIN{}").format(table, column_list(c for c, _ in columns),
                                                           sql.SQL(" (FORMAT csv)" if csv is not None else ""))
    with bounded(conn, limit_s, f"{what}: COPY into {name}"), conn.cursor().copy(statement) as copy:
        if csv is not None:
            body = memoryview(csv)
            for start in range(0, len(body), COPY_CHUNK):
                copy.write(body[start:start + COPY_CHUNK])
        for row in rows:
            copy.write_row(row)
    return table


def create_index(conn: psycopg.Connection, name: str, table: sql.Composable, columns: Sequence[str], *,
                 gist: bool = False, if_not_exists: bool = False) -> None:
    conn.execute(sql.SQL("CREATE INDEX {}{} ON {}{} ({})").format(
        sql.SQL("IF NOT EXISTS " if if_not_exists else ""), sql.Identifier(name), table,
        sql.SQL(" USING gist" if gist else ""), column_list(columns)))


def refill(conn: psycopg.Connection, schema: str, table: str, columns: Columns, staging: sql.Composable,
           indexes: Sequence[Sequence[str]] = ()) -> sql.Identifier:
    """Within the caller's transaction: create `schema.table` if it is new (`indexes`: column lists; `geom` gets a
    GiST index), then replace its rows by the stage's. Refilled in place, never dropped, so grants and users'
    views on it stay, and a failure leaves it as it was."""
    target = sql.Identifier(schema, table)
    create_table(conn, target, columns, if_not_exists=True)
    for cols in indexes:
        create_index(conn, f"{table}_{'_'.join(cols)}_idx", target, cols, gist=list(cols) == ["geom"],
                     if_not_exists=True)
    names = column_list(c for c, _ in columns)
    conn.execute(sql.SQL("DELETE FROM {}").format(target))
    conn.execute(sql.SQL("INSERT INTO {} ({}) SELECT {} FROM {}").format(target, names, names, staging))
    return target


def point_view(conn: psycopg.Connection, view: sql.Identifier, source: sql.Identifier, columns: Sequence[str]
               ) -> None:
    """Within the caller's transaction: the view `view` reads `source` from COMMIT on. Replaced, never dropped:
    its grants, the views users made on it and its readers keep working (a new column may only come last)."""
    conn.execute(sql.SQL("CREATE OR REPLACE VIEW {} AS SELECT {} FROM {}").format(
        view, column_list(columns), source))


def upsert(conn: psycopg.Connection, table: sql.Identifier, row: dict[str, Any], key: Sequence[str],
           touch: str | None = None) -> None:
    """INSERT `row`, or UPDATE the row with the same `key` (and set `touch` to now())."""
    updates = [sql.SQL("{0} = EXCLUDED.{0}").format(sql.Identifier(c)) for c in row if c not in key]
    if touch:
        updates.append(sql.SQL("{} = now()").format(sql.Identifier(touch)))
    conn.execute(sql.SQL("INSERT INTO {} ({}) VALUES ({}) ON CONFLICT ({}) DO UPDATE SET {}").format(
        table, column_list(row), sql.SQL(", ").join(sql.Placeholder() * len(row)), column_list(key),
        sql.SQL(", ").join(updates)), list(row.values()))


def drop_versions(conn: psycopg.Connection, schema: str, prefix: str, keep: str | None) -> list[str]:
    """Drop the tables of `schema` named `prefix...` but `keep`, each in its own transaction. No CASCADE: a version
    with users' views on it (or locked by a reader) stays, with a warning."""
    names = [r[0] for r in conn.execute(
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s "
        "AND c.relkind = 'r' AND left(c.relname, %s) = %s", (schema, len(prefix), prefix)).fetchall()]
    dropped = []
    for name in names:
        if name == keep:
            continue
        try:
            with conn.transaction():
                conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(schema, name)))
            dropped.append(name)
        except (pgerrors.DependentObjectsStillExist, pgerrors.LockNotAvailable) as exc:
            log.warning("kept %s.%s: %s", schema, name, str(exc).splitlines()[0])
    return dropped


def analyze(conn: psycopg.Connection, schema: str, name: str, limit_s: float | None = None, what: str = "") -> None:
    with bounded(conn, limit_s, f"{what}: ANALYZE {name}"):
        conn.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(schema, name)))
