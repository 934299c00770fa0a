#!/usr/bin/env bash
# Mutation score of the functions that decide answers (docs/testing.md): the rule, the exact and grid paths,
# version selection, the quality gate, the PostGIS swap and the geocoder's tagging. On demand, not in CI (about
# 30 minutes on 2 shared cores; --only publish about 3).
#   bash scripts/mutation.sh                 # everything
#   bash scripts/mutation.sh --only rules    # one target (a CI-sized subset: seconds to a minute or two)
set -euo pipefail
cd "$(dirname "$0")/.."
export ENRICH_TEST_POSTGIS_DSN=${ENRICH_TEST_POSTGIS_DSN:-postgresql://postgres@127.0.0.1:5432/test}
psql "$ENRICH_TEST_POSTGIS_DSN" -qc "CREATE EXTENSION IF NOT EXISTS postgis" >/dev/null
exec .venv/bin/python scripts/mutation.py "$@"
