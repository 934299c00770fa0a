"""Shared fixtures: the real San Diego data in ../shared/data, the loaded layers, a real PostGIS."""

from __future__ import annotations

import os
from pathlib import Path

import psycopg
import pytest

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("ENRICH_SHARED_DATA", REPO.parent / "shared" / "data"))
BOUNDARIES = DATA / "boundaries"
POINTS = DATA / "points"
ADDRESS = DATA / "address"
PG_DSN = os.environ.get("ENRICH_TEST_POSTGIS_DSN", "postgresql://postgres@127.0.0.1:5432/test")

if not BOUNDARIES.is_dir():
    raise RuntimeError(f"the real data is expected at {DATA} (set ENRICH_SHARED_DATA)")


@pytest.fixture(scope="session")
def store():
    from enrich_service.layers.store import LayerStore
    from enrich_service.settings import REPO_ROOT

    return LayerStore.load(REPO_ROOT / "boundaries" / "manifest.yaml", BOUNDARIES, REPO / ".cache" / "layers")


@pytest.fixture(scope="session")
def pg_dsn() -> str:
    with psycopg.connect(PG_DSN, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS postgis")
    return PG_DSN
