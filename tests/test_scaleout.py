"""Scale-out on this machine (slow: about a minute; scripts/test-slow.sh): the parking meters DAG on Airflow 3 with
the CeleryExecutor (Redis broker, metadata and results in the local PostgreSQL), two Celery workers, two
enrich-service replicas behind a real nginx with deploy/nginx.conf, one replica SIGKILLed mid-run (scripts/scaleout.py
starts and stops it all). The checks read the published PostGIS table, nginx's access log, the replicas' /metrics and
Airflow's task instances, against the source CSV in ../shared/data.
"""

from __future__ import annotations

import collections
import importlib.util
import os
import sys
import time
from pathlib import Path

import psycopg
import pyarrow as pa
import pyarrow.csv as pacsv
import pytest
import redis

from tests.conftest import POINTS, REPO

pytestmark = pytest.mark.slow

if "scaleout" not in sys.modules:  # scripts/scaleout.py, loaded once (tests/test_deploy.py uses it too)
    _spec = importlib.util.spec_from_file_location("scaleout", REPO / "scripts" / "scaleout.py")
    sys.modules["scaleout"] = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(sys.modules["scaleout"])
scaleout = sys.modules["scaleout"]

VICTIM = "replica-1"


@pytest.fixture(scope="module")
def outcome() -> dict:
    """One whole scale-out run: what happened, what was published, and what was left behind afterwards."""
    with scaleout.cluster(batch_rows=500, workers=2, replicas=2) as c:
        run = scaleout.run_with_a_replica_killed(c, victim=VICTIM, kill_after=2)
        summary = scaleout.summarize(c, run)
        with c.gis() as conn:
            published = conn.execute(f"SELECT source_row, pole, config_id, council_district FROM {scaleout.TABLE}"
                                     ).fetchall() if run["state"] == "success" else []
        lb = c.lb_requests()
        victim_alive = c.procs[VICTIM].alive()
        procs, tmp = list(c.procs.values()), c.tmp
    with psycopg.connect(f"{scaleout.PG}/postgres") as conn:
        dbs = {r[0] for r in conn.execute("SELECT datname FROM pg_database")}
    redis_keys = [k.decode() for k in redis.Redis.from_url(scaleout.REDIS).keys(f"*{scaleout.QUEUE}*")]
    return {"run": run, "summary": summary, "published": published, "lb": lb, "victim_alive": victim_alive,
            "procs": procs, "tmp": tmp, "databases": dbs, "redis_keys": redis_keys, "replicas": dict(c.replicas),
            "killed": dict(c.killed)}


def _source():
    return pacsv.read_csv(POINTS / "treas_parking_meters_loc_datasd.csv", convert_options=pacsv.ConvertOptions(
        column_types={"pole": pa.string(), "config_id": pa.int64()}))


def test_the_run_completes_although_a_replica_crashed_mid_run(outcome):
    run = outcome["run"]
    assert run["state"] == "success", [(t["task_id"], t["map_index"], t["state"]) for t in run["task_instances"]]
    assert VICTIM in outcome["killed"] and not outcome["victim_alive"]
    left = run["batches_left_at_kill"]
    assert left is not None and left > 0, f"{VICTIM} was not killed while enrich batches remained ({left})"
    assert all(t["state"] == "success" for t in run["task_instances"])
    # after the kill only the survivor answered: nginx took the dead replica out (retrying on the other one)
    killed_at = outcome["killed"][VICTIM]
    victim_addr = outcome["replicas"][VICTIM]
    late = [r for r in outcome["lb"] if float(r["msec"]) > killed_at + 0.5 and r["uri"].startswith("/v1/pip")]
    assert late, "no bulk request came after the kill"
    assert all(r["status"] == 200 and r["upstream"].split(",")[-1].strip() != victim_addr for r in late), late


def test_every_source_row_is_published_exactly_once(outcome):
    source = _source()
    rows = outcome["published"]
    assert len(rows) == source.num_rows
    assert sorted(r[0] for r in rows) == list(range(source.num_rows)), "a source_row missing or published twice"
    # the meters' own ids, duplicates in the source included, as often as in the source
    want = collections.Counter(zip(source.column("pole").to_pylist(), source.column("config_id").to_pylist()))
    assert collections.Counter((r[1], r[2]) for r in rows) == want
    # tagged, not only copied: meters are in the city (a few placeholder locations have no district)
    assert sum(r[3] is not None for r in rows) >= 0.99 * source.num_rows


def test_batches_spread_over_both_workers_and_both_replicas(outcome):
    s = outcome["summary"]
    assert s["batches"] >= 20, "batch_rows 500 over ~10.9k meters"
    assert set(s["enrich_batches_by_worker"]) == {"worker-1", "worker-2"}, s
    assert all(n >= 2 for n in s["enrich_batches_by_worker"].values()), s
    assert sum(s["enrich_batches_by_worker"].values()) == s["batches"]
    assert set(s["pip_requests_by_replica"]) == {"replica-1", "replica-2"}, s
    # every batch answered at least once (more only if a task was retried); the survivor's own count agrees
    assert sum(s["pip_requests_by_replica"].values()) >= s["batches"]
    assert s["pip_requests_counted_by_replica_metrics"]["replica-2"] == s["pip_requests_by_replica"]["replica-2"]


def test_nothing_is_left_behind(outcome):
    for proc in outcome["procs"]:
        assert proc.popen.poll() is not None, f"{proc.name} still runs"
        try:
            os.killpg(proc.popen.pid, 0)
            deadline = time.monotonic() + 10  # a child may still be exiting
            while time.monotonic() < deadline:
                os.killpg(proc.popen.pid, 0)
                time.sleep(0.2)
            pytest.fail(f"{proc.name}: processes of its group still run")
        except ProcessLookupError:
            pass
    assert not Path(outcome["tmp"]).exists()
    assert not {scaleout.METADATA_DB, scaleout.GIS_DB} & outcome["databases"]
    assert not outcome["redis_keys"], "the Celery queue is left in Redis"
