"""Checks added where the mutation run (scripts/mutation.py, docs/testing.md) found mutants nothing killed.

The engine, the quality gate and the geocoder, on the details a wrong answer would hide in:

- a row dated before a layer's first version: its error names that version's first day (read from the manifest
  YAML here), and it names no version; a row the caller marked invalid names none and gets no tag, dated or not;
- `nearest_within_m` accepted at both ends of its range (0 and 5,000 m) and refused just outside;
- an empty dataset measures 0 % unmatched and 0 % unlocated, and passes the gate;
- a geocode request naming `city_limits` itself keeps that column (shapely on the city file says what it is);
- a geocoded record dated before a layer's first version gets no key and no rule, only its error;
- an address spec's per-level floors fail the gate through `quality.check`.

The PostGIS publication (dags/enrich_pipeline/publish.py): what a reader of the published view gets, read back
from PostGIS and compared with rows written here by hand, not with what the publisher says it wrote:

- the rows, their values and types, and each point's coordinates and SRID; the internal columns left out;
- the view's columns in the last publication's order, new columns after them; an all-null column keeping the
  type it was published with;
- the catalog row (run, row count, version table, columns) and only the current version table kept;
- each guard (row count, stale run, a column gone, a column of another type) refusing at its threshold and
  leaving the view and the catalog as they were, and `allow_row_change` letting a real change through;
- a name that an older pipeline published as a plain table becoming the view;
- one publisher at a time: a switch waits for the catalog row another publisher holds, then checks its guards
  against what that one recorded;
- the boundary layers (postgis.layers through the same helpers): each version's table holds its features once,
  after a second load too, refilled in place under a user's view, with its catalog row.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import shapely
import yaml

from .conftest import BOUNDARIES, REPO
from .test_versions import client as versions_client  # noqa: F401 (the in-process service, shared)

if str(REPO / "dags") not in sys.path:
    sys.path.append(str(REPO / "dags"))

SCHEMA = "mutation_kills"
TABLE = f"{SCHEMA}.published_probe"
COLUMNS = [("rid", "bigint"), ("name", "text"), ("district", "text"), ("day", "date"), ("score", "double precision"),
           ("ok", "boolean"), ("geom", "geometry")]

TYPES = {"rid": pa.int64(), "name": pa.string(), "district": pa.string(), "day": pa.date32(), "score": pa.float64(),
         "ok": pa.bool_()}  # for an empty file (arrow's type of an all-null column is `null`)


def rows(n: int, first: int = 1) -> list[dict]:
    """n rows by hand; every third has no location. Coordinates are in San Diego, distinct per row."""
    return [{"rid": first + i, "name": f"place {first + i}", "district": str(1 + i % 9),
             "day": dt.date(2022, 12, 1) + dt.timedelta(days=i), "score": 0.5 * i, "ok": i % 2 == 0,
             "lon": None if i % 3 == 2 else -117.2 + 0.001 * i, "lat": None if i % 3 == 2 else 32.7 + 0.002 * i}
            for i in range(n)]


def write_enriched(path: Path, records: list[dict], drop: tuple[str, ...] = (), first: dict | None = None) -> Path:
    """An enriched.parquet as assemble writes it: the columns, then the point in __lon/__lat and an internal column.
    `first`: extra columns put before the others."""
    cols: dict[str, pa.Array] = {name: pa.array(values) for name, values in (first or {}).items()}
    for name in ("rid", "name", "district", "day", "score", "ok"):
        if name not in drop:
            cols[name] = pa.array([r[name] for r in records], None if records else TYPES[name])
    cols["__lon"] = pa.array([r["lon"] for r in records], pa.float64())
    cols["__lat"] = pa.array([r["lat"] for r in records], pa.float64())
    cols["__row"] = pa.array(range(len(records)), pa.int64())
    pq.write_table(pa.table(cols), path)
    return path


def scalar(conn, query: str, params: tuple = ()) -> Any:
    row = conn.execute(query, params).fetchone()
    assert row is not None, query
    return row[0]


def published(conn, table: str = TABLE) -> list[tuple]:
    return conn.execute(f"SELECT rid, name, district, day, score, ok, ST_X(geom), ST_Y(geom), ST_SRID(geom) "
                        f"FROM {table} ORDER BY rid").fetchall()


def expected(records: list[dict], name: bool = True) -> list[tuple]:
    return [(r["rid"], r["name"] if name else None, r["district"], r["day"], r["score"], r["ok"], r["lon"], r["lat"],
             None if r["lon"] is None else 4326) for r in records]


def view_columns(conn, table: str = TABLE) -> list[tuple[str, str]]:
    schema, name = table.split(".")
    return [tuple(r) for r in conn.execute(
        "SELECT column_name, CASE WHEN data_type = 'USER-DEFINED' THEN udt_name ELSE data_type END "
        "FROM information_schema.columns WHERE table_schema = %s AND table_name = %s ORDER BY ordinal_position",
        (schema, name)).fetchall()]


def catalog(conn, table: str = TABLE) -> tuple:
    return conn.execute(f"SELECT run_id, rows, version_table, columns FROM {table.split('.')[0]}.enrich_publications "
                        "WHERE table_name = %s", (table,)).fetchone()


def version_tables(conn, table: str = TABLE) -> list[str]:
    schema, name = table.split(".")
    return [r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = %s AND tablename LIKE %s "
                                       "ORDER BY 1", (schema, f"{name}\\_\\_p%")).fetchall()]


def check_publications_read_back(dsn: str, tmp: Path) -> None:
    from enrich_pipeline.publish import PublishRefused, publish_postgis, run_info

    tmp.mkdir(parents=True, exist_ok=True)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")
        first = rows(5)
        out = publish_postgis(conn, TABLE, write_enriched(tmp / "a.parquet", first), comment="first")
        assert (out["rows"], out["with_geometry"], out["table"]) == (5, 4, TABLE), out
        assert published(conn) == expected(first)
        assert view_columns(conn) == COLUMNS
        run_id, n, version, columns = catalog(conn)
        assert (run_id, n, version_tables(conn)) == ("first", 5, [version]), (run_id, n, version)
        assert columns == [[c, t] for c, t in COLUMNS[:-1]] + [["geom", "geometry(Point,4326)"]], columns
        assert scalar(conn, "SELECT count(*) FROM pg_indexes WHERE schemaname = %s AND tablename = %s "
                      "AND indexdef LIKE '%%USING gist (geom)%%'", (SCHEMA, version)) == 1

        # 20 % more rows (the guard's limit, allowed), a new column written first, and `name` all null (arrow type null)
        # this time: it keeps the type it was published with.
        second = rows(6, first=11)
        path = write_enriched(tmp / "b.parquet", [{**r, "name": None} for r in second],
                              first={"extra": [f"x{i}" for i in range(6)]})
        publish_postgis(conn, TABLE, path, comment="second")
        assert published(conn) == expected(second, name=False)
        assert view_columns(conn) == [*COLUMNS, ("extra", "text")]  # the last order kept, new columns after
        run_id, n, version, _ = catalog(conn)
        assert (run_id, n, version_tables(conn)) == ("second", 6, [version]), (run_id, n, version_tables(conn))

        def refused(path: Path, *words: str, run: dict | None = None) -> None:
            with pytest.raises(PublishRefused) as info:
                publish_postgis(conn, TABLE, path, comment="refused", run=run)
            for word in words:
                assert word in str(info.value), (word, str(info.value))
            assert published(conn) == expected(second, name=False)
            assert catalog(conn)[:3] == (run_id, n, version) and version_tables(conn) == [version]

        extra = {"extra": [f"x{i}" for i in range(8)]}
        refused(write_enriched(tmp / "c.parquet", rows(8), first=extra), "from 6", "to 8", "33.3%")
        refused(write_enriched(tmp / "e.parquet", rows(6), drop=("score",), first={"extra": ["x"] * 6}),
                "'score'", "missing")
        refused(write_enriched(tmp / "f.parquet", [{**r, "day": str(r["day"])} for r in rows(6)],
                               first={"extra": ["x"] * 6}), "'day'", "date", "text")
        refused(write_enriched(tmp / "g.parquet", rows(6), first={"extra": ["x"] * 6}), "stale run",
                run=run_info("dag", "old", dt.datetime(2000, 1, 1, tzinfo=dt.UTC)))
        # A real change of the row count goes through when the run says so.
        third = rows(8, first=21)
        publish_postgis(conn, TABLE, write_enriched(tmp / "h.parquet", third, first=extra), comment="third",
                        run=run_info("dag", "third", dt.datetime.now(dt.UTC), allow_row_change=True))
        assert published(conn) == expected(third) and catalog(conn)[:2] == ("third", 8)

        # A name an older pipeline published as a plain table: it becomes the view over the new rows; the old
        # table is kept while a user's view reads it.
        legacy = f"{SCHEMA}.legacy_probe"
        conn.execute(f"CREATE TABLE {legacy} AS SELECT 7::bigint AS rid")
        conn.execute(f"CREATE VIEW {SCHEMA}.users_view AS SELECT rid FROM {legacy}")
        publish_postgis(conn, legacy, write_enriched(tmp / "i.parquet", first), comment="over a table")
        assert published(conn, legacy) == expected(first)
        assert scalar(conn, "SELECT relkind FROM pg_class WHERE oid = %s::regclass", (legacy,)) == "v"
        assert conn.execute(f"SELECT rid FROM {SCHEMA}.users_view").fetchall() == [(7,)]

        # An empty publication: the next may be empty too; any rows after it are a change of 100 %+.
        empty = f"{SCHEMA}.empty_probe"
        publish_postgis(conn, empty, write_enriched(tmp / "j.parquet", []), comment="empty")
        publish_postgis(conn, empty, write_enriched(tmp / "j.parquet", []), comment="empty again")
        assert catalog(conn, empty)[:2] == ("empty again", 0)
        with pytest.raises(PublishRefused, match="from 0"):
            publish_postgis(conn, empty, write_enriched(tmp / "k.parquet", rows(1)), comment="one row")
        conn.execute(f"DROP SCHEMA {SCHEMA} CASCADE")


def test_publications_read_back_from_postgis(pg_dsn, tmp_path):
    check_publications_read_back(pg_dsn, tmp_path)


def check_a_switch_waits_for_the_publisher_holding_the_catalog_row(dsn: str, tmp: Path) -> None:
    """Another publisher holds the catalog row and records a newer run while this one switches: this one must wait
    for it and then refuse as stale, not check its guards against the row as it was and overwrite the newer one."""
    from enrich_pipeline.publish import PublishRefused, publish_postgis, run_info

    tmp.mkdir(parents=True, exist_ok=True)
    table = f"{SCHEMA}_lock.probe"
    with psycopg.connect(dsn, autocommit=True) as conn, psycopg.connect(dsn, autocommit=True) as other, \
            psycopg.connect(dsn, autocommit=True) as watch, ThreadPoolExecutor(1) as pool:
        conn.execute(f"DROP SCHEMA IF EXISTS {SCHEMA}_lock CASCADE")
        first = rows(5)
        publish_postgis(conn, table, write_enriched(tmp / "first.parquet", first), comment="first")
        late = run_info("dag", "late", dt.datetime.now(dt.UTC))
        other.execute("BEGIN")
        other.execute(f"SELECT 1 FROM {SCHEMA}_lock.enrich_publications WHERE table_name = %s FOR UPDATE", (table,))
        switching = pool.submit(publish_postgis, conn, table, write_enriched(tmp / "late.parquet", rows(5, first=6)),
                                "late", run=late)
        deadline = time.monotonic() + 60
        while not scalar(watch, "SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = %s",
                         (conn.info.backend_pid,)):
            assert not switching.done(), f"the switch did not wait for the catalog row: {switching.result()}"
            assert time.monotonic() < deadline, "the publisher never reached the switch within 60 s"
            time.sleep(0.02)
        other.execute(f"UPDATE {SCHEMA}_lock.enrich_publications SET run_id = 'newer', "
                      "logical_date = now() + interval '1 day' WHERE table_name = %s", (table,))
        other.execute("COMMIT")
        with pytest.raises(PublishRefused, match="stale run"):
            switching.result(timeout=60)
        assert published(conn, table) == expected(first)
        assert catalog(conn, table)[0] == "newer"
        conn.execute(f"DROP SCHEMA {SCHEMA}_lock CASCADE")


def test_a_switch_waits_for_the_publisher_holding_the_catalog_row(pg_dsn, tmp_path):
    check_a_switch_waits_for_the_publisher_holding_the_catalog_row(pg_dsn, tmp_path)


def check_boundary_loads_refill_in_place(dsn: str, store) -> None:
    """Two loads of the council districts (both versions): each table holds each feature once, with its key and a
    polygon covering the feature's point_on_surface, and the catalog one row per version. A user's view on the
    latest layer reads through the second load (the table refilled in place, not dropped)."""
    from enrich_service.postgis import load_layers

    schema = f"{SCHEMA}_layers"
    versions = store.versions["council_district"]
    districts = dataclasses.replace(store, versions={"council_district": versions})
    with psycopg.connect(dsn) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        conn.execute(f"CREATE SCHEMA {schema}")
        conn.commit()
        load_layers(conn, districts, schema=schema)
        conn.execute(f"CREATE VIEW {schema}.users_view AS SELECT key FROM {schema}.boundary_council_district")
        conn.execute(f"UPDATE {schema}.boundary_layers SET sha256 = 'stale', features = 0")  # the load rewrites it
        conn.commit()
        load_layers(conn, districts, schema=schema)
        for v in versions:
            table = f"{schema}.boundary_council_district_{v.version}"
            got = conn.execute(f"SELECT fid, key, ST_SRID(geom) FROM {table} ORDER BY fid").fetchall()
            assert got == [(i, k, 4326) for i, k in enumerate(v.keys)], (v.version, got)
            inside = [shapely.point_on_surface(g).wkt for g in v.geoms]
            covered = scalar(conn, f"SELECT bool_and(ST_Covers(t.geom, ST_GeomFromText(p.wkt, 4326))) FROM {table} t "
                             "JOIN unnest(%s::text[]) WITH ORDINALITY AS p(wkt, n) ON t.fid = p.n - 1", (inside,))
            assert covered, v.version
            indexes: dict[bool, int] = dict(conn.execute("SELECT indexdef LIKE '%%USING gist (geom)%%', count(*) FROM pg_indexes "
                                                         "WHERE schemaname = %s AND tablename = %s GROUP BY 1",
                                                         (schema, table.split(".")[1])).fetchall())
            assert indexes.get(True) == 1, (v.version, indexes)  # the geometry's GiST index, once
        catalog_rows = conn.execute(f"SELECT layer, version, effective_from, sha256, features FROM "
                                    f"{schema}.boundary_layers ORDER BY effective_from").fetchall()
        assert catalog_rows == [("council_district", v.version, v.effective_from, v.source.sha256, v.n_features)
                                for v in versions], catalog_rows
        assert sorted(r[0] for r in conn.execute(f"SELECT key FROM {schema}.users_view").fetchall()) == \
            sorted(versions[-1].keys)
        conn.execute(f"DROP SCHEMA {schema} CASCADE")
        conn.commit()


def test_boundary_loads_refill_in_place(pg_dsn, store):
    check_boundary_loads_refill_in_place(pg_dsn, store)


# ---- the engine, the quality gate, the geocoder -----------------------------------------------------------------

def first_version_day(layer: str) -> dt.date:
    doc = yaml.safe_load((REPO / "boundaries" / "manifest.yaml").read_text())
    return min(v["effective_from"] for v in doc["layers"][layer]["versions"])


def check_row_dates_and_invalid_rows(engine, probe) -> None:
    """probe: test_versions.probe_point, a point whose district differs between the 2011 and 2021 lines."""
    first = first_version_day("council_district")
    dates = np.array([first - dt.timedelta(days=1), first, "2023-01-01", "2023-01-01"], dtype="datetime64[D]")
    valid = np.array([True, True, True, False])
    result = engine.tag(np.full(4, probe[0]), np.full(4, probe[1]), valid, ["council_district"], dates=dates)
    assert result.row_errors == {0: ("date", f"{first - dt.timedelta(days=1)} is before the first version of "
                                             f"council_district (in force from {first})")}, result.row_errors
    tags = result.layers["council_district"]
    assert list(tags.version) == [None, "2011", "2021", None]
    assert list(tags.keys()) == [None, probe[2]["2011"], probe[2]["2021"], None]
    # Undated (the one-version fast path): a row the caller marked invalid gets nothing, though its point is real;
    # here a vertex of the 6/7 edge, which a valid row gets with the rule "edge".
    v = engine.store.versions["council_district"][-1]
    edge = shapely.get_coordinates(shapely.intersection(*(v.geoms[v.keys == k][0] for k in ("6", "7"))))[0]
    tags = engine.tag(np.array([probe[0], edge[0], edge[0]]), np.array([probe[1], edge[1], edge[1]]),
                      np.array([True, True, False]), ["council_district"]).layers["council_district"]
    assert list(tags.keys())[::2] == [probe[2]["2021"], None] and tags.keys()[1] in ("6", "7"), list(tags.keys())
    assert list(tags.rule_names()) == [None, "edge", None] and tags.used[0]["points"] == 2, tags.used


def test_row_dates_and_invalid_rows(engine, store):
    from .test_versions import probe_point

    check_row_dates_and_invalid_rows(engine, probe_point(store))


def check_nearest_within_bounds(engine) -> None:
    from enrich_service.engine.tagger import MAX_NEAREST_M
    from enrich_service.errors import InvalidInput

    at_sea = (np.array([-117.35]), np.array([32.75]))  # ~10 km off Point Loma: no district within 5 km
    for metres in (0.0, MAX_NEAREST_M):
        tags = engine.tag(*at_sea, np.ones(1, dtype=bool), ["council_district"],
                          nearest_within_m=metres).layers["council_district"]
        assert list(tags.keys()) == [None] and np.isnan(tags.distance_m[0]), metres
    for metres in (-0.01, MAX_NEAREST_M + 0.01):
        with pytest.raises(InvalidInput) as info:
            engine.tag(*at_sea, np.ones(1, dtype=bool), ["council_district"], nearest_within_m=metres)
        assert info.value.field == "nearest_within_m", metres


def test_nearest_within_bounds(engine):
    check_nearest_within_bounds(engine)


def check_an_empty_dataset_passes_the_gate(tmp: Path) -> None:
    from enrich_pipeline.assemble import ERROR, internal
    from enrich_pipeline.quality import check, measure
    from enrich_pipeline.spec import load_spec

    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "empty.yaml").write_text(f"""
