#!/usr/bin/env bash
# Installs what is missing, prepares PostGIS, runs the test suite against the real data in ../shared/data.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
psql -h 127.0.0.1 -U postgres -d test -qc "CREATE EXTENSION IF NOT EXISTS postgis" >/dev/null
set +e
.venv/bin/pytest "$@"
rc=$?
set -e
# pytest's 5 means no test ran: a suite that ran nothing has failed.
[ $rc -eq 5 ] && echo "no tests were collected" >&2
exit $rc
