"""The test tiers (docs/testing.md): without the real data or PostGIS, the tests needing them skip and say why, and
the rest still run; in CI they fail instead; `-m "not data and not postgis"` leaves only the rest. Run on a small
test file with this suite's conftest, in a pytest of its own, with the data and the database pointed away."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from .conftest import REPO

PROBE = '''
import pytest

def test_through_a_data_fixture(engine):
    pass

def test_through_the_postgis_fixture(pg_dsn):
    pass

@pytest.mark.data
def test_marked_data():
    pass

def test_pure():
    assert 1 + 1 == 2
'''
NO_DATA = "/nonexistent/shared/data"
NO_POSTGIS = "postgresql://postgres@127.0.0.1:1/nowhere"


def run_probe(tmp_path, *args: str, ci: bool = False) -> subprocess.CompletedProcess:
    (tmp_path / "test_probe.py").write_text(PROBE)
    # a pytest of its own: not CI, and not an xdist worker even when this one is
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "ENRICH_TEST_REQUIRE_ALL")
           and not k.startswith("PYTEST_XDIST")}
    env.update(ENRICH_SHARED_DATA=NO_DATA, ENRICH_TEST_POSTGIS_DSN=NO_POSTGIS, PYTHONPATH=str(REPO))
    if ci:
        env["CI"] = "true"
    return subprocess.run([sys.executable, "-m", "pytest", "-c", str(REPO / "pyproject.toml"), "--rootdir", str(REPO),
                           "-p", "tests.conftest", "-p", "no:cacheprovider", "-rsfE", *args, str(tmp_path),
                           # plugins the probe has no use for, and most of a pytest's start-up
                           "-p", "no:schemathesis", "-p", "no:hypothesispytest", "-p", "no:anyio"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)


def test_without_the_data_and_postgis_their_tests_skip_saying_why(tmp_path):
    r = run_probe(tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "1 passed, 3 skipped" in r.stdout, r.stdout
    assert re.search(rf"SKIPPED \[2\] .*: needs the real data at {NO_DATA} ", r.stdout), r.stdout
    assert re.search(rf"SKIPPED \[1\] .*: needs PostGIS at {NO_POSTGIS} .*Connection refused", r.stdout), r.stdout


def test_in_ci_a_missing_dependency_fails_instead(tmp_path):
    r = run_probe(tmp_path, ci=True)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "1 passed" in r.stdout and "3 error" in r.stdout and "skipped" not in r.stdout, r.stdout
    assert "CI runs every test" in r.stdout, r.stdout


def test_the_fast_tier_selects_the_rest_even_in_ci(tmp_path):
    r = run_probe(tmp_path, "-m", "not data and not postgis", ci=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "1 passed, 3 deselected" in r.stdout, r.stdout
