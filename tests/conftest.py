"""Shared fixtures: the real San Diego data in ../shared/data, the loaded layers, a real PostGIS.

Tests marked `data` read the real files, tests marked `postgis` talk to the database; a test using a fixture that
needs them (`@needs("data")`, directly or through another fixture) is marked too. Where the data or PostGIS is
missing, those tests skip and say why, so the rest (codecs, specs, parsing) run anywhere in seconds
(docs/testing.md). In CI (CI=true) and under scripts/test.sh (ENRICH_TEST_REQUIRE_ALL=1) a missing dependency fails
them instead: there, every test runs.
"""

from __future__ import annotations

import contextlib
import functools
import os
import time
from pathlib import Path

import psycopg
import pytest

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("ENRICH_SHARED_DATA", REPO.parent / "shared" / "data"))
BOUNDARIES = DATA / "boundaries"
POINTS = DATA / "points"
ADDRESS = DATA / "address"
PG_DSN = os.environ.get("ENRICH_TEST_POSTGIS_DSN", "postgresql://postgres@127.0.0.1:5432/test")


def _dsn_with_database(dsn: str, database: str) -> str:
    """The same DSN naming another database, in the same form (a URL stays a URL: Airflow's connections need one)."""
    from urllib.parse import urlsplit, urlunsplit

    if "://" in dsn:
        return urlunsplit(urlsplit(dsn)._replace(path=f"/{database}"))
    return psycopg.conninfo.make_conninfo(dsn, dbname=database)


# Under pytest-xdist (scripts/test.sh: -n 2) each worker has a database of its own, `<database>_gw0` and so on, so
# two files loading the same tables never meet; the bench scripts the tests start inherit it through the variable.
XDIST_WORKER = os.environ.get("PYTEST_XDIST_WORKER", "")
PG_SERVER_DSN = PG_DSN
_database = psycopg.conninfo.conninfo_to_dict(PG_DSN).get("dbname") or "postgres"
WORKER_DATABASE = bool(XDIST_WORKER) and not _database.endswith(f"_{XDIST_WORKER}")  # not again in a bench script
if WORKER_DATABASE:
    PG_DSN = _dsn_with_database(PG_DSN, f"{_database}_{XDIST_WORKER}")
    os.environ["ENRICH_TEST_POSTGIS_DSN"] = PG_DSN
REQUIRE_ALL = (os.environ.get("CI", "").lower() in ("1", "true", "yes")
               or os.environ.get("ENRICH_TEST_REQUIRE_ALL") == "1")



def needs(*marks: str):
    """A fixture that reads the real data ("data") or opens PostGIS ("postgis"): every test using it gets the marks.
    Put it under @pytest.fixture (pytest itself has no marks on fixtures)."""

    def declare(fixture):
        fixture.enrich_needs = marks
        return fixture

    return declare


@functools.cache
def data_missing() -> str | None:
    if BOUNDARIES.is_dir() and POINTS.is_dir() and ADDRESS.is_dir():
        return None
    return f"needs the real data at {DATA} (boundaries/, points/, address/; set ENRICH_SHARED_DATA)"


@functools.cache
def postgis_missing() -> str | None:
    try:
        if WORKER_DATABASE:
            _create_worker_database()
        with psycopg.connect(PG_DSN, connect_timeout=5, autocommit=True) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS postgis")
    except psycopg.Error as exc:
        return f"needs PostGIS at {PG_DSN} (set ENRICH_TEST_POSTGIS_DSN): {str(exc).strip().splitlines()[0]}"
    return None


