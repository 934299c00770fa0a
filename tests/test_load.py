"""bench/load.py stays honest: its version-ordering check catches stale answers, and a short run passes end to end.

The full figures (10 minutes at 1,000 req/s, 20 reloads, wrk throughput) are run by hand: see docs/operations.md.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import numpy as np
import pytest

from .conftest import REPO

_spec = importlib.util.spec_from_file_location("bench_load", REPO / "bench" / "load.py")
load = importlib.util.module_from_spec(_spec)
sys.modules["bench_load"] = load  # dataclasses look their module up while the class is made
_spec.loader.exec_module(load)


def timeline(rows: list[tuple[float, float, int]], swaps: list[tuple[float, float, int, int]]):
    """A request log of (sent, done, generation), all answered 200, and the reloads' (sent, answered, status, gen)."""
    log = load.Log(len(rows))
    for i, (sent, done, gen) in enumerate(rows):
        log.sent[i], log.done[i], log.scheduled[i], log.status[i], log.sha[i] = sent, done, sent, 200, f"sha-{gen}"
    versions = load.Versions("sha-0")
    versions.by_sha.update({f"sha-{gen}": gen for _, _, _, gen in swaps})
    versions.swaps = swaps
    return log, versions


def test_ordering_check_accepts_a_clean_switch_and_overlap_with_the_swap():
    # Reload to generation 1 sent at t=10, answered at t=12; a request in flight across it may see either.
    log, versions = timeline([(1, 2, 0), (9, 11, 0), (10.5, 11.5, 1), (11, 13, 0), (12.5, 13, 1), (14, 15, 1)],
                             [(10, 12, 200, 1), (16, 17, 409, 1)])
    assert load.check_ordering(log, versions) == []


def test_ordering_check_catches_an_older_index_after_a_newer_one_was_seen():
    log, versions = timeline([(10.5, 11, 1), (11.2, 11.6, 0)], [(10, 12, 200, 1)])
    problems = load.check_ordering(log, versions)
    assert any("older index than one already observed" in p for p in problems), problems


def test_ordering_check_catches_answers_from_the_wrong_side_of_the_swap():
    log, versions = timeline([(1, 2, 1), (13, 14, 0)], [(10, 12, 200, 1)])
    problems = load.check_ordering(log, versions)
    assert any("finished before its reload was sent" in p for p in problems), problems
    assert any("started after its reload answered" in p for p in problems), problems


@pytest.mark.data
@pytest.mark.timeout(180)
def test_a_short_load_run_with_reloads_has_no_error_and_refuses_the_corrupt_file(tmp_path):
    """About 15 s: the real service, real points, single GETs and 1,000-point batches, two reloads (one corrupt)."""
    out = tmp_path / "load.json"
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "load.py"), "--duration", "6", "--rate", "150",
                           "--batch-share", "0.1", "--reloads", "2", "--warmup", "1", "--log-level", "warning",
                           "--json", str(out)], capture_output=True, text=True, timeout=170)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["errors"] == 0 and report["requests"] == 900
    assert report["per_kind"]["batch POST"]["requests"] > 40 and report["per_kind"]["single GET"]["requests"] > 700
    reloads = report["reloads"]
    assert (reloads["swapped"], reloads["refused_409"], reloads["problems"]) == (1, 1, [])
    assert sum(reloads["answers_per_generation"].values()) == 900
    assert np.isfinite(report["rss_mb_start"]) and report["rss_mb_end"] > 100
