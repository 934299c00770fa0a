#!/usr/bin/env bash
# Installs everything this project needs on a fresh Debian machine; safe to run again (does only what is missing).
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(postgresql-15-postgis-3 nginx age shellcheck wrk chromium)
missing=()
for p in "${APT_PACKAGES[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# PostgreSQL is started before each session; start it if it has stopped.
if command -v pg_lsclusters >/dev/null && ! pg_lsclusters -h | grep -q online; then
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start
fi

PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/pip install -q --upgrade pip
# The same pins as both Dockerfiles (constraints.txt).
.venv/bin/pip install -q --no-compile -c constraints.txt -e '.[airflow,dev]'
# Bytecode for the service and the packages it imports, their tests left out (~2,400 modules, ~12 s of CPU), not
# pip's for all of site-packages (~45 s, mostly Airflow's): where PYTHONDONTWRITEBYTECODE is set (this machine, the
# image) nothing else writes it, and every start of the service compiled ~1,100 modules from source, more than half
# of its CPU until ready (numba compiles some 80 more on its first parallel call, hence whole packages).
PYTHONDONTWRITEBYTECODE= .venv/bin/python - <<'PY'
import compileall, importlib, importlib.util, os, pkgutil, re, sys, sysconfig

import enrich_service

for module in pkgutil.walk_packages(enrich_service.__path__, "enrich_service."):
    importlib.import_module(module.name)
for lazy in ("cffi", "pycparser"):  # numba imports them on its first parallel call
    importlib.util.find_spec(lazy) and importlib.import_module(lazy)
packages = {os.path.dirname(m.__file__) for name, m in list(sys.modules.items())
            if "." not in name and (getattr(m, "__file__", None) or "").endswith("__init__.py")
            and m.__file__.startswith(sysconfig.get_paths()["purelib"])}
for folder in sorted(packages):
    compileall.compile_dir(folder, quiet=1, rx=re.compile(r"[\\/]tests?[\\/]"), workers=0)
PY

# The page's front-end packages (Leaflet, Papa Parse, Swagger UI, ReDoc) from the npm registry, exactly as
# package-lock.json pins them, into node_modules/ (served by the service: ENRICH_WEB_ASSETS_DIR). --ignore-scripts: no
# install-time code runs. Skipped when node_modules already matches the lock file.
command -v npm >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null; }
lock_sum=$(sha256sum package-lock.json | cut -d' ' -f1)
if [ "$(cat node_modules/.lock.sha256 2>/dev/null)" != "$lock_sum" ]; then
  npm ci --ignore-scripts --omit=peer --no-audit --no-fund --no-update-notifier --loglevel=error
  echo "$lock_sum" > node_modules/.lock.sha256
fi
