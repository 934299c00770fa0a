"""Publishing never loses or corrupts the published data: faults injected into real DAG runs (dag.test()), the
real service and the real PostGIS.

One dataset, `meters_faults` (the real parking meters, its source file swapped per test through ${FAULT_SOURCE}),
is published once in full; then each fault is injected into a new run: a truncated source, a column of the wrong
type, PostGIS going away mid-COPY, a half-open connection (a TCP proxy in this file that stops forwarding), a
reader's view and grant, a long reader transaction, a stale rerun. After each, the previous publication is intact
in PostGIS, in the files and in metadata.json, the run failed naming the cause, and it took no longer than its
time limits allow (the spec sets them small: lock 1 s, statement 2 s).

Runs after tests/test_dags.py in one session (it reuses that module's Airflow if it is already imported).
"""

from __future__ import annotations

import csv
import hashlib
import os
import socket
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from .conftest import DATA, PG_DSN, POINTS, REPO

DAGS = REPO / "dags"
if str(DAGS) not in sys.path:
    sys.path.append(str(DAGS))
METERS_CSV = POINTS / "treas_parking_meters_loc_datasd.csv"
TABLE = "public.meters_faults"
T0 = datetime(2026, 3, 1, 5, 0, tzinfo=UTC)
SPEC = """
name: meters_faults
description: Parking meters, for the publishing fault tests
source:
  kind: csv
  path: ${FAULT_SOURCE}
  column_types: {pole: string, sapid: string}
id: [pole, config_id]
coordinates: {lon: lng, lat: lat, placeholders: [[-117.0, 32.0]]}
layers: {council_district: council_district, neighborhood: community_plan_area, zip: zip_code}
quality: {layer: council_district, within: city_limits, max_unmatched_share: 0.001, max_unlocated_share: 0.01}
batch_rows: 20000
outputs:
  postgis: {conn_id: faults_postgis, table: public.meters_faults}
  portal: {folder: "${ENRICH_PUBLISH_DIR}/meters_faults", basename: meters_faults}
publish:
  max_row_change_share: 0.2
  lock_timeout_seconds: 1
  statement_timeout_seconds: 2
  task_timeout_minutes: 2
  run_timeout_minutes: 5
"""


# ---- a TCP proxy in front of PostGIS that misbehaves on demand ------------------------------------------------------

