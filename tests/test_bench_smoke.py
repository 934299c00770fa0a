"""Every bench/ script runs here in its --smoke mode (a few thousand points, seconds), so none of them rots unseen:
it must exit 0 and print its whole table. A smoke run's figures mean nothing; only the table's shape is checked
(speed is measured by hand, docs/engine.md and docs/geocode.md).

A new script needs a --smoke flag and its table's lines listed in TABLES below; without either it fails here.
"""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from .conftest import REPO

pytestmark = [pytest.mark.data, pytest.mark.postgis]

BENCH = REPO / "bench"
RATE = r"\s+[\d,]+\s+\d+\.\d\d$"  # points/s, then the ratio to geopandas.sjoin
LAYERS = ("council_district", "neighborhood", "zip")
GEOCODE_SETS = ("held-back address points", "reference address points, no ZIP given",
                "parking meters (hundred blocks)", "transit stops (intersections)")
PIPELINE_STAGES = ("extract", "enrich", "assemble", "quality gate", "publish postgis", "publish csv",
                   "publish geojson", "metadata", "end to end")

# Per script, one regular expression per line its table must print (matched against each line of stdout).
TABLES: dict[str, list[str]] = {
    "pip.py": [
        *(rf"^{re.escape(f'{what} {layer}')}{RATE}" for layer in LAYERS
          for what in ("geopandas.sjoin", "PostGIS ST_Contains", "PostGIS subdivided(256)", "engine in process")),
        rf"^geopandas\.sjoin, 3 layers in turn{RATE}",
        *(rf"^{re.escape(name)}, 3 layers{RATE}"
          for name in ("HTTP arrow", "HTTP json rows (orjson)", "HTTP json columns (orjson)", "HTTP csv",
                       "HTTP ndjson stream")),
        r"^service start-up to ready: [\d.]+s .*RSS idle \d+ MB",
        # where the Arrow request's time goes, and issue 21's targets judged next to the ratios
        *(rf"^  {re.escape(stage)}\s+[\d.]+" for stage in (
            "client encode (Arrow stream)", "server: body arrives (transfer in)", "server: decode + checks",
            "server: prepare + tag", "server: answer table + Arrow stream", "client decode (Arrow stream)", "total")),
        r"^  server process CPU per request \(/proc, all of it\): min \d+ ms, median \d+ ms$",
        r"^  HTTP arrow, 3,000 points, 3 layers\s+[\d.]+x  target >= 30x: (met|NOT MET)$",
        r"^  HTTP json \(the faster of rows and columns\)\s+[\d.]+x  target >= 1.5x: (met|NOT MET)$",
    ],
    "geocode.py": [
        *(rf"^{re.escape(name)}: [\d,]+ addresses, match rate [\d.]+%$" for name in GEOCODE_SETS),
        r"^parking meters, as written\s+hundred_block\s+\d+",
        r"^transit stops \(intersections\)\s+intersection\s+\d+",
        r"^police collisions 2017 \([\d,]+ rows\)",
        r"^all\s+[\d,]+\s+100\.0%",
        r"^geocode 3,000 records \(repeats deduplicated\)\s+[\d,]+\s+[\d,]+$",
        r"^geocode 3,000 distinct addresses\s+[\d,]+\s+[\d,]+$",
        r"^geocode \+ tag 3 layers, 3,000 records\s+[\d,]+\s+[\d,]+$",
        r"^geocode again with the result cache \(a DAG re-run\)\s+[\d,]+\s+[\d,]+$",
        *(rf"^{transport}\s+{attempt}\s+[\d,]+ records/s\s+[\d,]+ per server CPU-s$"
          for transport in ("json", "arrow") for attempt in ("cold cache", "warm cache")),
    ],
    "load.py": [
        r"^== enrich-service load, mode rate, 1 worker\(s\)",
        r"^requests 900, achieved [\d.]+/s, errors 0$",
        r"^reloads: 2 asked, 1 swapped, 1 refused with 409",
        r"^  ordering: every answer came from the index serving at the time",
        r"^== enrich-service load, mode throughput",
        r"^  single GET latency \(closed loop, 8 connections\): p50 [\d.]+ ms",
        r"^CPU per request: service [\d.]+ us",
        r"^  answers checked \d+, wrong 0$",
        r"^target single lookups >= 8,000/s: [\d,]+/s .*: (met|NOT MET)$",
        r"^target single GET p99 <= 5 ms at 150 req/s mixed .*: (met|NOT MET)$",
    ],
    "codecs_1m.py": [
        r": 5,000 points, CPU seconds \(min / median\)$",
        *(rf"^  {re.escape(name)}\s+\d+\.\d{{3}} / \d+\.\d{{3}}$"
          for name in ("JSON decode", "JSON encode", "JSON columns decode", "JSON columns encode", "Arrow answer",
                       "Arrow decode", "CSV decode", "CSV encode")),
    ],
    "memory.py": [
        r"^where the idle memory goes",
        r"^  numba, llvmlite \(import\)\s+\d+\s+[+-]\d+",
        r"^  warm-up \(kernels, codecs, geocoder\)\s+\d+",
        r"^  modules compiled from source \(no bytecode; .*\): \d+, [\d.]+s CPU$",
        r"^service, 1 worker, idle: RSS \d+ MB = anonymous \d+ MB \+ file-backed \d+ MB; PSS \d+ MB",
        r"^2 workers, worker 2: RSS \d+ MB .*PSS \d+ MB",
        r"^start-up to ready, 1 worker: [\d.]+s \(median of ",
        r"^HTTP arrow, [\d,]+ points: first \d+ ms .*next five median \d+ ms",
        r"^HTTP json, [\d,]+ points: first \d+ ms .*next five median \d+ ms",
        r"^target idle RSS < 400 MB \(1 worker\): \d+ MB, (met|NOT met)$",
        r"^target first bulk request <= the later ones .*: (met|NOT met)$",
        r"^target start-up < 2 s: [\d.]+s, (met|NOT met)",
    ],
    "pipeline.py": [rf"^  {re.escape(stage)}\s+[\d.]+ s\s+[\d,]+ rows/s" for stage in PIPELINE_STAGES],
}
# Scripts are the files run as programs; a module they share (voronoi.py, the synthetic layers) is not one.
SCRIPTS = sorted(p.name for p in BENCH.glob("*.py") if '__name__ == "__main__"' in p.read_text())


