"""The Airflow DAGs end to end with dag.test(): the real service, the real PostGIS, a real (local) SMTP server.

Airflow runs with a SQLite metadata DB in a temporary AIRFLOW_HOME made for this module (`airflow db migrate`,
about 4 s); connections come from AIRFLOW_CONN_* variables. Every DAG run reads the real files in ../shared/data
through the specs' ${ENRICH_DATA_DIR} and publishes into a temporary folder and the `test` database.
"""

from __future__ import annotations

import email
import json
import os
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import psycopg
import pytest

from .conftest import DATA, PG_DSN, POINTS, REPO, _free_port, start_service

DAGS = REPO / "dags"
if str(DAGS) not in sys.path:  # enrich_pipeline lives beside the DAG files (Airflow puts that folder on sys.path)
    sys.path.append(str(DAGS))
ADMIN_KEY = "test-admin-key"
METERS_CSV = POINTS / "treas_parking_meters_loc_datasd.csv"
STOPS_GEOJSON = POINTS / "transit_stops_datasd.geojson"
# A spec like transit_stops but whose quality gate counts every row (no city-limits filter): half the stops lie
# outside the city, so the gate must stop it before anything is published.
UNFILTERED_SPEC = """
name: transit_stops_unfiltered
description: Transit stops, gate without the city-limits filter
source: {kind: geojson, path: "${ENRICH_DATA_DIR}/points/transit_stops_datasd.geojson"}
id: objectid
coordinates: {lon: geometry_lon, lat: geometry_lat}
layers: {council_district: council_district}
quality: {layer: council_district, within: null, max_unmatched_share: 0.01, show: 5}
batch_rows: 4000
outputs:
  postgis: {table: public.transit_stops_unfiltered}
  portal: {folder: "${ENRICH_PUBLISH_DIR}/transit_stops_unfiltered", basename: transit_stops_unfiltered}
"""

# A SQL source in State Plane feet with an as-of date column: meters dated before 2022-12-10 take the 2011 lines.
SQL_SPEC = """
name: meters_sql_2230
description: Parking meters from SQL, in EPSG:2230, tagged as of their inventory date
source:
  kind: sql
  conn_id: enrich_postgis
  sql: >
    SELECT src_row, pole, config_id, date_inventory, ST_X(g) AS x_ft, ST_Y(g) AS y_ft
    FROM (SELECT *, ST_Transform(ST_SetSRID(ST_MakePoint(lng, lat), 4326), 2230) AS g FROM dags_test_meters_src) s
id: src_row
coordinates: {lon: x_ft, lat: y_ft, crs: EPSG:2230}
as_of_column: date_inventory
layers: {council_district: council_district}
quality: {layer: council_district, within: city_limits, max_unmatched_share: 0.001,
          plausible_area: [-180, -90, 180, 90]}   # every point is tagged, the 32.0,-117.0 placeholders too
batch_rows: 6000
outputs:
  postgis: {table: public.meters_sql_2230}
"""


# ---- the Airflow session ---------------------------------------------------------------------------------------

def _conn_uri(url: str, key: str = ADMIN_KEY) -> str:
    return url.replace("http://", f"http://:{key}@")


