#!/usr/bin/env python3
"""Scale-out on this machine, no Docker: the parking meters DAG on Airflow 3 with the CeleryExecutor, two Celery
workers, two enrich-service replicas (two workers each) behind nginx, and one replica killed (SIGKILL) in the middle
of the run. Then one boundary version everywhere: the killed replica rejoins, the boundary refresh DAG runs on a
re-exported districts file while lookups and bulk batches flow, and after a wrong file is refused one worker is
killed (SIGKILL) under load.

    .venv/bin/python scripts/scaleout.py [--batch-rows 500] [--workers 2] [--replicas 2] [--keep] [--json FILE]

What runs (everything on loopback, every file in one temp folder, every process stopped at the end):
  - Redis 127.0.0.1:6379 (already running) is the Celery broker, on a queue of its own (enrich-scaleout-<run>);
  - the local PostgreSQL holds Airflow's metadata and Celery's results (database airflow_scaleout_<run>) and the
    published table (database enrich_scaleout_<run>, with PostGIS); both are made afresh and dropped at the end
    (<run>: ENRICH_SCALEOUT_RUN, else this process's pid, so runs side by side keep apart);
  - `airflow api-server`, `scheduler`, `dag-processor` and `celery worker` x N (each worker names itself
    worker-<i>, so a task instance's hostname says which worker ran it);
  - `enrich-service serve` x M on their own ports (layer files in a folder of links, the accepted layer set in one
    folder they share, following it every second), and nginx (the Debian package) with deploy/nginx.conf pointed
    at them, as a foreground process with its own prefix, pid file and access log;
  - the DAG folder is a copy of dags/ whose parking_meters.yaml has a small batch_rows (so the mapped enrich
    batches spread over both workers and both replicas) and no schedule (only the run triggered here).

The run passes when the DAG run succeeds after the kill, every source row is in the published PostGIS table
exactly once, and both workers and both replicas did part of the work; when the refresh succeeds with no failed
request, every answer from the old or the new layer set and every replica serving the new one; and when the wrong
file is refused (409) and the killed worker's replacement serves the accepted set with no failed request and no 503
from any replica. Prints the per-worker and per-replica
counts and the wall times; exit status 0 on success. tests/test_scaleout.py runs the same thing and checks it.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import random
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import yaml

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
DATA = Path(os.environ.get("ENRICH_SHARED_DATA", ROOT.parent / "shared" / "data"))
PG = os.environ.get("ENRICH_SCALEOUT_PG", "postgresql://postgres@127.0.0.1:5432")
REDIS = os.environ.get("ENRICH_SCALEOUT_REDIS", "redis://127.0.0.1:6379/0")
# Names of this run's own (two runs at once, e.g. two checkouts' test suites, must not drop each other's databases)
RUN = os.environ.get("ENRICH_SCALEOUT_RUN") or str(os.getpid())
METADATA_DB, GIS_DB = f"airflow_scaleout_{RUN}", f"enrich_scaleout_{RUN}"
QUEUE = f"enrich-scaleout-{RUN}"
DAG_ID = "enrich_parking_meters"
REFRESH_DAG_ID = "enrich_boundary_refresh"
SPEC = "parking_meters.yaml"
TABLE = "public.parking_meters_enriched"
ADMIN_KEY = "scaleout-admin-key"
PIP_REQUEST = re.compile(r"^/v1/pip")


def log(msg: str) -> None:
    print(f"[scaleout {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def nginx_binary() -> str:
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    if not found:
        raise SystemExit("nginx is not installed: apt-get install nginx (scripts/install.sh does)")
    return found


def render_nginx_conf(upstreams: list[str], listen: str, prefix: Path, access_log: str | None = None) -> str:
    """deploy/nginx.conf for processes outside compose: the upstream servers, the listen address, and the pid file
    and temp folders under `prefix` instead of /tmp (so several can run side by side)."""
    conf = (ROOT / "deploy" / "nginx.conf").read_text()
    server = re.search(r"^(\s*)server enrich-service:8080([^;]*);", conf, flags=re.M)
    if not server:
        raise ValueError("deploy/nginx.conf: no `server enrich-service:8080 ...;` line in its upstream")
    lines = "\n".join(f"{server.group(1)}server {u}{server.group(2)};" for u in upstreams)
    conf = conf[:server.start()] + lines + conf[server.end():]
    conf = conf.replace("listen 8080 default_server;", f"listen {listen} default_server;")
    conf = conf.replace("/tmp/", f"{prefix}/")  # the pid file and the temp folders
    if access_log:
        conf = conf.replace("access_log /dev/stdout json;", f"access_log {access_log} json;")
    return conf


# --------------------------------------------------------------------------------------------------------------------
# processes
# --------------------------------------------------------------------------------------------------------------------
@dataclass
class Proc:
    name: str
    popen: subprocess.Popen
    log: Path

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def stop(self, sig: int = signal.SIGTERM, wait: float = 30) -> None:
        """Signal the process group (celery and uvicorn fork children), then SIGKILL what is left."""
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, sig)
            try:
                self.popen.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                pass
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)  # the group's stragglers, even when the leader has exited
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=10)


@dataclass
class Cluster:
    tmp: Path
    env: dict
    lb_url: str
    access_log: Path
    replicas: dict[str, str] = field(default_factory=dict)  # name -> host:port
    workers: list[str] = field(default_factory=list)
    procs: dict[str, Proc] = field(default_factory=dict)
    killed: dict[str, float] = field(default_factory=dict)  # replica -> time.time() of the kill
    service_env: dict = field(default_factory=dict)
    service_workers: int = 2

    def start(self, name: str, argv: list[str], env: dict | None = None) -> Proc:
        out = self.tmp / "logs" / f"{name}.log"
        f = open(out, "ab")
        popen = subprocess.Popen(argv, env=env or self.env, stdout=f, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL, start_new_session=True, cwd=self.tmp)
        f.close()
        self.procs[name] = proc = Proc(name, popen, out)
        return proc

    def check_alive(self) -> None:
        for name, proc in self.procs.items():
            if name not in self.killed and not proc.alive():
                raise RuntimeError(f"{name} exited ({proc.popen.returncode}):\n{proc.tail()}")

    def airflow(self, *args: str, timeout: float = 300) -> str:
        r = subprocess.run([str(VENV_BIN / "airflow"), *args], env=self.env, capture_output=True, text=True,
                           timeout=timeout, cwd=self.tmp)
        if r.returncode != 0:
            raise RuntimeError(f"airflow {' '.join(args)} failed ({r.returncode}):\n"
                               f"{r.stdout[-3000:]}{r.stderr[-3000:]}")
        return r.stdout

    def metadata(self) -> psycopg.Connection:
        return psycopg.connect(f"{PG}/{METADATA_DB}", autocommit=True)

    def gis(self) -> psycopg.Connection:
        return psycopg.connect(f"{PG}/{GIS_DB}", autocommit=True)

    def start_replica(self, name: str) -> Proc:
        """`enrich-service serve` on the replica's port (again, after a kill: a new replica joining)."""
        self.killed.pop(name, None)
        host, port = self.replicas[name].split(":")
        return self.start(name, [str(VENV_BIN / "enrich-service"), "serve", "--host", host, "--port", port,
                                 "--workers", str(self.service_workers)], env=self.service_env)

    def kill_replica(self, name: str) -> None:
        """A crash, not a shutdown: SIGKILL, no chance to finish in-flight requests."""
        self.killed[name] = time.time()
        self.procs[name].stop(signal.SIGKILL, wait=10)

    def lb_requests(self) -> list[dict]:
        """The load balancer's access log: one JSON object per request (deploy/nginx.conf's log_format json)."""
        if not self.access_log.exists():
            return []
        out = []
        for line in self.access_log.read_text().splitlines():
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
        return out

    def pip_requests(self) -> Iterator[tuple[dict, str]]:
        """(access log record, replica that answered) for each bulk tagging request. nginx's upstream field lists
        every replica tried, 'a, b' when a failed and b answered: the last one answered."""
        names = {addr: name for name, addr in self.replicas.items()}
        for r in self.lb_requests():
            if PIP_REQUEST.match(r.get("uri", "")) and r.get("method") == "POST":
                last = r["upstream"].split(",")[-1].strip()
                yield r, names.get(last, last)

    def pip_requests_by_replica(self) -> collections.Counter:
        return collections.Counter(replica for _, replica in self.pip_requests())