def _create_worker_database() -> None:
    from psycopg import sql

    name = psycopg.conninfo.conninfo_to_dict(PG_DSN)["dbname"]
    with psycopg.connect(PG_SERVER_DSN, connect_timeout=5, autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
            with contextlib.suppress(psycopg.errors.DuplicateDatabase):  # the other worker, at the same moment
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


# The files that import Airflow in this process share one xdist worker, in this (the collection) order:
# tests/test_dags.py gives the process its throwaway AIRFLOW_HOME before any of the others imports Airflow.
AIRFLOW_FILES = ("test_dags", "test_dags_ops", "test_geocode_dag", "test_mutation_kills", "test_mutations",
                 "test_notebook", "test_publish_faults", "test_quality_gate", "test_versions")
# Units (a file, or the Airflow files together) that take the longest start first, so no worker is left running
# one of them alone at the end; the rest follow in collection order. From `pytest --durations` (docs/testing.md).
LONGEST_FIRST = ("test_scaleout", "airflow", "test_operations", "test_engine", "test_bench_smoke", "test_grid",
                 "test_start_up", "test_load", "test_cli", "test_reload_switch", "test_many_polygons", "test_page",
                 "test_fuzz")


def _unit(path: str) -> str:
    """The unit of scheduling of a test file: its module name, or "airflow" for the Airflow files."""
    module = Path(path.split("::")[0]).stem
    return "airflow" if module in AIRFLOW_FILES else module


def pytest_xdist_make_scheduler(config: pytest.Config, log):
    """xdist's load-by-scope with our units as the scopes. (Its `loadgroup` marks do not take on pytest 9, whose
    node ids xdist can no longer rename.)"""
    from xdist.scheduler import LoadScopeScheduling

    class ByUnit(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return _unit(nodeid)

    return ByUnit(config, log)


@pytest.hookimpl(tryfirst=True)  # before -m selects by these marks
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        info = getattr(item, "_fixtureinfo", None)  # every fixture the test uses, through other fixtures too
        for defs in info.name2fixturedefs.values() if info else ():
            for mark in {m for d in defs for m in getattr(d.func, "enrich_needs", ())}:
                item.add_marker(mark)
    if hasattr(config, "workerinput"):  # an xdist worker: the longest units first (every worker sorts the same)
        rank = {unit: i for i, unit in enumerate(LONGEST_FIRST)}
        items.sort(key=lambda item: rank.get(_unit(item.nodeid), len(rank)))  # stable: collection order in a unit


def pytest_sessionstart(session: pytest.Session) -> None:
    """Under xdist, before the workers start: fill the layer, grid and geocoder caches once, as a service start fills
    them. Else the first services of both workers (and the scale-out's replicas) build the same cold caches side by
    side, after any change to the code they are keyed by, and miss their start deadline."""
    import subprocess
    import sys

    if hasattr(session.config, "workerinput") or not session.config.getoption("numprocesses", None) or data_missing():
        return
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENRICH_")}
    fill = ("from enrich_service.index import build_index; from enrich_service.settings import Settings; "
            f"build_index(Settings(boundary_dir={str(BOUNDARIES)!r}, reference_dir={str(ADDRESS)!r}))")
    subprocess.run([sys.executable, "-c", fill], env=env, timeout=600, check=False)


def pytest_runtest_setup(item: pytest.Item) -> None:
    for mark, missing in (("data", data_missing), ("postgis", postgis_missing)):
        why = item.get_closest_marker(mark) and missing()
        if why and REQUIRE_ALL:
            pytest.fail(f"{why}. CI runs every test (CI / ENRICH_TEST_REQUIRE_ALL is set)", pytrace=False)
        if why:
            pytest.skip(why)


@contextlib.contextmanager
def settings_env(env: dict):
    """The service's settings read from these environment variables, restored afterwards."""
    from enrich_service.settings import get_settings

    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    get_settings.cache_clear()
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        get_settings.cache_clear()


@contextlib.contextmanager
def ready_app(env: dict, timeout_s: float = 90):
    """An in-process TestClient on a new app with these settings, once /readyz says the index is in."""
    from fastapi.testclient import TestClient

    from enrich_service.main import create_app

    with settings_env(env), TestClient(create_app()) as c:
        deadline = time.monotonic() + timeout_s
        while c.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, c.get("/readyz").json()
            time.sleep(0.1)
        yield c


def cache_dir_sharing_layers(path: Path) -> Path:
    """A cache folder whose own caches (geocoder reference, accepted sets, results) start empty, but whose layer and
    grid caches are the user's default ones, as every service the tests start uses: those are keyed by the files'
    sha256 and the code, so never stale, and reading five layers and building their grids cold costs seconds a
    start that no test here is about."""
    from enrich_service.settings import Settings

    shared = Path(Settings.model_fields["cache_dir"].default)
    path.mkdir(parents=True, exist_ok=True)
    for part in ("layers", "grids"):
        (shared / part).mkdir(parents=True, exist_ok=True)
        (path / part).symlink_to(shared / part)
    return path


@pytest.fixture(scope="session")
@needs("data")
def store():
    from enrich_service.layers.store import LayerStore
    from enrich_service.settings import REPO_ROOT

    return LayerStore.load(REPO_ROOT / "boundaries" / "manifest.yaml", BOUNDARIES, REPO / ".cache" / "layers")


@pytest.fixture(scope="session")
@needs("postgis")
def pg_dsn() -> str:
    """The test database (postgis_missing, checked before every postgis test, has created the extension)."""
    return PG_DSN


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_service(env: dict | None = None, port: int | None = None, workers: int = 1, log=None,
                  log_level: str = "warning"):
    """A real `enrich-service serve` on loopback with the real layers; returns (process, base_url) once ready.
    `log`: a file its output goes to (else this process's)."""
    import subprocess
    import sys
    import time

    import httpx

    port = port or _free_port()
    # Only the settings given here: a module fixture's ENRICH_* (e.g. small limits) must not leak into a
    # session-wide service that happens to start while it is active.
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("ENRICH_")}
    full_env = {**inherited, "ENRICH_BOUNDARY_DIR": str(BOUNDARIES), "ENRICH_REFERENCE_DIR": str(ADDRESS),
                "ENRICH_API_KEYS": "test-admin-key", **(env or {})}
    proc = subprocess.Popen([sys.executable, "-m", "enrich_service.cli", "serve", "--host", "127.0.0.1",
                             "--port", str(port), "--workers", str(workers), "--log-level", log_level], env=full_env,
                            stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120  # a cold start on a loaded machine (two test workers) takes a minute
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"enrich-service exited with {proc.returncode}" + (f"; see {log.name}" if log else ""))
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError("enrich-service did not become ready in 120 s")


@pytest.fixture(scope="session")
@needs("data")
def live_service():
    """Base URL of a live service (admin key: test-admin-key)."""
    proc, url = start_service()
    yield url
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture(scope="session")
def engine(store):
    from enrich_service.engine.tagger import Engine
    from enrich_service.settings import Settings

    return Engine(store, use_grid=Settings().use_grid)


def real_points():
    """Every usable point of ../shared/data/points: transit stops and parking meters (lon, lat arrays, labels)."""
    import json

    import numpy as np
    import pyarrow.csv as pacsv

    stops = json.loads((POINTS / "transit_stops_datasd.geojson").read_text())["features"]
    sx = np.array([f["geometry"]["coordinates"][0] for f in stops if f.get("geometry")], dtype=float)
    sy = np.array([f["geometry"]["coordinates"][1] for f in stops if f.get("geometry")], dtype=float)
    meters = pacsv.read_csv(POINTS / "treas_parking_meters_loc_datasd.csv")
    mx = meters.column("lng").to_numpy(zero_copy_only=False).astype(float)
    my = meters.column("lat").to_numpy(zero_copy_only=False).astype(float)
    x, y = np.concatenate([sx, mx]), np.concatenate([sy, my])
    ok = np.isfinite(x) & np.isfinite(y) & (np.abs(x) > 1) & (np.abs(y) > 1)
    return x[ok], y[ok]


@pytest.fixture(scope="module")
def index(store, engine, tmp_path_factory):
    """A serving index with the geocoder over the real address reference (a fresh result cache per module)."""
    import datetime as dt

    from enrich_service.geocode import build_geocoder
    from enrich_service.index import ServiceIndex
    from enrich_service.settings import Settings

    settings = Settings(reference_dir=ADDRESS, cache_dir=tmp_path_factory.mktemp("cache"))
    return ServiceIndex(store=store, engine=engine, built_at=dt.datetime.now(dt.UTC), build_seconds=0.0,
                        geocoder=build_geocoder(settings, store))