@pytest.fixture(scope="module")
def airflow(tmp_path_factory, live_service, pg_dsn):
    """A throwaway Airflow (SQLite, temp AIRFLOW_HOME) whose connections point at the live service and PostGIS.
    Returns a namespace with the DAG modules and the folders. Module-scoped: the environment it sets (AIRFLOW_*,
    ENRICH_BOUNDARY_DIR...) is restored before the other test files run."""
    if "airflow" in sys.modules and not os.environ.get("AIRFLOW_HOME", "").startswith(str(tmp_path_factory.getbasetemp())):
        pytest.fail("airflow was imported before this session's AIRFLOW_HOME was set: run tests/test_dags.py in its own process")
    root = tmp_path_factory.mktemp("airflow")
    specs = root / "specs"
    specs.mkdir()
    (specs / "transit_stops_unfiltered.yaml").write_text(UNFILTERED_SPEC)
    (specs / "meters_sql_2230.yaml").write_text(SQL_SPEC)
    env = {
        "AIRFLOW_HOME": str(root / "home"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING",
        "AIRFLOW_CONN_ENRICH_SERVICE": _conn_uri(live_service),
        "AIRFLOW_CONN_ENRICH_POSTGIS": pg_dsn,
        "ENRICH_DATA_DIR": str(DATA),
        "ENRICH_BOUNDARY_DIR": str(DATA / "boundaries"),  # the boundary refresh reads the files the service reads
        "ENRICH_PUBLISH_DIR": str(root / "publish"),
        "ENRICH_WORK_DIR": str(root / "work"),
        "ENRICH_SPECS_DIRS": str(specs),
        "ENRICH_RETRY_DELAY_SECONDS": "1",  # short retries: the outage test waits for them
        "ENRICH_TASK_RETRIES": "6",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    Path(env["AIRFLOW_HOME"]).mkdir()
    subprocess.run([str(REPO / ".venv" / "bin" / "airflow"), "db", "migrate"], check=True, env=os.environ.copy(),
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    import enrich_boundary_refresh  # noqa: E402  (after the environment: Airflow reads it on import)
    import enrich_datasets  # noqa: E402

    class NS:
        datasets = enrich_datasets
        boundaries = enrich_boundary_refresh
        publish = Path(env["ENRICH_PUBLISH_DIR"])
        work = Path(env["ENRICH_WORK_DIR"])
        service = live_service

    yield NS
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def run_dag(dag, when: datetime | None = None):
    """dag.test() for one run; the same `when` gives the same run id (a re-run of that run)."""
    when = when or datetime.now(UTC)
    return dag.test(logical_date=when, run_after=when)


def task_states(dr) -> dict[str, list[tuple[str, int]]]:
    """task_id -> [(state, try_number)] per map index."""
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        tis = session.scalars(select(TaskInstance).where(TaskInstance.dag_id == dr.dag_id,
                                                         TaskInstance.run_id == dr.run_id)).all()
        out: dict[str, list] = {}
        for ti in sorted(tis, key=lambda t: (t.task_id, t.map_index)):
            out.setdefault(ti.task_id, []).append((str(ti.state), ti.try_number))
    return out


@pytest.fixture(scope="session")
def boundary_tables(store, pg_dsn):
    """The layers in PostGIS (boundary_council_district_2021, ...), for checking the DAGs' answers with ST_Covers."""
    from enrich_service.postgis import load_layers

    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        load_layers(conn, store)
    return pg_dsn


def pg(sql: str, *args):
    with psycopg.connect(PG_DSN, autocommit=True) as conn:
        cur = conn.execute(sql, args)
        return cur.fetchall() if cur.description else []


def table_exists(name: str) -> bool:
    return pg("SELECT to_regclass(%s) IS NOT NULL", name)[0][0]


# ---- parse time -----------------------------------------------------------------------------------------------

def test_dag_files_parse_without_heavy_imports_or_touching_data(tmp_path):
    """Importing the DAG files imports no heavy library, reads no data file and needs no network or connection:
    the data folder does not even exist here. (How long parsing takes is a benchmark's business: a wall-clock
    bound here failed on a busy machine without anything being wrong.)"""
    code = f"""
import sys, json
sys.path.insert(0, {str(DAGS)!r})
import airflow.sdk  # the DAG processor has it loaded already
import enrich_datasets, enrich_boundary_refresh
dags = sorted(k for k, v in {{**vars(enrich_datasets), **vars(enrich_boundary_refresh)}}.items()
              if type(v).__name__ == "DAG")
print(json.dumps({{"dags": dags, "heavy": [m for m in ("pandas", "pyarrow", "matplotlib", "shapely")
                                                            if m in sys.modules]}}))
"""
    env = {**os.environ, "ENRICH_DATA_DIR": str(tmp_path / "missing"), "AIRFLOW_HOME": str(tmp_path)}
    env.pop("ENRICH_SPECS_DIRS", None)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    doc = json.loads(out.stdout.strip().splitlines()[-1])
    assert doc["heavy"] == [], f"parse-time imports of {doc['heavy']}"
    assert doc["dags"] == ["boundary_refresh", "enrich_parking_meters", "enrich_pd_collisions_2017",
                           "enrich_transit_stops", "report_parking_meters", "report_pd_collisions_2017",
                           "report_transit_stops"]



def test_timestamps_are_written_as_iso_text_in_the_portal_files():
    """The CSV and COPY text of a timestamp column is ISO 8601 at the column's precision (it read
    '2017-01-02T03:04:05.123.%f')."""
    import datetime as dt

    import pyarrow as pa

    from enrich_pipeline.publish import _csv_ready

    when = dt.datetime(2017, 1, 2, 3, 4, 5, 123000)
    table = pa.table({"at": pa.array([when, None], pa.timestamp("ms")),
                      "at_utc": pa.array([when.replace(tzinfo=dt.UTC), None], pa.timestamp("us", tz="UTC"))})
    out = _csv_ready(table)
    assert out.column("at").to_pylist() == ["2017-01-02T03:04:05.123", None]
    assert out.column("at_utc").to_pylist() == ["2017-01-02T03:04:05.123000+0000", None]

def test_dag_bag_has_no_import_errors(airflow):
    from airflow.dag_processing.dagbag import BundleDagBag

    bag = BundleDagBag(dag_folder=str(DAGS), bundle_path=DAGS, bundle_name="dags-folder")
    assert bag.import_errors == {}
    assert {"enrich_parking_meters", "enrich_transit_stops", "enrich_transit_stops_unfiltered",
            "report_parking_meters", "enrich_boundary_refresh"} <= set(bag.dag_ids)
    meters = bag.dags["enrich_parking_meters"]
    assert [t.task_id for t in meters.topological_sort()][:3] == ["extract", "plan_batches", "enrich_batch"]


# ---- the dataset DAGs ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def meters_run(airflow, boundary_tables):
    when = datetime(2026, 1, 5, 5, 0, tzinfo=UTC)
    t0 = time.perf_counter()
    dr = run_dag(airflow.datasets.enrich_parking_meters, when)
    return dr, when, time.perf_counter() - t0


@pytest.fixture(scope="module")
def stops_run(airflow, boundary_tables):
    return run_dag(airflow.datasets.enrich_transit_stops)


def check_against_postgis(table: str, district_col: str = "council_district") -> None:
    """Every published row's district is the 2021 district whose polygon covers its point (PostGIS ST_Covers), and
    a row is left without one only when no district covers it (or it has no point)."""
    wrong = pg(f"""SELECT source_row, {district_col} FROM {table} t WHERE {district_col} IS NOT NULL AND NOT EXISTS
                   (SELECT 1 FROM boundary_council_district_2021 b WHERE b.key = t.{district_col}
                    AND ST_Covers(b.geom, t.geom)) LIMIT 10""")
    assert wrong == []
    missed = pg(f"""SELECT source_row FROM {table} t WHERE {district_col} IS NULL AND geom IS NOT NULL AND EXISTS
                    (SELECT 1 FROM boundary_council_district_2021 b WHERE ST_Covers(b.geom, t.geom)) LIMIT 10""")
    assert missed == []
    assert pg(f"SELECT count(*) FROM {table} WHERE geom IS NULL AND {district_col} IS NOT NULL")[0][0] == 0


def test_parking_meters_publishes_every_row_with_the_right_district(airflow, meters_run):
    dr, _, _ = meters_run
    assert str(dr.state) == "success", task_states(dr)
    source = pd.read_csv(METERS_CSV, dtype=str, keep_default_na=False)
    n = len(source)
    assert task_states(dr)["enrich_batch"] == [("success", 1)] * 3  # 10,861 rows in batches of 4,000

    # PostGIS: every row once, a point for every located row, districts as ST_Covers says.
    assert pg("SELECT count(*), count(DISTINCT source_row), count(geom) FROM public.parking_meters_enriched")[0] == \
        (n, n, n - 23)  # 13 meters carry the placeholder 32.0,-117.0; 10 lie far outside the city (180/90...)
    check_against_postgis("public.parking_meters_enriched")
    placeholders = pg("SELECT count(*) FROM public.parking_meters_enriched WHERE lat = 32 AND lng = -117 "
                      "AND geom IS NULL AND council_district IS NULL AND enrich_error LIKE '%%missing%%'")
    assert placeholders[0][0] == 13
    implausible = pg("SELECT count(*) FROM public.parking_meters_enriched WHERE geom IS NULL AND council_district IS "
                     "NULL AND enrich_error LIKE '%%outside the plausible area%%' AND (lng > 0 OR lat < 32.2)")
    assert implausible[0][0] == 10  # (180, 90) twice, 117.926 east three times, 32.1 north five times
    by_district = dict(pg("SELECT council_district, count(*) FROM public.parking_meters_enriched GROUP BY 1"))
    assert by_district["3"] > 10_000  # downtown

    # The portal CSV: the source's columns as they were, then the new ones, in source order.
    folder = airflow.publish / "parking_meters"
    csv = pd.read_csv(folder / "parking_meters_enriched.csv", dtype=str, keep_default_na=False)
    assert len(csv) == n
    assert list(csv.columns[: len(source.columns)]) == list(source.columns)
    for col in source.columns:
        if col in ("lat", "lng"):
            np.testing.assert_allclose(csv[col].astype(float), source[col].astype(float))
        else:
            assert (csv[col] == source[col]).all(), col
    assert {"council_district", "community_plan_area", "zip_code", "enrich_flags", "enrich_error"} <= set(csv.columns)
    db = dict(pg("SELECT source_row, coalesce(council_district, '') FROM public.parking_meters_enriched"))
    assert [db[int(r)] for r in csv.source_row] == csv.council_district.tolist()
    assert (csv.zip_code[csv.council_district == "3"] != "").all()

    # GeoJSON: one feature per row, the point where the CSV says.
    gj = json.loads((folder / "parking_meters_enriched.geojson").read_text())
    assert len(gj["features"]) == n
    located = [f for f in gj["features"] if f["geometry"]]
    assert len(located) == n - 23
    f = located[0]
    assert f["geometry"]["coordinates"] == pytest.approx([f["properties"]["lng"], f["properties"]["lat"]])
    assert [x["properties"]["council_district"] or "" for x in gj["features"]] == csv.council_district.tolist()

    # Metadata: counts, unmatched shares, the layers (as the service reports them) and the run.
    meta = json.loads((folder / "parking_meters_enriched.metadata.json").read_text())
    served = httpx.get(f"{airflow.service}/v1/layers").json()["layers"]
    current = {name: info["versions"][-1]["sha256"] for name, info in served.items()}
    assert meta["rows"] == n and meta["run_id"] == dr.run_id
    for layer in ("council_district", "neighborhood", "zip", "city_limits"):
        assert meta["layers"][layer]["sha256"] == current[layer]
    assert meta["unmatched"]["council_district"]["unmatched"] == n - sum(v for k, v in by_district.items() if k)
    assert meta["quality"]["unlocated"] == 23 and meta["quality"]["unmatched"] == 0
    assert set(meta["files"]) == {"parking_meters_enriched.csv", "parking_meters_enriched.geojson"}
    assert not [p for p in folder.iterdir() if p.name.startswith(".")], "temporary files left behind"


def test_rerunning_the_same_run_changes_nothing(airflow, meters_run):
    dr, when, _ = meters_run
    folder = airflow.publish / "parking_meters"
    files = {p.name: p.read_bytes() for p in folder.iterdir()}
    rows = pg("SELECT md5(string_agg(t::text, '|' ORDER BY source_row)), count(*) FROM public.parking_meters_enriched t")
    again = run_dag(airflow.datasets.enrich_parking_meters, when)
    assert again.run_id == dr.run_id and str(again.state) == "success"
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == files
    assert pg("SELECT md5(string_agg(t::text, '|' ORDER BY source_row)), count(*) "
              "FROM public.parking_meters_enriched t") == rows
    # One table, no leftovers of the swap.
    assert not table_exists("public.parking_meters_enriched__staging")


def test_readers_see_the_whole_old_table_or_the_whole_new_one_while_publishing(airflow, meters_run):
    """Readers polling the published table while it is re-published (COPY into staging, swap) always count every
    row: never an empty, partial or missing table."""
    from enrich_pipeline.publish import publish_postgis
    from enrich_pipeline.workdir import safe_name

    dr, _, _ = meters_run
    enriched = airflow.work / dr.dag_id / safe_name(dr.run_id) / "enriched.parquet"
    n = pg("SELECT count(*) FROM public.parking_meters_enriched")[0][0]
    seen: list = []
    done = threading.Event()

    def read():
        with psycopg.connect(PG_DSN, autocommit=True) as conn:
            while not done.is_set():
                try:
                    seen.append(conn.execute("SELECT count(*) FROM public.parking_meters_enriched").fetchone()[0])
                except psycopg.Error as exc:
                    seen.append(repr(exc))

    readers = [threading.Thread(target=read) for _ in range(2)]
    for r in readers:
        r.start()
    try:
        with psycopg.connect(PG_DSN, autocommit=True) as conn:
            for _ in range(3):
                publish_postgis(conn, "public.parking_meters_enriched", enriched, comment="swap under readers")
    finally:
        done.set()
        for r in readers:
            r.join(timeout=30)
    assert len(seen) > 10 and set(seen) == {n}, {v for v in seen if v != n}


def test_transit_stops_outside_the_city_are_not_failures(airflow, stops_run):
    dr = stops_run
    assert str(dr.state) == "success", task_states(dr)
    n = len(json.loads(STOPS_GEOJSON.read_text())["features"])
    assert pg("SELECT count(*), count(DISTINCT objectid), count(geom) FROM public.transit_stops_enriched")[0] == \
        (n, n, n)
    check_against_postgis("public.transit_stops_enriched")
    inside, outside, inside_without = pg("""SELECT count(*) FILTER (WHERE in_city_limits IS NOT NULL),
        count(*) FILTER (WHERE in_city_limits IS NULL),
        count(*) FILTER (WHERE in_city_limits IS NOT NULL AND council_district IS NULL)
        FROM public.transit_stops_enriched""")[0]
    assert outside > 0.4 * n and inside > 0.4 * n and inside_without == 0
    meta = json.loads((airflow.publish / "transit_stops" / "transit_stops_enriched.metadata.json").read_text())
    assert meta["quality"]["should_match"] == inside and meta["quality"]["unmatched"] == 0
    assert meta["unmatched"]["council_district"]["unmatched_share"] > 0.4


def test_a_sql_source_in_state_plane_feet_is_tagged_with_the_lines_in_force_on_each_rows_date(airflow, boundary_tables):
    source = pd.read_csv(METERS_CSV, usecols=["pole", "config_id", "date_inventory", "lat", "lng"], dtype={"pole": str})
    source.insert(0, "src_row", range(len(source)))
    with psycopg.connect(PG_DSN, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS dags_test_meters_src")
        conn.execute("CREATE TABLE dags_test_meters_src (src_row int, pole text, config_id bigint, "
                     "date_inventory date, lat double precision, lng double precision)")
        with conn.cursor().copy("COPY dags_test_meters_src FROM STDIN") as copy:
            for row in source.itertuples(index=False):
                copy.write_row(row)
    try:
        dr = run_dag(airflow.datasets.enrich_meters_sql_2230)
    finally:
        pg("DROP TABLE dags_test_meters_src")
    assert str(dr.state) == "success", task_states(dr)
    t = "public.meters_sql_2230"
    assert pg(f"SELECT count(*), count(DISTINCT src_row) FROM {t}")[0] == (len(source), len(source))
    versions = dict(pg(f"SELECT council_district_version, count(*) FROM {t} GROUP BY 1"))
    assert versions == {"2011": int((source.date_inventory < "2022-12-10").sum()),
                        "2021": int((source.date_inventory >= "2022-12-10").sum())}
    # The geometry is back in EPSG:4326 where the meter is, and each row's district is the one of its version
    # covering it (PostGIS ST_Covers), never a district where a covering one exists.
    points = ",".join(f"({r.src_row}, {r.lng}, {r.lat})" for r in source.itertuples())
    far = pg(f"""SELECT count(*), count(m.geom) FROM {t} m JOIN (VALUES {points}) s(src_row, lng, lat) USING (src_row)
                 WHERE m.geom IS NULL OR ST_Distance(m.geom::geography,
                 ST_SetSRID(ST_MakePoint(s.lng, s.lat), 4326)::geography) > 0.01""")
    assert far[0] == (0, 0)  # every point (the 32.0,-117.0 placeholders too: no placeholders in this spec)
    for version in ("2011", "2021"):
        wrong = pg(f"""SELECT pole FROM {t} m WHERE council_district_version = %s AND (
            (council_district IS NOT NULL AND NOT EXISTS (SELECT 1 FROM boundary_council_district_{version} b
                WHERE b.key = m.council_district AND ST_Covers(b.geom, m.geom)))
            OR (council_district IS NULL AND EXISTS (SELECT 1 FROM boundary_council_district_{version} b
                WHERE ST_Covers(b.geom, m.geom))))""", version)
        assert wrong == [], version


def test_a_quality_failure_publishes_nothing_and_names_the_rows(airflow, boundary_tables):
    from enrich_pipeline.quality import QualityGateFailed, check, measure
    from enrich_pipeline.spec import find_spec

    pg("DROP TABLE IF EXISTS public.transit_stops_unfiltered")
    dr = run_dag(airflow.datasets.enrich_transit_stops_unfiltered)
    states = task_states(dr)
    assert str(dr.state) == "failed"
    assert states["quality_gate"] == [("failed", 1)]  # no retries for a quality failure
    for t in ("publish_postgis", "publish_files", "record_publication"):
        assert states[t][0][0] == "upstream_failed", states
    assert not table_exists("public.transit_stops_unfiltered")
    assert not (airflow.publish / "transit_stops_unfiltered").exists()
    # What the failed task said: the share and the first ids.
    spec = find_spec("transit_stops_unfiltered")
    from enrich_pipeline.workdir import safe_name

    enriched = airflow.work / spec.dag_id / safe_name(dr.run_id) / "enriched.parquet"
    with pytest.raises(QualityGateFailed, match=r"rows in the dataset have no council_district .* first ids: \[\d+"):
        check(spec, measure(spec, enriched))


def _report_run(airflow, when):
    """One run of report_parking_meters against a real local SMTP server; returns (dag run, messages)."""
    from aiosmtpd.controller import Controller

    received = []

    class Handler:
        async def handle_DATA(self, server, session, envelope):
            received.append(envelope)
            return "250 OK"

    port = _free_port()
    smtp = Controller(Handler(), hostname="127.0.0.1", port=port)
    smtp.start()
    os.environ["AIRFLOW_CONN_SMTP_DEFAULT"] = (f"smtp://127.0.0.1:{port}?disable_tls=true&disable_ssl=true"
                                               f"&from_email=enrich%40sandiego.gov&timeout=10")
    try:
        dr = run_dag(airflow.datasets.report_parking_meters, when)
    finally:
        smtp.stop()
        os.environ.pop("AIRFLOW_CONN_SMTP_DEFAULT")
    return dr, received


def test_report_a_department_head_reads(airflow, meters_run, tmp_path):
    """The report on the published parking meters: the chart shown in the message (not attached), every council
    district (zeros too), meters counted once per pole (a pole has a row per rate configuration), the rows without
    a district explained, the period, no internal run id; a second report shows the change since the first.
    The published table is only read (never altered here)."""
    import re

    dr, received = _report_run(airflow, datetime(2026, 1, 6, 5, 0, tzinfo=UTC))
    assert str(dr.state) == "success", task_states(dr)
    assert len(received) == 1
    envelope = received[0]
    assert envelope.rcpt_tos == ["open-data@sandiego.gov"]
    msg = email.message_from_bytes(envelope.content)
    assert msg["Subject"] == "Parking meters per council district"
    assert msg.get_content_type() == "multipart/related"
    image = next(p for p in msg.walk() if p.get_content_type() == "image/png")
    assert image.get("Content-Disposition", "").startswith("inline")
    png = image.get_payload(decode=True)
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 5_000
    html = next(p for p in msg.walk() if p.get_content_type() == "text/html").get_payload(decode=True).decode()
    assert f"src='cid:{image['Content-ID'].strip('<>')}'" in html
    assert dr.run_id not in html and "run_id" not in html and "manual__" not in html

    poles = dict(pg("SELECT coalesce(council_district, ''), count(DISTINCT pole) FROM public.parking_meters_enriched "
                    "GROUP BY 1"))
    rows = dict(re.findall(r"<tr><td>(District \d|No district)</td><td align='right'>([\d,]+)</td>", html))
    assert set(rows) == {f"District {d}" for d in range(1, 10)} | {"No district"}, rows  # every district
    for d in range(1, 10):
        assert int(rows[f"District {d}"].replace(",", "")) == poles.get(str(d), 0), d
    assert 0 in [poles.get(str(d), 0) for d in range(1, 10)], "the meters leave some district at zero"
    total_poles = pg("SELECT count(DISTINCT pole) FROM public.parking_meters_enriched")[0][0]
    assert f"<b>{total_poles:,} parking meters</b>" in html
    assert total_poles < pg("SELECT count(*) FROM public.parking_meters_enriched")[0][0]  # rows are not meters
    unlocated = pg("SELECT count(DISTINCT pole) FROM public.parking_meters_enriched WHERE council_district IS NULL "
                   "AND enrich_error IS NOT NULL")[0][0]
    assert f"{unlocated:,} have no usable location" in html and "(none)" not in html
    assert "the first report" in html and "January 6, 2026" in html
    assert "Dates in the data (date inventory): " in html
    assert "Parking meters per neighborhood" in html and "Downtown" in html
    # Published as files only (no PostGIS), the portal CSV gives the same counts.
    from enrich_pipeline.report import counts_from_csv, counts_from_postgis
    from enrich_pipeline.spec import find_spec

    spec = find_spec("parking_meters")
    with psycopg.connect(PG_DSN, autocommit=True) as conn:
        from_db = counts_from_postgis(conn, spec)
    from_csv = counts_from_csv(airflow.publish / "parking_meters" / "parking_meters_enriched.csv", spec)
    assert {k: sorted(map(tuple, v), key=str) for k, v in from_csv["by"].items()} == \
        {k: sorted(map(tuple, v), key=str) for k, v in from_db["by"].items()}
    assert (from_csv["total"], from_csv["unlocated"], from_csv["dates"]) == \
        (from_db["total"], from_db["unlocated"], from_db["dates"])

    # A week later the same data: the change since the last report. That report is made to have counted 40 more
    # meters in district 3 (as if 40 were removed since), by editing what it remembered.
    from enrich_pipeline.report import history_path

    path = history_path(spec)
    history = json.loads(path.read_text())
    assert [e["run_id"] for e in history] == [dr.run_id] and history[0]["by"]["council_district"]["3"] > 40
    history[0]["by"]["council_district"]["3"] += 40
    history[0]["total"] += 40
    path.write_text(json.dumps(history))
    dr2, received = _report_run(airflow, datetime(2026, 1, 13, 5, 0, tzinfo=UTC))
    assert str(dr2.state) == "success", task_states(dr2)
    html2 = next(p for p in email.message_from_bytes(received[0].content).walk()
                 if p.get_content_type() == "text/html").get_payload(decode=True).decode()
    assert "compared with the previous report of January 6, 2026" in html2
    assert re.search(r"<td>District 3</td><td align='right'>[\d,]+</td><td align='right'>[\d.]+%</td>"
                     r"<td align='right'>-40</td>", html2), html2
    assert "<td>District 1</td>" in html2 and "no change" in html2
    assert f"40 fewer than then ({total_poles + 40:,})" in html2


def test_enrich_tasks_retry_through_a_service_outage(airflow, monkeypatch):
    """The service is down when the run starts and comes up a few seconds later: the enrich batches fail, retry
    with backoff, and the run succeeds."""
    port = _free_port()
    monkeypatch.setenv("AIRFLOW_CONN_ENRICH_SERVICE", _conn_uri(f"http://127.0.0.1:{port}"))
    started: list = []

    def start_later():
        time.sleep(3)
        started.append(start_service(port=port)[0])

    starter = threading.Thread(target=start_later, daemon=True)
    starter.start()
    try:
        dr = run_dag(airflow.datasets.enrich_transit_stops)
    finally:
        starter.join(timeout=90)
        for proc in started:
            proc.terminate()
            proc.wait(timeout=30)
    states = task_states(dr)
    assert str(dr.state) == "success", states
    tries = [t for _, t in states["enrich_batch"]]
    assert all(s == "success" for s, _ in states["enrich_batch"]) and max(tries) > 1, states["enrich_batch"]
    assert states["extract"] == [("success", 1)]
    check_against_postgis("public.transit_stops_enriched")


def test_without_a_postgis_connection_a_geopackage_holds_the_rows_or_the_run_says_what_is_missing(airflow, monkeypatch):
    import pyogrio

    monkeypatch.delenv("AIRFLOW_CONN_ENRICH_POSTGIS")
    dr = run_dag(airflow.datasets.enrich_transit_stops)
    states = task_states(dr)
    assert str(dr.state) == "failed" and states["publish_postgis"] == [("failed", 1)], states  # no retries

    monkeypatch.setenv("ENRICH_POSTGIS_FALLBACK", "geopackage")
    dr = run_dag(airflow.datasets.enrich_transit_stops)
    assert str(dr.state) == "success", task_states(dr)
    folder = airflow.publish / "transit_stops"
    gpkg = pyogrio.read_dataframe(folder / "transit_stops_enriched.gpkg", layer="transit_stops_enriched")
    csv = pd.read_csv(folder / "transit_stops_enriched.csv", dtype=str, keep_default_na=False)
    assert len(gpkg) == len(csv) == len(json.loads(STOPS_GEOJSON.read_text())["features"])
    assert gpkg.crs.to_epsg() == 4326
    assert gpkg.council_district.fillna("").tolist() == csv.council_district.tolist()
    np.testing.assert_allclose(gpkg.geometry.x, csv.geometry_lon.astype(float))
    meta = json.loads((folder / "transit_stops_enriched.metadata.json").read_text())
    assert meta["run_id"] == dr.run_id and meta["postgis"]["geopackage"].endswith("transit_stops_enriched.gpkg")


def test_boundary_refresh_loads_postgis_reloads_the_service_and_announces_the_asset(airflow):
    before = httpx.get(f"{airflow.service}/v1/layers").json()["generation"]
    started = pg("SELECT now()")[0][0]
    dr = airflow.boundaries.boundary_refresh.test()
    assert str(dr.state) == "success", task_states(dr)
    assert httpx.get(f"{airflow.service}/v1/layers").json()["generation"] > before
    catalog = {t: (sha, loaded) for t, sha, loaded in pg("SELECT table_name, sha256, loaded_at FROM boundary_layers")}
    assert catalog["boundary_council_district_2021"][0] == \
        "5ab5537e93463677ee685f25d7fec664f0d1b5e4ded7cede6d6444a8c769fcf6"
    served = httpx.get(f"{airflow.service}/v1/layers").json()["layers"]
    for name, info in served.items():  # every served version was (re)loaded into PostGIS by this run
        for v in info["versions"]:
            sha, loaded = catalog[f"boundary_{name}_{v['version']}".lower()]
            assert sha == v["sha256"] and loaded >= started, (name, v["version"])
    assert len(boundary_events(dr.run_id)) == 1
    # The dataset DAGs are scheduled on that asset (as well as on their cron): a refresh re-enriches them.
    for dag_id in ("enrich_parking_meters", "enrich_transit_stops"):
        assert getattr(airflow.datasets, dag_id).timetable.asset_condition.name == "enrich://boundaries"


def test_boundary_refresh_with_a_wrong_key_fails_at_once_and_announces_nothing(airflow, monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_ENRICH_SERVICE", _conn_uri(airflow.service, key="not-the-key"))
    dr = airflow.boundaries.boundary_refresh.test()
    states = task_states(dr)
    assert str(dr.state) == "failed"
    assert states["reload_service"] == [("failed", 1)], states  # a 401 is not retried
    assert boundary_events(dr.run_id) == []



def test_a_file_the_service_refuses_reaches_neither_the_service_nor_postgis(airflow, monkeypatch, tmp_path):
    """The service validates before PostGIS loads: a districts file where every feature says "3" is refused (409
    naming the check), the run fails at reload_service without retries, PostGIS keeps its boundary tables as they
    were, and nothing is announced."""
    import shutil

    from .conftest import BOUNDARIES, start_service

    folder = tmp_path / "boundaries"
    shutil.copytree(BOUNDARIES, folder)
    proc, url = start_service({"ENRICH_BOUNDARY_DIR": str(folder), "ENRICH_ACCEPTED_DIR": str(tmp_path / "accepted")})
    try:
        districts = folder / "council_districts_2021_datasd.geojson"
        doc = json.loads(districts.read_text())
        for feature in doc["features"]:
            feature["properties"]["district"] = 3
        districts.write_text(json.dumps(doc))
        monkeypatch.setenv("AIRFLOW_CONN_ENRICH_SERVICE", _conn_uri(url))
        monkeypatch.setenv("ENRICH_BOUNDARY_DIR", str(folder))
        before = sorted(pg("SELECT table_name, sha256, loaded_at FROM boundary_layers"))
        dr = airflow.boundaries.boundary_refresh.test()
        states = task_states(dr)
        assert str(dr.state) == "failed" and states["reload_service"] == [("failed", 1)], states
        assert "load_postgis" not in states or all(s != "success" for s, _ in states["load_postgis"]), states
        assert sorted(pg("SELECT table_name, sha256, loaded_at FROM boundary_layers")) == before
        assert boundary_events(dr.run_id) == []
        assert httpx.get(f"{url}/v1/pip", params={"lon": -117.25, "lat": 32.85, "layers": "council_district"}
                         ).json()["council_district"] == "1"  # La Jolla: still the accepted lines
    finally:
        proc.terminate()
        proc.wait(timeout=30)

def boundary_events(run_id: str) -> list:
    """The enrich://boundaries asset events the run `run_id` emitted."""
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        return session.scalars(select(AssetEvent.id).join(AssetModel, AssetEvent.asset_id == AssetModel.id)
                               .where(AssetModel.name == "enrich://boundaries",
                                      AssetEvent.source_run_id == run_id)).all()


# ---- the client --------------------------------------------------------------------------------------------------

def test_the_service_hook_makes_the_client_from_the_connection(airflow, monkeypatch):
    """EnrichServiceHook: the URL, API key, timeout and replicas come from the Airflow connection; the UI's test
    asks the service whether it is ready."""
    from enrich_pipeline.hooks import EnrichServiceHook

    monkeypatch.setenv("AIRFLOW_CONN_SVC_HOOK_TEST", "http://:k3y@svc.invalid:8081?timeout=7&replicas=127.0.0.1%3A9001")
    hook = EnrichServiceHook("svc_hook_test")
    with hook.get_conn() as client:
        assert client.base_url == "http://svc.invalid:8081"
        assert client._http.headers["X-API-Key"] == "k3y" and client._http.timeout.read == 7
    assert hook.replica_urls() == ["http://127.0.0.1:9001"]
    assert EnrichServiceHook().test_connection() == (True, "ready")  # AIRFLOW_CONN_ENRICH_SERVICE: the live service
    monkeypatch.setenv("AIRFLOW_CONN_SVC_DOWN", f"http://127.0.0.1:{_free_port()}")
    assert EnrichServiceHook("svc_down").test_connection()[0] is False


def test_client_arrow_and_json_agree_and_errors_are_typed(live_service):
    from enrich_service.client import EnrichClient, RequestRejected, ServiceUnavailable

    df = pd.read_csv(METERS_CSV).iloc[::50].reset_index(drop=True)
    df.index = df.index + 1000  # the answer keeps the caller's index
    with EnrichClient(live_service) as client:
        a = client.tag(df, lon="lng", lat="lat", layers=["council_district", "zip"])
        j = client.tag(df, lon="lng", lat="lat", layers=["council_district", "zip"], transport="json")
        assert list(a.index) == list(df.index)
        assert a["council_district"].fillna("").tolist() == j["council_district"].fillna("").tolist()
        assert a["zip"].fillna("").tolist() == j["zip"].fillna("").tolist()
        assert a.attrs["enrich_layers"]["council_district"]["version"] == "2021"
        assert (a.loc[a.lat == 32.0, "council_district"].isna()).all()
        with pytest.raises(RequestRejected, match="layer"):
            client.tag(df, lon="lng", lat="lat", layers=["wards"])
        assert client.layers()["layers"]["council_district"]["key"] == "district"
    with pytest.raises(ServiceUnavailable, match="cannot reach"):
        EnrichClient(f"http://127.0.0.1:{_free_port()}", timeout=2).layers()


def test_client_sends_a_table_over_the_services_batch_limit_in_parts():
    import pyarrow as pa

    from enrich_service.client import EnrichClient

    df = pd.read_csv(METERS_CSV).iloc[:2500]
    table = pa.table({"id": pa.array(range(len(df))), "lon": df.lng.to_numpy(), "lat": df.lat.to_numpy(),
                      "date": df.date_inventory.to_numpy()})
    proc, url = start_service({"ENRICH_MAX_BATCH": "1000"})
    try:
        with EnrichClient(url) as client:
            answer, used = client.tag_table(table, layers=["council_district"], date_col="date")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert answer.column("id").to_pylist() == list(range(len(df)))  # 4 parts (625 rows), in order
    districts = np.array(answer.column("council_district").cast(pa.string()).to_pylist(), dtype=object)
    placeholder = ((df.lat == 32.0) & (df.lng == -117.0)).to_numpy()  # 32.0,-117.0: south of the border, in no layer
    assert placeholder.sum() == 5 and (districts[placeholder] == None).all()  # noqa: E711
    assert set(districts[~placeholder]) == {"3"}  # the first 2,500 meters are all downtown
    # Points per version add up over the parts.
    assert sum(v["points"] for v in used["council_district"]["versions_used"]) == len(df)


def test_spec_errors_name_the_file_and_the_field(tmp_path):
    from enrich_pipeline.spec import SpecError, load_spec, resolve

    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nsource: {path: a.csv}\ncoordinates: {lon: x, lat: y}\nlayers: [wards]\n"
                   "outputs: {portal: {folder: /tmp}}\n")
    with pytest.raises(SpecError, match="bad.yaml: layers: unknown layer 'wards'"):
        load_spec(bad)
    bad.write_text("name: x\nsource: {path: a.csv}\nlayers: [zip]\noutputs: {portal: {folder: /tmp}}\n")
    with pytest.raises(SpecError, match="coordinates"):
        load_spec(bad)
    assert resolve("${NOT_SET_ANYWHERE_123:-/data}/a.csv", lookup=lambda name: None) == "/data/a.csv"
    with pytest.raises(SpecError, match="NOT_SET_ANYWHERE_123"):
        resolve("${NOT_SET_ANYWHERE_123}/a.csv", lookup=lambda name: None)


def test_address_only_collisions_are_geocoded_tagged_by_what_the_match_supports_and_published(airflow,
                                                                                             boundary_tables):
    """dags/datasets/pd_collisions_2017.yaml: police split address fields through POST /v1/geocode-join."""
    dr = run_dag(airflow.datasets.enrich_pd_collisions_2017)
    assert str(dr.state) == "success", task_states(dr)
    t = "public.pd_collisions_2017_enriched"
    levels = dict(pg(f"SELECT geocode_match, count(*) FROM {t} GROUP BY 1"))
    assert sum(levels.values()) == 10183 and levels["hundred_block"] > 2500 and levels["intersection"] > 200
    # Every published district is the one covering the geocoded point (extents add: never a different one), and a
    # null says why.
    wrong = pg(f"""SELECT count(*) FROM {t} m WHERE m.council_district IS NOT NULL AND NOT EXISTS (
        SELECT 1 FROM boundary_council_district_2011 b WHERE b.key = m.council_district AND
        ST_DWithin(b.geom::geography, m.geom::geography, 30))""")[0][0]
    assert wrong == 0
    assert pg(f"SELECT count(*) FROM {t} WHERE council_district IS NULL AND council_district_rule IS NULL")[0][0] == 0
    assert pg(f"SELECT count(*) FROM {t} WHERE geocode_match = 'street' AND council_district IS NOT NULL")[0][0] \
        < 0.01 * levels["street"]
    meta = json.loads((airflow.publish / "pd_collisions_2017" /
                       "pd_collisions_2017_enriched.metadata.json").read_text())
    tagged = {r["level"]: r["tagged_share"] for r in meta["quality"]["match_levels"]}
    assert tagged["hundred_block"] > 0.9 and tagged["intersection"] > 0.9
