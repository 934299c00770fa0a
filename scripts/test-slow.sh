#!/usr/bin/env bash
# The slow tests (@pytest.mark.slow): the scale-out run on Celery workers and service replicas behind nginx
# (tests/test_scaleout.py, about a minute). Needs what scripts/test.sh needs, plus Redis on 127.0.0.1:6379.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null || { echo "Redis is not answering on 127.0.0.1:6379" >&2; exit 1; }
export ENRICH_TEST_REQUIRE_ALL=1  # the data or PostGIS missing fails these tests instead of skipping them
exec .venv/bin/pytest -m slow "$@"
