#!/usr/bin/env bash
# The test command (CI runs it: .ci/run). Installs what is missing, then
#   1. lint: `ruff check .` and `mypy` (the core package). Seconds, so first; a finding stops the run, naming the tool.
#   2. the whole suite against the real data in ../shared/data and a real PostGIS, the bench/ smoke runs included
#      (tests/test_bench_smoke.py), in two processes (ENRICH_TEST_WORKERS). Here a missing data folder or database fails the tests that need it, never skips.
# `bash scripts/test.sh --fast`: the lint, then only the tests that need neither the data nor PostGIS (seconds; no
# install when .venv exists). Further arguments go to pytest. Tiers and marks: docs/testing.md.
set -euo pipefail
cd "$(dirname "$0")/.."

fast=0
if [ "${1:-}" = "--fast" ]; then
  fast=1
  shift
fi
if [ $fast -eq 0 ] || [ ! -x .venv/bin/pytest ]; then
  bash scripts/install.sh
fi

step() { echo "== $*" >&2; }
failed() { echo "FAILED: $*" >&2; exit 1; }

step "lint: ruff check ."
.venv/bin/ruff check . || failed "ruff check . (the lint findings above)"
step "types: mypy (packages in pyproject.toml [tool.mypy])"
.venv/bin/mypy || failed "mypy (the type errors above)"

if [ $fast -eq 1 ]; then
  step "tests: the fast tier, without the real data or PostGIS"
  marks=(-m "not data and not postgis and not slow")
else
  step "tests: everything (a missing data folder or PostGIS fails the tests that need it)"
  export ENRICH_TEST_REQUIRE_ALL=1
  marks=()
fi
# Two worker processes (pytest-xdist), one test file at a time each, the longest first; the files that import
# Airflow in-process share a worker (tests/conftest.py). ENRICH_TEST_WORKERS=0 runs everything in this process.
workers=${ENRICH_TEST_WORKERS:-2}
parallel=()
[ "$workers" != 0 ] && parallel=(-n "$workers" --dist loadscope --no-loadscope-reorder)
set +e
.venv/bin/pytest "${marks[@]}" "${parallel[@]}" "$@"
rc=$?
set -e
# pytest's 5 means no test ran: a suite that ran nothing has failed.
[ $rc -eq 5 ] && echo "no tests were collected" >&2
[ $rc -ne 0 ] && echo "FAILED: pytest (exit $rc)" >&2
exit $rc
