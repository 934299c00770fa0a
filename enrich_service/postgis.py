"""Load the boundary layers into PostGIS so SQL users and the DAGs can join in the database too.

One table per layer version (`boundary_<layer>_<version>`: key, label, fields, geom MultiPolygon 4326, GiST index),
a view `boundary_<layer>` on the newest version, and a catalog `boundary_layers` with dates and sha256. Each table
is loaded with COPY into a staging table and renamed into place in one transaction: readers never see it half-made.
"""

from __future__ import annotations

import logging
import re

import numpy as np
import orjson
import psycopg
import shapely
from psycopg import sql

from .layers.store import LayerStore, LayerVersion

log = logging.getLogger(__name__)

CATALOG = "boundary_layers"


def table_name(layer: str, version: str) -> str:
    return re.sub(r"[^a-z0-9_]", "_", f"boundary_{layer}_{version}".lower())


def load_layers(conn: psycopg.Connection, store: LayerStore, schema: str = "public") -> list[str]:
    """Load every version of every layer; returns the table names. Idempotent: re-running replaces the tables."""
    with conn.transaction():
        conn.execute("CREATE EXTENSION IF NOT EXISTS postgis")
        conn.execute(sql.SQL("""CREATE TABLE IF NOT EXISTS {}.{} (
            layer text, version text, effective_from date, effective_to date, sha256 text, table_name text,
            features int, loaded_at timestamptz DEFAULT now(), PRIMARY KEY (layer, version))""").format(
            sql.Identifier(schema), sql.Identifier(CATALOG)))
    tables = []
    for name, versions in store.versions.items():
        for v in versions:
            view = f"boundary_{name}" if v is versions[-1] else None
            tables.append(_load_version(conn, v, schema, view))
    return tables


def _load_version(conn: psycopg.Connection, v: LayerVersion, schema: str, view: str | None) -> str:
    table = table_name(v.layer, v.version)
    staging = f"{table}__staging"
    ident = lambda t: sql.Identifier(schema, t)  # noqa: E731
    geoms = shapely.to_wkb(np.array([_multi(g) for g in v.geoms], dtype=object), hex=True)
    with conn.transaction():
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(ident(staging)))
        conn.execute(sql.SQL("""CREATE TABLE {} (fid int PRIMARY KEY, key text NOT NULL, label text,
            fields jsonb, geom geometry(MultiPolygon, 4326) NOT NULL)""").format(ident(staging)))
        with conn.cursor().copy(sql.SQL("COPY {} (fid, key, label, fields, geom) FROM STDIN").format(
                ident(staging))) as copy:
            for i in range(v.n_features):
                copy.write_row((i, v.keys[i], v.labels[i], orjson.dumps(v.fields[i]).decode(),
                                f"SRID=4326;{geoms[i]}"))
        conn.execute(sql.SQL("CREATE INDEX ON {} USING gist (geom)").format(ident(staging)))
        conn.execute(sql.SQL("CREATE INDEX ON {} (key)").format(ident(staging)))
        # The swap, with the layer's view recreated in the same transaction.
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {} CASCADE").format(ident(table)))
        conn.execute(sql.SQL("ALTER TABLE {} RENAME TO {}").format(ident(staging), sql.Identifier(table)))
        if view:
            conn.execute(sql.SQL("CREATE OR REPLACE VIEW {} AS SELECT * FROM {}").format(ident(view), ident(table)))
        conn.execute(sql.SQL("ANALYZE {}").format(ident(table)))
        conn.execute(sql.SQL("""INSERT INTO {} (layer, version, effective_from, effective_to, sha256, table_name,
            features) VALUES (%s, %s, %s, %s, %s, %s, %s)
            ON CONFLICT (layer, version) DO UPDATE SET effective_from = EXCLUDED.effective_from,
              effective_to = EXCLUDED.effective_to, sha256 = EXCLUDED.sha256, table_name = EXCLUDED.table_name,
              features = EXCLUDED.features, loaded_at = now()""").format(ident(CATALOG)),
                     (v.layer, v.version, v.effective_from, v.effective_to, v.source.sha256, table, v.n_features))
    log.info("loaded %s (%d features)", table, v.n_features)
    return table


def _multi(geom):
    return geom if shapely.get_type_id(geom) == 6 else shapely.multipolygons([geom])