def test_every_bench_script_has_its_table_listed():
    unlisted = sorted(set(SCRIPTS) - set(TABLES))
    assert not unlisted, f"list the lines the --smoke table of {unlisted} prints in TABLES ({__file__})"


@pytest.mark.timeout(300)
@pytest.mark.parametrize("script", SCRIPTS)
def test_bench_script_smoke_run_prints_its_table(script):
    proc = subprocess.run([sys.executable, str(BENCH / script), "--smoke"], cwd=REPO, capture_output=True,
                          text=True, timeout=280)
    out = proc.stdout + proc.stderr[-3000:]
    assert proc.returncode == 0, f"bench/{script} --smoke exited {proc.returncode}:\n{out[-6000:]}"
    lines = proc.stdout.splitlines()
    missing = [want for want in TABLES.get(script, []) if not any(re.search(want, line) for line in lines)]
    assert not missing, f"bench/{script} --smoke did not print lines matching {missing}:\n{proc.stdout}"


@pytest.mark.timeout(300)
def test_pip_voronoi_smoke_run_prints_its_table():
    """bench/pip.py --voronoi (many-polygon layers, issue 21) takes its own path through the script."""
    proc = subprocess.run([sys.executable, str(BENCH / "pip.py"), "--smoke", "--voronoi", "300"], cwd=REPO,
                          capture_output=True, text=True, timeout=280)
    assert proc.returncode == 0, f"bench/pip.py --voronoi exited {proc.returncode}:\n{proc.stderr[-6000:]}"
    lines = proc.stdout.splitlines()
    for want in (rf"^geopandas.sjoin voronoi_300{RATE}", rf"^engine in process voronoi_300{RATE}",
                 r"^service start-up to ready with the real layers and voronoi_300: [\d.]+s"):
        assert any(re.search(want, line) for line in lines), f"no line matching {want}:\n{proc.stdout}"
