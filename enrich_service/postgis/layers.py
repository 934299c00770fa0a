"""The boundary layers in PostGIS: one table per layer version (`boundary_<layer>_<version>`), a view
`boundary_<layer>` on the latest, and the catalog `boundary_layers` (versions, dates, sha256).

Every version of every layer is loaded in ONE transaction (publish.stage + publish.refill): a failure leaves every
table as it was. Used by the CLI (`load-postgis`), the boundary-refresh DAG, the tests and the benchmarks.
"""

from __future__ import annotations

import logging
import re

import numpy as np
import orjson
import psycopg
import shapely
from psycopg import sql

from ..layers.store import LayerStore, LayerVersion
from .connect import set_local_timeouts
from .publish import create_table, point_view, refill, stage, upsert

log = logging.getLogger(__name__)

CATALOG = "boundary_layers"
_CATALOG_COLUMNS = (("layer", "text"), ("version", "text"), ("effective_from", "date"), ("effective_to", "date"),
                    ("sha256", "text"), ("table_name", "text"), ("features", "int"),
                    ("loaded_at", "timestamptz DEFAULT now()"))
_COLUMNS = (("fid", "int PRIMARY KEY"), ("key", "text NOT NULL"), ("label", "text"), ("fields", "jsonb"),
            ("geom", "geometry(MultiPolygon, 4326) NOT NULL"))


def table_name(layer: str, version: str) -> str:
    return re.sub(r"[^a-z0-9_]", "_", f"boundary_{layer}_{version}".lower())


def load_layers(conn: psycopg.Connection, store: LayerStore, schema: str = "public",
                lock_timeout_s: float = 10) -> list[str]:
    """Load every version of every layer in one transaction; returns the table names. Idempotent: a re-run
    refills the same tables."""
    tables = []
    with conn.transaction():
        set_local_timeouts(conn, lock_timeout_s)
        conn.execute("CREATE EXTENSION IF NOT EXISTS postgis")
        create_table(conn, sql.Identifier(schema, CATALOG), _CATALOG_COLUMNS, if_not_exists=True,
                     primary_key=("layer", "version"))
        for name, versions in store.versions.items():
            for v in versions:
                view = f"boundary_{name}" if v is versions[-1] else None
                tables.append(_load_version(conn, v, schema, view))
    for t in tables:
        conn.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(schema, t)))
    log.info("loaded %d boundary tables in one transaction", len(tables))
    return tables


def _load_version(conn: psycopg.Connection, v: LayerVersion, schema: str, view: str | None) -> str:
    """Within the caller's transaction: stage the version's features, refill its table, point the view."""
    table = table_name(v.layer, v.version)
    geoms = shapely.to_wkb(np.array([_multi(g) for g in v.geoms], dtype=object), hex=True)
    rows = ((i, v.keys[i], v.labels[i], orjson.dumps(v.fields[i]).decode(), f"SRID=4326;{geoms[i]}")
            for i in range(v.n_features))
    staging = stage(conn, None, f"{table}__load", _COLUMNS, rows=rows)
    target = refill(conn, schema, table, _COLUMNS, staging, indexes=(("geom",), ("key",)))
    if view:
        point_view(conn, sql.Identifier(schema, view), target, [c for c, _ in _COLUMNS])
    upsert(conn, sql.Identifier(schema, CATALOG),
           {"layer": v.layer, "version": v.version, "effective_from": v.effective_from,
            "effective_to": v.effective_to, "sha256": v.source.sha256, "table_name": table,
            "features": v.n_features}, key=("layer", "version"), touch="loaded_at")
    log.info("loaded %s (%d features)", table, v.n_features)
    return table


def _multi(geom):
    return geom if shapely.get_type_id(geom) == 6 else shapely.multipolygons([geom])
