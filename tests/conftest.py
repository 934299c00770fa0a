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
        with psycopg.connect(PG_DSN, connect_timeout=5, autocommit=True) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS postgis")
    except psycopg.Error as exc:
        return f"needs PostGIS at {PG_DSN} (set ENRICH_TEST_POSTGIS_DSN): {str(exc).strip().splitlines()[0]}"
    return None


@pytest.hookimpl(tryfirst=True)  # before -m selects by these marks
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        info = getattr(item, "_fixtureinfo", None)  # every fixture the test uses, through other fixtures too
        for defs in info.name2fixturedefs.values() if info else ():
            for mark in {m for d in defs for m in getattr(d.func, "enrich_needs", ())}:
                item.add_marker(mark)


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
    deadline = time.monotonic() + 60
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
    raise RuntimeError("enrich-service did not become ready in 60 s")


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
