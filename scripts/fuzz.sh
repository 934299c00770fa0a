#!/usr/bin/env bash
# The full fuzzing run of issue 7: schemathesis against a live service's OpenAPI, 5,000+ generated cases.
set -euo pipefail
cd "$(dirname "$0")/.."
# And the body fuzz of issue 16 (hypothesis over JSON, CSV, Arrow and NDJSON bodies), ENRICH_FUZZ_CASES per transport.
ENRICH_FUZZ_EXAMPLES=${ENRICH_FUZZ_EXAMPLES:-1200} ENRICH_FUZZ_CASES=${ENRICH_FUZZ_CASES:-800} \
  exec .venv/bin/pytest -q -s tests/test_fuzz.py tests/test_fuzz_bodies.py "$@"