name: empty_case
source: {{kind: csv, path: "{tmp / 'rows.csv'}"}}
id: rid
coordinates: {{lon: x, lat: y}}
layers: {{council_district: district}}
quality: {{layer: council_district, within: city_limits, max_unmatched_share: 0.0, max_unlocated_share: 0.0}}
outputs: {{portal: {{folder: "{tmp / 'portal'}", basename: empty_case}}}}
""")
    spec = load_spec(tmp / "empty.yaml")
    pq.write_table(pa.table({"rid": pa.array([], pa.int64()), "district": pa.array([], pa.string()),
                             internal("city_limits"): pa.array([], pa.string()),
                             ERROR: pa.array([], pa.string())}), tmp / "empty.parquet")
    stats = measure(spec, tmp / "empty.parquet")
    assert (stats["rows"], stats["unmatched_share"], stats["unlocated_share"]) == (0, 0.0, 0.0), stats
    check(spec, stats)


def test_an_empty_dataset_passes_the_gate(tmp_path):
    check_an_empty_dataset_passes_the_gate(tmp_path)


GARDENA = "4608 Gardena Avenue, San Diego, CA 92110"


def check_a_geocode_naming_city_limits_keeps_it(client) -> None:
    import orjson

    doc = orjson.loads((BOUNDARIES / "san_diego_city_boundary.geojson").read_bytes())
    city = shapely.union_all([shapely.from_geojson(orjson.dumps(f["geometry"])) for f in doc["features"]])
    codes = {str(f["properties"]["CODE"]) for f in doc["features"]}
    body = client.get("/v1/geocode", params={"address": GARDENA, "layers": "council_district,city_limits"}).json()
    assert shapely.covers(city, shapely.Point(body["lon"], body["lat"])), body
    assert body.get("city_limits") in codes and body["council_district"] == "2", body
    assert "outside_city_limits" not in (body.get("flags") or ""), body


def check_a_record_dated_before_the_first_version_gets_no_rule(client) -> None:
    """Its error says why it has no district; a rule ("outside") would say it lies outside every district."""
    import orjson

    first = first_version_day("council_district")
    record = {"id": 1, "address": "4712 Mt St Helens Dr", "date": str(first - dt.timedelta(days=1))}
    r = client.post("/v1/geocode-join", content=orjson.dumps({"records": [record], "layers": ["council_district"]}),
                    headers={"content-type": "application/json"})
    row = r.json()["results"][0]
    assert row["match"] != "none" and row["error"].startswith(f"date: {record['date']} is before"), row
    assert (row["council_district"], row["council_district_rule"], row["council_district_version"]) == \
        (None, None, None), row


def test_a_record_dated_before_the_first_version_gets_no_rule(versions_client):  # noqa: F811 (the fixture)
    check_a_record_dated_before_the_first_version_gets_no_rule(versions_client)


def check_the_address_gate_runs_in_the_quality_check() -> None:
    """An address spec's per-level floors (min_tagged_share) fail the gate through quality.check, as the DAG calls it."""
    from enrich_pipeline.geocode import match_quality
    from enrich_pipeline.quality import QualityGateFailed, check
    from enrich_pipeline.spec import find_spec

    spec = find_spec("pd_collisions_2017")
    floor = spec.quality.min_tagged_share["intersection"]
    tagged = 1  # of 4 intersections: under the floor
    assert tagged / 4 < floor
    levels = ["intersection"] * 4
    rows = match_quality(levels, ["3"] * tagged + [None] * (4 - tagged), [None] * tagged + ["ambiguous"] * 3)
    stats = {"rows": 4, "should_match": 4, "unmatched": 0, "unmatched_share": 0.0, "unlocated": 0,
             "unlocated_share": 0.0, "outside_area": 0, "unmatched_ids": [], "unlocated_ids": [], "match_levels": rows}
    with pytest.raises(QualityGateFailed, match="1 of 4 intersection matches carry a council_district"):
        check(spec, stats)


def test_the_address_gate_runs_in_the_quality_check():
    check_the_address_gate_runs_in_the_quality_check()


def test_a_geocode_naming_city_limits_keeps_it(versions_client):  # noqa: F811 (the fixture)
    check_a_geocode_naming_city_limits_keeps_it(versions_client)