class Proxy:
    """Forwards 127.0.0.1:<port> to PostGIS. mode "pass"; "reset": after `after` bytes from the client on one
    connection, both sides are closed (PostGIS unreachable mid-COPY); "stall": after `after` bytes it stops
    forwarding in both directions and keeps the sockets open (a half-open connection); "reset-commit": on the
    connections whose start-up names the application `enrich-commit`, both sides are closed when the client
    sends COMMIT (PostGIS lost between the file renames and the commit)."""

    def __init__(self, upstream: tuple[str, int]):
        self.upstream = upstream
        self.mode, self.after = "pass", 0
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.sockets: list[socket.socket] = []
        self.stalled = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{PG_DSN.rsplit('/', 1)[1]}"

    def _accept(self):
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            up = socket.create_connection(self.upstream)
            self.sockets += [client, up]
            state = {"sent": 0, "mode": self.mode, "after": self.after}
            threading.Thread(target=self._pump, args=(client, up, state, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(up, client, state, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, state: dict, from_client: bool):
        while True:
            try:
                data = src.recv(65536)
            except OSError:
                return
            if not data:
                _close(dst)
                return
            if from_client:
                state["sent"] += len(data)
                if state["sent"] < 1000:  # the start-up (after libpq's SSL request)
                    state["commit_conn"] = state.get("commit_conn") or b"enrich-commit" in data
            if state["mode"] == "reset-commit":
                if from_client and state.get("commit_conn") and b"COMMIT" in data:
                    _close(src, dst)
                    return
            elif state["mode"] != "pass" and state["sent"] > state["after"]:
                if state["mode"] == "reset":
                    _close(src, dst)
                    return
                self.stalled.set()  # "stall": nothing more goes through, the sockets stay open
                while not getattr(self, "closed", False):
                    time.sleep(0.2)
                return
            try:
                dst.sendall(data)
            except OSError:
                return

    def close(self):
        self.closed = True
        _close(self.server, *self.sockets)


def _close(*socks):
    for s in socks:
        try:
            s.shutdown(socket.SHUT_RDWR)  # (close alone sends no FIN while another thread is in recv)
        except OSError:
            pass
        try:
            s.close()
        except OSError:
            pass


# ---- Airflow, the dataset and what a publication looks like ----------------------------------------------------------

@pytest.fixture(scope="module")
def faults(tmp_path_factory, live_service, pg_dsn):
    root = tmp_path_factory.mktemp("faults")
    specs = root / "specs"
    specs.mkdir()
    (specs / "meters_faults.yaml").write_text(SPEC)
    proxy = Proxy(("127.0.0.1", 5432))
    env = {
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS),  # dag.test() serializes the DAG by parsing the DAG folder
        "ENRICH_SPECS_DIRS": str(specs),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING",
        "AIRFLOW_CONN_ENRICH_SERVICE": live_service.replace("http://", "http://:test-admin-key@"),
        "AIRFLOW_CONN_FAULTS_POSTGIS": proxy.dsn(),
        "ENRICH_DATA_DIR": str(DATA),
        "ENRICH_PUBLISH_DIR": str(root / "publish"),
        "ENRICH_WORK_DIR": str(root / "work"),
        "ENRICH_RETRY_DELAY_SECONDS": "0.2",
        "ENRICH_TASK_RETRIES": "1",  # one retry: a network fault is retried once, then the run fails
        "FAULT_SOURCE": str(METERS_CSV),
    }
    if "airflow" not in sys.modules:  # this file alone: a throwaway Airflow of its own
        env["AIRFLOW_HOME"] = str(root / "home")
        Path(env["AIRFLOW_HOME"]).mkdir()
        os.environ.update(env)
        subprocess.run([str(REPO / ".venv" / "bin" / "airflow"), "db", "migrate"], check=True, env=os.environ.copy(),
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    with psycopg.connect(pg_dsn, autocommit=True) as conn:  # a clean slate (no CASCADE: nothing else uses these)
        conn.execute("DROP VIEW IF EXISTS meters_faults_d3")
        kind = conn.execute("SELECT relkind FROM pg_class WHERE oid = to_regclass('public.meters_faults')").fetchone()
        if kind:  # a view (this code) or a table (a publication by older code)
            conn.execute("DROP VIEW public.meters_faults" if kind[0] == "v" else "DROP TABLE public.meters_faults")
        for (name,) in conn.execute("SELECT relname FROM pg_class WHERE relname LIKE 'meters\\_faults\\_\\_p%%' "
                                    "AND relkind = 'r'").fetchall():
            conn.execute(f'DROP TABLE public."{name}"')
        conn.execute("DO $$ BEGIN IF to_regclass('public.enrich_publications') IS NOT NULL THEN "
                     "DELETE FROM public.enrich_publications WHERE table_name = 'public.meters_faults'; END IF; END $$")
        conn.execute("DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'faults_reader') THEN "
                     "CREATE ROLE faults_reader; END IF; END $$")
    from enrich_pipeline.factory import build_dataset_dag
    from enrich_pipeline.spec import load_spec

    class NS:
        dag = build_dataset_dag(load_spec(specs / "meters_faults.yaml"))
        folder = root / "publish" / "meters_faults"
        sources = root
        pg_proxy = proxy

    yield NS
    proxy.close()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def pg(sql: str, *args):
    with psycopg.connect(PG_DSN, autocommit=True) as conn:
        cur = conn.execute(sql, args)
        return cur.fetchall() if cur.description else []


def run(faults, when: datetime, conf: dict | None = None):
    t0 = time.monotonic()
    dr = faults.dag.test(logical_date=when, run_after=when, run_conf=conf)
    return dr, time.monotonic() - t0


def states(dr) -> dict[str, str]:
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        tis = session.scalars(select(TaskInstance).where(TaskInstance.dag_id == dr.dag_id,
                                                         TaskInstance.run_id == dr.run_id)).all()
        return {ti.task_id: str(ti.state) for ti in tis}


def snapshot(faults) -> dict:
    """The publication as readers see it: table rows (md5), the catalog entry, every published file's bytes."""
    table = pg(f"SELECT md5(string_agg(t::text, '|' ORDER BY source_row)), count(*) FROM {TABLE} t")[0]
    catalog = pg("SELECT run_id, rows, version_table FROM enrich_publications WHERE table_name = %s", TABLE)
    files = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(faults.folder.iterdir())
             if not p.name.startswith(".")}
    return {"table": table, "catalog": catalog, "files": files}


def write_source(faults, name: str, rows: list[list[str]]) -> Path:
    path = faults.sources / name
    with open(path, "w", newline="") as f:
        csv.writer(f, quoting=csv.QUOTE_ALL, lineterminator="\n").writerows(rows)
    os.environ["FAULT_SOURCE"] = str(path)
    return path


def meters_rows() -> list[list[str]]:
    """The real parking meters CSV as rows of text, the header first."""
    with open(METERS_CSV, newline="") as f:
        return list(csv.reader(f))


def spoil(rows: list[list[str]], row: int, column: str, value: str) -> list[list[str]]:
    """A copy of `rows` with data row `row` (0-based) given `value` in `column`."""
    rows = [list(r) for r in rows]
    rows[row + 1][rows[0].index(column)] = value
    return rows


@pytest.fixture(scope="module")
def published(faults):
    """The first publication: every meter, one latitude spoiled ("32.71590O")."""
    write_source(faults, "meters_bad_lat.csv", spoil(meters_rows(), 99, "lat", "32.71590O"))
    dr, _ = run(faults, T0)
    assert str(dr.state) == "success", states(dr)
    return dr


@pytest.fixture
def unchanged(faults, published):
    """Asserts after the test that the publication is what it was before it."""
    before = snapshot(faults)
    yield before
    assert snapshot(faults) == before
    # No publishing backend is left working or holding a transaction open (a stuck one would hold locks).
    deadline = time.monotonic() + 5
    while (left := pg("SELECT pid, application_name, state FROM pg_stat_activity WHERE application_name LIKE "
                      "'enrich-%%' AND state <> 'idle'")) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert left == []
    assert not [p.name for p in faults.folder.iterdir() if p.name.endswith((".previous", ".incoming"))]


def refused_with(dr, capfd, task: str, *words: str) -> None:
    """The run failed at `task`, and what it logged (dag.test() logs to the console) names the cause."""
    s = states(dr)
    assert str(dr.state) == "failed" and s[task] == "failed", s
    out, err = capfd.readouterr()
    log = out + err
    for w in words:
        assert w in log, (w, log[-3000:])


# ---- the tests, in order: each starts from the publication the previous one left ------------------------------------

def test_a_non_numeric_latitude_is_a_row_error_and_the_placeholder_check_stays_on(faults, published):
    n = len(meters_rows()) - 1
    assert pg(f"SELECT count(*), count(geom) FROM {TABLE}")[0] == (n, n - 24)  # 13 placeholders, 10 implausible, 1
    types = dict(pg("SELECT column_name, data_type FROM information_schema.columns WHERE table_name = %s",
                    pg("SELECT version_table FROM enrich_publications WHERE table_name = %s", TABLE)[0][0]))
    assert types["lat"] == types["lng"] == "double precision"
    bad = pg(f"SELECT lat, geom, council_district, enrich_error FROM {TABLE} WHERE source_row = 99")
    assert bad == [(None, None, None, "lat '32.71590O' is not a number")]
    assert pg(f"SELECT count(*) FROM {TABLE} WHERE lat = 32 AND lng = -117 AND geom IS NULL "
              f"AND enrich_error LIKE '%%missing%%'")[0][0] == 13
    assert pg(f"SELECT count(*) FROM {TABLE} WHERE ST_X(geom) > 0 OR ST_Y(geom) > 34")[0][0] == 0  # no 180/90
    import json

    meta = json.loads((faults.folder / "meters_faults.metadata.json").read_text())
    assert meta["rows"] == n and meta["quality"]["unlocated"] == 24 and meta["quality"]["outside_area"] == 10
    assert meta["postgis"]["rows"] == n and set(meta["files"]) == {"meters_faults.csv", "meters_faults.geojson"}


def test_a_truncated_source_is_refused_naming_both_counts(faults, unchanged, capfd):
    write_source(faults, "meters_10.csv", meters_rows()[:11])
    dr, _ = run(faults, T0 + timedelta(days=1))
    refused_with(dr, capfd, "publish_postgis", "row count changed from 10,861 (last publication) to 10 (this run)",
                 "max_row_change_share")
    assert states(dr)["publish_files"] == "upstream_failed"


def test_a_column_of_another_type_is_refused(faults, unchanged, capfd):
    write_source(faults, "meters_text_config.csv", spoil(meters_rows(), 4, "config_id", "12x"))
    dr, _ = run(faults, T0 + timedelta(days=1))
    refused_with(dr, capfd, "publish_postgis", "column 'config_id' was bigint in the last publication and is text")


def _subset(faults, rows: int = 400) -> None:
    write_source(faults, "meters_subset.csv", meters_rows()[: rows + 1])


ALLOW = {"allow_row_change": True}  # these runs publish a subset on purpose: the fault, not the guard, must stop them


def test_postgis_going_away_mid_copy_leaves_everything_as_it_was(faults, unchanged, capfd):
    _subset(faults)
    faults.pg_proxy.mode, faults.pg_proxy.after = "reset", 30_000
    try:
        dr, took = run(faults, T0 + timedelta(days=1), ALLOW)
    finally:
        faults.pg_proxy.mode = "pass"
    refused_with(dr, capfd, "publish_postgis", "lost the connection to PostGIS while loading public.meters_faults")
    assert states(dr)["publish_files"] == "upstream_failed"


def test_a_half_open_connection_mid_copy_times_out_and_holds_no_lock(faults, unchanged, capfd):
    _subset(faults)
    faults.pg_proxy.mode, faults.pg_proxy.after = "stall", 30_000
    faults.pg_proxy.stalled.clear()
    try:
        dr, took = run(faults, T0 + timedelta(days=1), ALLOW)
    finally:
        faults.pg_proxy.mode = "pass"
    assert faults.pg_proxy.stalled.is_set()
    refused_with(dr, capfd, "publish_postgis", "no answer from PostGIS within 4 s", "COPY into meters_faults__p")
    assert took < 60, took  # two tries of 4 s each, not hours
    # The stalled backends' transactions ended (statement_timeout): nothing holds a lock for the next run.
    held = pg("SELECT a.pid, a.state, l.relation::regclass FROM pg_locks l JOIN pg_stat_activity a USING (pid) "
              "WHERE a.application_name LIKE 'enrich-load%%' AND l.relation IS NOT NULL")
    assert held == []


def test_a_long_reader_transaction_makes_the_switch_fail_after_lock_timeout(faults, unchanged, capfd):
    _subset(faults)
    reader = psycopg.connect(PG_DSN)  # a transaction that read the table and stays open
    reader.execute(f"SELECT count(*) FROM {TABLE}").fetchone()
    try:
        dr, took = run(faults, T0 + timedelta(days=1), ALLOW)
        # The reader was never blocked nor broken: its transaction still reads the same table.
        assert reader.execute(f"SELECT count(*) FROM {TABLE}").fetchone()[0] == unchanged["table"][1]
    finally:
        reader.close()
    refused_with(dr, capfd, "record_publication", "waited lock_timeout", "long reader transaction")
    assert took < 60, took
    assert [p for p in faults.folder.iterdir() if ".staged-" in p.name], "the staged files wait for a retry"


def test_postgis_lost_between_the_file_renames_and_the_commit_puts_the_files_back(faults, unchanged, capfd):
    _subset(faults)
    faults.pg_proxy.mode = "reset-commit"
    try:
        dr, took = run(faults, T0 + timedelta(days=1), ALLOW)
    finally:
        faults.pg_proxy.mode = "pass"
    refused_with(dr, capfd, "record_publication", "lost the connection to PostGIS while switching public.meters_faults",
                 "the files were put back")


def test_a_readers_view_and_grant_survive_a_publication(faults, published):
    pg(f"CREATE VIEW meters_faults_d3 AS SELECT count(*) AS n FROM {TABLE} WHERE council_district = '3'")
    pg(f"GRANT SELECT ON {TABLE} TO faults_reader")
    before = pg("SELECT n FROM meters_faults_d3")[0][0]
    _subset(faults)
    dr, _ = run(faults, T0 + timedelta(days=2), ALLOW)
    assert str(dr.state) == "success", states(dr)
    after = pg("SELECT n FROM meters_faults_d3")[0][0]
    assert 0 < after < before and pg(f"SELECT count(*) FROM {TABLE}")[0][0] == 400  # the view reads the new rows
    assert pg("SELECT has_table_privilege('faults_reader', %s, 'SELECT')", TABLE)[0][0]
    # One version table behind the view: the previous one was dropped (without CASCADE, the view is fine).
    versions = pg("SELECT relname FROM pg_class WHERE relname LIKE 'meters\\_faults\\_\\_p%%' AND relkind = 'r'")
    assert len(versions) == 1
    assert not [p.name for p in faults.folder.iterdir() if p.name.startswith(".")]


def test_a_stale_rerun_is_refused_before_any_work(faults, unchanged, capfd):
    write_source(faults, "meters_all.csv", meters_rows())
    dr, took = run(faults, T0)  # the first run, cleared and run again after a newer publication
    refused_with(dr, capfd, "extract", "stale run", "older than the last publication")
    assert states(dr)["enrich_batch"] == "upstream_failed"


def test_the_boundary_load_keeps_users_views_and_grants(faults, store, pg_dsn):
    from enrich_service.postgis import load_layers

    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        load_layers(conn, store)
        conn.execute("CREATE OR REPLACE VIEW faults_user_districts AS SELECT key FROM boundary_council_district_2021")
        conn.execute("GRANT SELECT ON boundary_council_district_2021 TO faults_reader")
        load_layers(conn, store)  # the old code dropped the table with CASCADE: the user's view vanished
        assert conn.execute("SELECT count(*) FROM faults_user_districts").fetchone()[0] == 9
        assert conn.execute("SELECT has_table_privilege('faults_reader', 'boundary_council_district_2021', "
                            "'SELECT')").fetchone()[0]
        conn.execute("DROP VIEW faults_user_districts")


def test_a_corrupt_source_fails_at_once_without_retries(faults, unchanged, capfd):
    rows = meters_rows()[:50]
    rows[20] = rows[20][:3]  # a row cut short: the file is not the CSV the spec describes
    write_source(faults, "meters_corrupt.csv", rows)
    dr, _ = run(faults, T0 + timedelta(days=3))
    refused_with(dr, capfd, "extract", "cannot read", "meters_corrupt.csv")
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        ti = session.scalars(select(TaskInstance).where(TaskInstance.dag_id == dr.dag_id, TaskInstance.run_id ==
                                                        dr.run_id, TaskInstance.task_id == "extract")).one()
        assert ti.try_number == 1  # AirflowFailException: no retry for what a retry cannot fix


def test_every_task_has_a_time_limit_and_the_service_calls_share_a_pool(faults):
    dag = faults.dag
    assert dag.dagrun_timeout == timedelta(minutes=5)
    assert {t.task_id: t.execution_timeout for t in dag.tasks} == {t.task_id: timedelta(minutes=2) for t in dag.tasks}
    assert dag.get_task("enrich_batch").pool == "enrich_service"
