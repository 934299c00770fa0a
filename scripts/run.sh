#!/usr/bin/env bash
# The main job: installs what is missing, starts the service on loopback, runs the parking meters dataset DAG end
# to end, publishes to PostGIS (when ENRICH_POSTGIS_DSN is set) and to files, and prints a per-district summary.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
exec .venv/bin/python scripts/main_job.py "$@"