def _wait(what: str, ok, timeout: float, cluster: Cluster | None = None, every: float = 0.5):
    deadline = time.monotonic() + timeout
    while True:
        value = ok()
        if value:
            return value
        if cluster is not None:
            cluster.check_alive()
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout:.0f} s")
        time.sleep(every)


def _http_ok(url: str) -> bool:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def _drop_queue() -> None:
    """The Celery queue and its exchange bindings in Redis (at the start: messages an interrupted run left belong to
    a metadata database that is gone)."""
    import redis

    redis.Redis.from_url(REDIS).delete(QUEUE, f"_kombu.binding.{QUEUE}", f"_kombu.binding_permanent.{QUEUE}")


def _recreate_databases() -> None:
    with psycopg.connect(f"{PG}/postgres", autocommit=True) as conn:
        for db in (METADATA_DB, GIS_DB):
            conn.execute(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
            conn.execute(f"CREATE DATABASE {db}")
    with psycopg.connect(f"{PG}/{GIS_DB}", autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS postgis")


def _drop_databases() -> None:
    with psycopg.connect(f"{PG}/postgres", autocommit=True) as conn:
        for db in (METADATA_DB, GIS_DB):
            conn.execute(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")


DISTRICTS = "council_districts_2021_datasd.geojson"


def _boundary_folder(dest: Path) -> None:
    """The real layer files, linked; the refresh and the refusal below replace one (os.replace), never the original."""
    dest.mkdir()
    for f in (DATA / "boundaries").iterdir():
        (dest / f.name).symlink_to(f)


def write_layer(c: Cluster, name: str, doc: dict) -> None:
    path = c.tmp / "boundaries" / name
    tmp = path.with_name(f".{name}.tmp")
    tmp.write_bytes(json.dumps(doc).encode())
    os.replace(tmp, path)


def _dag_folder(dest: Path, batch_rows: int) -> None:
    """A copy of dags/ with the parking meters spec only, small batches and no schedule."""
    shutil.copytree(ROOT / "dags", dest, ignore=shutil.ignore_patterns("__pycache__"))
    for spec in (dest / "datasets").glob("*.y*ml"):
        if spec.name != SPEC:
            spec.unlink()
    # the boundary refresh runs when the harness triggers it, not on its weekly schedule when unpaused
    factory = dest / "enrich_pipeline" / "factory.py"
    text = factory.read_text()
    if text.count('schedule="@weekly"') != 1:
        raise ValueError("dags/enrich_pipeline/factory.py: the boundary refresh's schedule=\"@weekly\" not found")
    factory.write_text(text.replace('schedule="@weekly"', "schedule=None"))
    path = dest / "datasets" / SPEC
    doc = yaml.safe_load(path.read_text())
    doc.update(batch_rows=batch_rows, schedule=None, reenrich_on_boundary_change=False)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))


def _airflow_env(tmp: Path, api_port: int, lb_url: str, replicas: list[str] = ()) -> dict:
    from cryptography.fernet import Fernet

    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "ENRICH_"))}
    no_proxy = ",".join(filter(None, [env.get("NO_PROXY"), "127.0.0.1", "localhost"]))
    metadata = f"{PG}/{METADATA_DB}".replace("postgresql://", "postgresql+psycopg2://")
    (tmp / "pylib").mkdir()
    # A task instance's hostname is what this returns on the worker that ran it (each worker sets its own name).
    (tmp / "pylib" / "scaleout_worker.py").write_text(
        "import os, socket\n\n\ndef hostname() -> str:\n"
        "    return f\"{os.environ['ENRICH_SCALEOUT_WORKER']}@{socket.gethostname()}\"\n")
    env.update({
        "PATH": f"{VENV_BIN}{os.pathsep}{env.get('PATH', '/usr/bin:/bin')}",
        "PYTHONPATH": str(tmp / "pylib"),
        "NO_PROXY": no_proxy, "no_proxy": no_proxy,
        "AIRFLOW_HOME": str(tmp / "airflow"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(tmp / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
        "AIRFLOW__CORE__FERNET_KEY": Fernet.generate_key().decode(),
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{api_port}/execution/",
        "AIRFLOW__CORE__AUTH_MANAGER":
            "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(tmp / "airflow" / "passwords.json"),
        "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{api_port}",
        "AIRFLOW__API__SECRET_KEY": secrets.token_hex(32),
        "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_hex(32),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": metadata,
        "AIRFLOW__CELERY__BROKER_URL": REDIS,
        "AIRFLOW__CELERY__RESULT_BACKEND": f"db+{PG}/{METADATA_DB}",
        "AIRFLOW__CELERY__WORKER_CONCURRENCY": "2",
        "AIRFLOW__OPERATORS__DEFAULT_QUEUE": QUEUE,
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
        "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "10",
        # the DAG's connections and folders (env/*.env and env/secrets.env.example in compose)
        # the balancer for batches and the reload; each replica itself for the refresh's wait for every replica
        "AIRFLOW_CONN_ENRICH_SERVICE": lb_url.replace("http://", f"http://:{ADMIN_KEY}@") + "?timeout=300"
        + (f"&replicas={urllib.parse.quote(','.join(replicas), safe='')}&converge_timeout_s=120" if replicas
           else ""),
        # the boundary refresh reads the same folder as the replicas (compose: the boundaries volume)
        "ENRICH_BOUNDARY_DIR": str(tmp / "boundaries"),
        "ENRICH_CACHE_DIR": str(tmp / "cache-airflow"),
        "AIRFLOW_CONN_ENRICH_POSTGIS": f"{PG}/{GIS_DB}",
        "ENRICH_DATA_DIR": str(DATA),
        "ENRICH_WORK_DIR": str(tmp / "work"),  # shared by the workers, as the airflow-work volume is in compose
        "ENRICH_PUBLISH_DIR": str(tmp / "publish"),
        "ENRICH_RETRY_DELAY_SECONDS": "2",
        "ENRICH_TASK_RETRIES": "4",
    })
    return env


@contextlib.contextmanager
def cluster(batch_rows: int = 500, workers: int = 2, replicas: int = 2, keep: bool = False,
            service_workers: int = 2) -> Iterator[Cluster]:
    """Everything started and ready (replicas ready, nginx up, Airflow migrated, the DAG parsed and unpaused);
    everything stopped, the temp folder and the two databases removed on exit (unless keep)."""
    tmp = Path(tempfile.mkdtemp(prefix="enrich-scaleout-"))
    tmp.chmod(0o755)  # nginx's workers run as `nobody` when this runs as root: they write its temp folders
    for sub in ("logs", "airflow", "work", "publish", "nginx"):
        (tmp / sub).mkdir()
    lb_port, api_port = free_port(), free_port()
    c = Cluster(tmp=tmp, env={}, lb_url=f"http://127.0.0.1:{lb_port}", access_log=tmp / "nginx" / "access.log")
    c.replicas = {f"replica-{i}": f"127.0.0.1:{free_port()}" for i in range(1, replicas + 1)}
    c.env = _airflow_env(tmp, api_port, c.lb_url, list(c.replicas.values()))
    _boundary_folder(tmp / "boundaries")
    log(f"temp folder {tmp}")
    try:
        _recreate_databases()
        _drop_queue()
        _dag_folder(tmp / "dags", batch_rows)

        # the service replicas: each loads and indexes the real layers
        # (each with `service_workers` workers; the accepted layer set in one folder they share, as a volume would)
        c.service_env = {k: v for k, v in c.env.items() if not k.startswith("AIRFLOW")}
        c.service_env.update(ENRICH_BOUNDARY_DIR=str(tmp / "boundaries"), ENRICH_API_KEYS=ADMIN_KEY,
                             ENRICH_CACHE_DIR=str(tmp / "cache"), NUMBA_CACHE_DIR=str(tmp / "cache" / "numba"),
                             ENRICH_ACCEPTED_DIR=str(tmp / "accepted"), ENRICH_FOLLOW_INTERVAL_S="1",
                             ENRICH_LOG_LEVEL="WARNING")
        c.service_workers = service_workers
        for name in c.replicas:
            c.start_replica(name)

        conf = tmp / "nginx" / "nginx.conf"
        conf.write_text(render_nginx_conf(list(c.replicas.values()), f"127.0.0.1:{lb_port}", tmp / "nginx",
                                          access_log=str(c.access_log)))
        c.start("nginx", [nginx_binary(), "-p", str(tmp / "nginx"), "-c", str(conf), "-g", "daemon off;"])

        log("airflow db migrate")
        c.airflow("db", "migrate", timeout=600)
        # As compose's airflow-init does: enrich_batch runs in this pool, and a task whose pool does not exist is
        # never scheduled (the run waited forever without it).
        c.airflow("pools", "set", "enrich_service", "8", "calls to the enrichment service")
        c.start("api-server", ["airflow", "api-server", "--host", "127.0.0.1", "--port", str(api_port),
                               "--workers", "1"])
        c.start("scheduler", ["airflow", "scheduler"])
        c.start("dag-processor", ["airflow", "dag-processor"])
        for i in range(1, workers + 1):
            name = f"worker-{i}"
            c.workers.append(name)
            c.start(name, ["airflow", "celery", "worker", "--queues", QUEUE, "--concurrency", "2",
                           "--celery-hostname", f"{name}@%h"],
                    env={**c.env, "ENRICH_SCALEOUT_WORKER": name,
                         "AIRFLOW__CORE__HOSTNAME_CALLABLE": "scaleout_worker.hostname",
                         "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port())})

        for name, addr in c.replicas.items():
            _wait(f"{name} ready", lambda a=addr: _http_ok(f"http://{a}/readyz"), 180, c)
        _wait("nginx up", lambda: _http_ok(f"{c.lb_url}/readyz"), 30, c)
        _wait("api-server up", lambda: _http_ok(f"http://127.0.0.1:{api_port}/api/v2/monitor/health"), 180, c)
        _wait("the DAG parsed", lambda: _dag_parsed(c), 300, c, every=2)
        _wait("workers listening", lambda: _workers_ready(c), 180, c, every=2)
        _wait("the refresh DAG parsed", lambda: _dag_parsed(c, REFRESH_DAG_ID), 300, c, every=2)
        c.airflow("dags", "unpause", DAG_ID)
        c.airflow("dags", "unpause", REFRESH_DAG_ID)
        yield c
    finally:
        for name in reversed(list(c.procs)):
            c.procs[name].stop()
        if keep:
            log(f"kept {tmp} and the databases {METADATA_DB}, {GIS_DB}")
        else:
            with contextlib.suppress(psycopg.Error):
                _drop_databases()
            with contextlib.suppress(Exception):
                _drop_queue()
            shutil.rmtree(tmp, ignore_errors=True)


def _dag_parsed(c: Cluster, dag_id: str = DAG_ID) -> bool:
    try:
        with c.metadata() as conn:
            return bool(conn.execute("SELECT 1 FROM serialized_dag WHERE dag_id = %s", [dag_id]).fetchone())
    except psycopg.Error:
        return False


def _workers_ready(c: Cluster) -> bool:
    """Each worker logged Celery's `ready.` line (it consumes from the queue)."""
    return all(re.search(r"\bready\.", c.procs[w].log.read_text(errors="replace")) for w in c.workers)


# --------------------------------------------------------------------------------------------------------------------
# the run
# --------------------------------------------------------------------------------------------------------------------
def task_instances(c: Cluster, run_id: str, dag_id: str = DAG_ID) -> list[dict]:
    with c.metadata() as conn:
        cur = conn.execute("SELECT task_id, map_index, state, hostname, try_number, start_date, end_date "
                           "FROM task_instance WHERE dag_id = %s AND run_id = %s ORDER BY task_id, map_index",
                           [dag_id, run_id])
        cols = [d.name for d in cur.description]
        return [dict(zip(cols, row)) for row in cur.fetchall()]


def run_state(c: Cluster, run_id: str, dag_id: str = DAG_ID) -> str | None:
    with c.metadata() as conn:
        row = conn.execute("SELECT state FROM dag_run WHERE dag_id = %s AND run_id = %s", [dag_id, run_id]).fetchone()
    return row[0] if row else None


def run_with_a_replica_killed(c: Cluster, victim: str = "replica-1", kill_after: int = 2,
                              timeout: float = 900) -> dict:
    """Trigger the DAG; SIGKILL `victim` once it has answered `kill_after` bulk requests (while batches remain);
    wait for the run to finish. Returns what happened."""
    run_id = f"scaleout__{time.strftime('%Y%m%dT%H%M%S')}"
    started = time.monotonic()
    c.airflow("dags", "trigger", DAG_ID, "--run-id", run_id)
    log(f"triggered {run_id}")
    batches_left_at_kill = None
    state = None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = run_state(c, run_id)
        if state in ("success", "failed"):
            break
        if victim not in c.killed and c.pip_requests_by_replica()[victim] >= kill_after:
            tis = [t for t in task_instances(c, run_id) if t["task_id"] == "enrich_batch"]
            batches_left_at_kill = sum(t["state"] != "success" for t in tis)
            c.kill_replica(victim)
            log(f"killed {victim} (SIGKILL); {batches_left_at_kill} of {len(tis)} batches not done yet")
        c.check_alive()
        time.sleep(0.5)
    else:
        raise TimeoutError(f"{run_id} did not finish in {timeout:.0f} s")
    return {"run_id": run_id, "state": state, "run_seconds": round(time.monotonic() - started, 1),
            "victim": victim, "killed_at": c.killed.get(victim), "batches_left_at_kill": batches_left_at_kill,
            "task_instances": task_instances(c, run_id)}


# --------------------------------------------------------------------------------------------------------------------
# one boundary version everywhere: the refresh under load, and a worker killed after a refused file
# --------------------------------------------------------------------------------------------------------------------
class Load:
    """Lookups (GET /v1/pip) and bulk batches (POST /v1/pip, 500 points) through the balancer from a few threads
    while something happens; every answer recorded as (start, end, kind, status, X-Enrich-Layers-Sha256)."""

    def __init__(self, url: str, threads: int = 3):
        self.url, self.n = url, threads
        self.answers: list[tuple[float, float, str, int, str | None]] = []
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        rng = random.Random(15)
        self._bulk = json.dumps({"points": [{"id": i, "lon": rng.uniform(-117.25, -117.0),
                                             "lat": rng.uniform(32.65, 32.95)} for i in range(500)]}).encode()

    def _run(self, k: int) -> None:
        import httpx

        with httpx.Client(base_url=self.url, timeout=60) as client:
            i = k
            while not self._stop.is_set():
                t0, bulk = time.time(), i % 3 == 0
                try:
                    r = client.post("/v1/pip", content=self._bulk, headers={"content-type": "application/json"}) \
                        if bulk else client.get("/v1/pip", params={"lon": -117.1627, "lat": 32.7167})
                    status, sha = r.status_code, r.headers.get("x-enrich-layers-sha256")
                except httpx.HTTPError:
                    status, sha = 0, None
                self.answers.append((t0, time.time(), "bulk" if bulk else "lookup", status, sha))
                i += 1
                time.sleep(0.02)

    def __enter__(self) -> Load:
        self._threads = [threading.Thread(target=self._run, args=(k,), daemon=True) for k in range(self.n)]
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=90)

    def failed(self) -> list[tuple]:
        return [a for a in self.answers if a[3] != 200]


def readyz_probes(addr: str, probes: int = 6) -> list[dict]:
    """GET /readyz on `probes` new connections to one replica (each may land on another of its workers)."""
    out = []
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    for _ in range(probes):
        try:
            with opener.open(f"http://{addr}/readyz", timeout=10) as r:
                out.append(json.loads(r.read()))
        except (OSError, ValueError) as exc:
            out.append({"status": f"unreachable: {exc}"})
    return out


def worker_pids(addr: str, n: int, timeout: float = 120) -> set[int]:
    seen: set[int] = set()
    deadline = time.monotonic() + timeout
    while len(seen) < n:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{addr}: saw workers {sorted(seen)}, expected {n}")
        seen |= {p["worker_pid"] for p in readyz_probes(addr, 4) if "worker_pid" in p}
    return seen


def layer_set_of_folder(folder: Path) -> str:
    """The layer set (sha256) the files in `folder` make, as the service names it (X-Enrich-Layers-Sha256)."""
    sys.path.insert(0, str(ROOT))
    from enrich_service.layers.accepted import set_sha256
    from enrich_service.layers.manifest import load_manifest
    from enrich_service.layers.sources import sha256_of

    names = {v.source.file for spec in load_manifest(ROOT / "boundaries" / "manifest.yaml").layers.values()
             for v in spec.versions}
    return set_sha256({name: sha256_of(folder / name) for name in names})


def refresh_under_load(c: Cluster, timeout: float = 600) -> dict:
    """A new districts file (the same lines, re-exported: a new sha256), then the boundary refresh DAG, while
    lookups and bulk batches flow through the balancer. Measures when each replica (asked itself, on several
    connections) serves the new set, counted from the moment accepted.json named it."""
    old = layer_set_of_folder(c.tmp / "boundaries")
    doc = json.loads((DATA / "boundaries" / DISTRICTS).read_bytes())
    doc["name"] = "council_districts_reexported"
    write_layer(c, DISTRICTS, doc)
    new = layer_set_of_folder(c.tmp / "boundaries")
    run_id = f"refresh__{time.strftime('%Y%m%dT%H%M%S')}"
    serving: dict[str, float] = {}
    with Load(c.lb_url) as load:
        time.sleep(1)
        c.airflow("dags", "trigger", REFRESH_DAG_ID, "--run-id", run_id)
        log(f"triggered {run_id}: layer set {old[:12]} -> {new[:12]}")
        deadline = time.monotonic() + timeout
        state = None
        while time.monotonic() < deadline:
            for name, addr in c.replicas.items():
                if name not in serving and {p.get("layers_sha256") for p in readyz_probes(addr, 4)} == {new}:
                    serving[name] = time.time()
            state = run_state(c, run_id, REFRESH_DAG_ID)
            if state in ("success", "failed") and len(serving) == len(c.replicas):
                break
            if state == "failed":
                break
            c.check_alive()
            time.sleep(0.25)
        time.sleep(1)  # answers after the switch, too
    accepted = json.loads((c.tmp / "accepted" / "accepted.json").read_bytes())
    accepted_at = (c.tmp / "accepted" / "accepted.json").stat().st_mtime
    return {"run_id": run_id, "state": state, "old": old, "new": new, "accepted": accepted["sha256"],
            "serving_after_accept_s": {n: round(t - accepted_at, 1) for n, t in sorted(serving.items())},
            "answers": len(load.answers), "failed": load.failed(),
            "versions": dict(collections.Counter(a[4] for a in load.answers)),
            "after_all_serve": collections.Counter(a[4] for a in load.answers
                                                   if serving and a[0] > max(serving.values())),
            "task_instances": task_instances(c, run_id, REFRESH_DAG_ID)}


def refuse_then_kill_a_worker(c: Cluster, replica: str = "replica-2") -> dict:
    """A wrong-but-parseable districts file (every feature "3") refused by the replica's admin reload, then kill -9
    of one of its workers while lookups and batches flow: what the clients saw, what nginx saw from the replicas,
    and what the replacement serves."""
    addr = c.replicas[replica]
    accepted = json.loads((c.tmp / "accepted" / "accepted.json").read_bytes())["sha256"]
    doc = json.loads((DATA / "boundaries" / DISTRICTS).read_bytes())
    for f in doc["features"]:
        f["properties"]["district"] = 3
    write_layer(c, DISTRICTS, doc)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    req = urllib.request.Request(f"http://{addr}/v1/admin/reload", method="POST", headers={"X-API-Key": ADMIN_KEY})
    try:
        with opener.open(req, timeout=120) as r:
            reload = {"status": r.status, **json.loads(r.read())}
    except urllib.error.HTTPError as exc:
        reload = {"status": exc.code, **json.loads(exc.read())}
    pids = worker_pids(addr, c.service_workers)
    with Load(c.lb_url) as load:
        time.sleep(1)
        victim = min(pids)
        killed_at = time.time()
        os.kill(victim, signal.SIGKILL)
        log(f"{replica}: killed worker {victim} (SIGKILL) after the refused reload")
        deadline = time.monotonic() + 180
        replacement = None
        while replacement is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{replica}: worker {victim} was not replaced")
            for p in readyz_probes(addr, 4):
                if p.get("worker_pid") not in pids | {None}:
                    replacement = p
        back_at = time.time()
        time.sleep(1.5)
    since = [r for r in c.lb_requests() if float(r["msec"]) >= killed_at]
    return {"reload": reload, "victim": victim, "replacement": replacement, "back_after_s": round(back_at - killed_at, 1),
            "accepted": accepted, "answers": len(load.answers), "failed": load.failed(),
            "versions": dict(collections.Counter(a[4] for a in load.answers)),
            # what the replicas answered nginx: a 503 would be a worker taking connections before it is ready
            "upstream_503": [(r["upstream"], r["upstream_status"]) for r in since if "503" in r["upstream_status"]],
            "upstream_retried": sum("," in r["upstream_status"] for r in since),
            "replica_view": readyz_probes(addr, 8)}


def rejoin(c: Cluster, name: str, timeout: float = 180) -> list[dict]:
    """Start a killed replica again: a new replica joining loads the last accepted set. Returns its /readyz."""
    c.start_replica(name)
    _wait(f"{name} ready again", lambda: _http_ok(f"http://{c.replicas[name]}/readyz"), timeout, c)
    return readyz_probes(c.replicas[name], 4)


def source_frame() -> tuple[pandas.DataFrame, list[str]]:  # noqa: F821
    """The parking meters CSV as the spec reads it, and the spec's id columns."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    spec = yaml.safe_load((ROOT / "dags" / "datasets" / SPEC).read_text())
    path = Path(spec["source"]["path"].replace("${ENRICH_DATA_DIR}", str(DATA)))
    types = {k: pa.type_for_alias(v) for k, v in (spec["source"].get("column_types") or {}).items()}
    table = pacsv.read_csv(path, convert_options=pacsv.ConvertOptions(column_types=types))
    return table.to_pandas(), list(spec["id"])


def published(c: Cluster) -> dict:
    """The published table against the source: row count, each source_row once, the ids as in the source."""
    source, id_cols = source_frame()
    ids = ", ".join(id_cols)
    with c.gis() as conn:
        rows, distinct_rows, lo, hi = conn.execute(
            f"SELECT count(*), count(DISTINCT source_row), min(source_row), max(source_row) FROM {TABLE}").fetchone()
        dup_ids = conn.execute(
            f"SELECT count(*) FROM (SELECT {ids} FROM {TABLE} GROUP BY {ids} HAVING count(*) > 1) d").fetchone()[0]
        districts = conn.execute(f"SELECT count(council_district) FROM {TABLE}").fetchone()[0]
    repeated = source[source.duplicated(id_cols, keep=False)]
    return {"source_rows": len(source), "published_rows": rows, "distinct_source_row": distinct_rows,
            "source_row_range": [lo, hi], "duplicate_ids_published": dup_ids,
            "duplicate_ids_in_source": int(repeated.groupby(id_cols).ngroups), "rows_with_district": districts}


def summarize(c: Cluster, run: dict) -> dict:
    enrich = [t for t in run["task_instances"] if t["task_id"] == "enrich_batch"]
    by_worker = collections.Counter(t["hostname"].split("@")[0] for t in enrich if t["state"] == "success")
    all_by_worker = collections.Counter(t["hostname"].split("@")[0] for t in run["task_instances"] if t["hostname"])
    killed_at = run["killed_at"]
    after_kill = collections.Counter(replica for r, replica in c.pip_requests()
                                     if killed_at is not None and float(r["msec"]) > killed_at)
    retried = sum("," in r["upstream"] for r, _ in c.pip_requests())
    return {
        "batches": len(enrich),
        "enrich_batches_by_worker": dict(sorted(by_worker.items())),
        "tasks_by_worker": dict(sorted(all_by_worker.items())),
        "task_tries_over_1": sum(1 for t in run["task_instances"] if (t["try_number"] or 0) > 1),
        "pip_requests_by_replica": dict(sorted(c.pip_requests_by_replica().items())),
        "pip_requests_after_kill_by_replica": dict(sorted(after_kill.items())),
        "pip_requests_retried_by_nginx": retried,
        "pip_requests_counted_by_replica_metrics": replica_metrics(c),
    }


def replica_metrics(c: Cluster) -> dict[str, int]:
    """POST /v1/pip requests each live replica counted itself (its /metrics), to set beside nginx's log. Each worker
    keeps its own counters: /readyz then /metrics on one kept-alive connection (so one worker), on new connections
    until every worker was heard, summed."""
    import httpx

    out = {}
    for name, addr in c.replicas.items():
        if name in c.killed:
            continue
        per_worker: dict[int, int] = {}
        deadline = time.monotonic() + 60
        while len(per_worker) < c.service_workers and time.monotonic() < deadline:
            with httpx.Client(base_url=f"http://{addr}", timeout=10, limits=httpx.Limits(max_connections=1)) as h:
                pid = h.get("/readyz").json()["worker_pid"]
                text = h.get("/metrics").text
            per_worker[pid] = int(sum(float(m.group(1)) for m in re.finditer(
                r'^enrich_requests_total\{(?=[^}]*method="POST")(?=[^}]*route="/v1/pip")[^}]*\}\s+(\S+)$', text,
                re.M)))
        out[name] = sum(per_worker.values())
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch-rows", type=int, default=500)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--replicas", type=int, default=2)
    p.add_argument("--kill-after", type=int, default=2, help="bulk requests replica-1 answers before its SIGKILL")
    p.add_argument("--keep", action="store_true", help="keep the temp folder and databases for a look")
    p.add_argument("--json", type=Path, help="write the report here too")
    args = p.parse_args(argv)
    # a SIGTERM (a CI timeout, kill PID) cleans up like Ctrl-C does: the finally of cluster() stops everything
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    wall = time.monotonic()
    with cluster(args.batch_rows, args.workers, args.replicas, args.keep) as c:
        setup_s = round(time.monotonic() - wall, 1)
        run = run_with_a_replica_killed(c, kill_after=args.kill_after)
        report = {"setup_seconds": setup_s, "run_seconds": run["run_seconds"], "state": run["state"],
                  "batch_rows": args.batch_rows, "batches_left_at_kill": run["batches_left_at_kill"],
                  **summarize(c, run), "published": published(c) if run["state"] == "success" else None}
        rejoin(c, "replica-1")
        refresh = refresh_under_load(c)
        report["refresh"] = {k: v for k, v in refresh.items() if k != "task_instances"}
        report["refuse_then_kill"] = refuse_then_kill_a_worker(c)
    report["wall_seconds"] = round(time.monotonic() - wall, 1)
    pub = report["published"] or {}
    ok = (report["state"] == "success" and run["killed_at"] is not None and (report["batches_left_at_kill"] or 0) > 0
          and pub.get("published_rows") == pub.get("source_rows") == pub.get("distinct_source_row")
          and pub.get("duplicate_ids_published") == pub.get("duplicate_ids_in_source")
          and len(report["enrich_batches_by_worker"]) == args.workers
          and len(report["pip_requests_by_replica"]) == args.replicas
          and refresh["state"] == "success" and not refresh["failed"]
          and set(refresh["versions"]) <= {refresh["old"], refresh["new"]}
          and len(refresh["serving_after_accept_s"]) == args.replicas
          and report["refuse_then_kill"]["reload"]["status"] == 409 and not report["refuse_then_kill"]["failed"]
          and not report["refuse_then_kill"]["upstream_503"])
    report["ok"] = ok
    text = json.dumps(report, indent=2, default=str)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
