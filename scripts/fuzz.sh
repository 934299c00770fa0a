#!/usr/bin/env bash
# The full fuzzing run of issue 7: schemathesis against a live service's OpenAPI, 5,000+ generated cases.
set -euo pipefail
cd "$(dirname "$0")/.."
ENRICH_FUZZ_EXAMPLES=${ENRICH_FUZZ_EXAMPLES:-1200} exec .venv/bin/pytest -q -s tests/test_fuzz.py "$@"
