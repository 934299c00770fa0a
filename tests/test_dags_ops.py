"""Operations of the DAGs, in real DAG runs: failure e-mails to a dataset's owners through the documented SMTP
settings (real local SMTP servers: plain on 1025 as mailpit, STARTTLS with a login on 587 as a relay), and the
boundary refresh (one PostGIS transaction; the asset announced only when a layer file changed).

Runs after tests/test_dags.py in the same process and reuses its Airflow when that is already imported (Airflow
reads AIRFLOW_HOME once); alone, it makes its own throwaway Airflow the same way.
"""

from __future__ import annotations

import datetime as dt
import email
import os
import re
import ssl
import subprocess
import sys
from pathlib import Path
from urllib.parse import quote

import psycopg
import pytest

from .conftest import DATA, PG_DSN, REPO, _free_port

DAGS = REPO / "dags"
if str(DAGS) not in sys.path:
    sys.path.append(str(DAGS))
ENV = REPO / "env"
ADMIN_KEY = "test-admin-key"


FAILING_SPEC = """
name: ops_missing_source
description: Street trees (a source that is not there)
source: {kind: csv, path: "${ENRICH_DATA_DIR}/points/no_such_file.csv"}
id: tree_id
coordinates: {lon: lng, lat: lat}
owners: [trees@sandiego.gov, gis-oncall@sandiego.gov]
outputs: {portal: {folder: "${ENRICH_PUBLISH_DIR}/ops_missing_source"}}
"""


@pytest.fixture(scope="module")
def airflow_ops(tmp_path_factory, live_service, pg_dsn):
    root = tmp_path_factory.mktemp("airflow_ops")
    (root / "specs").mkdir()
    (root / "specs" / "ops_missing_source.yaml").write_text(FAILING_SPEC)
    env = {
        "ENRICH_SPECS_DIRS": str(root / "specs"),  # dag.test() finds the DAG it runs in the DAG folder's bag
        "AIRFLOW_CONN_ENRICH_SERVICE": live_service.replace("http://", f"http://:{ADMIN_KEY}@"),
        "AIRFLOW_CONN_ENRICH_POSTGIS": pg_dsn,
        "ENRICH_DATA_DIR": str(DATA),
        "ENRICH_BOUNDARY_DIR": str(DATA / "boundaries"),
        "ENRICH_PUBLISH_DIR": str(root / "publish"),
        "ENRICH_WORK_DIR": str(root / "work"),
        "ENRICH_TASK_RETRIES": "0",  # the DAGs built here fail on their first try
    }
    if "airflow" not in sys.modules:  # alone: a throwaway Airflow like tests/test_dags.py's
        env.update({"AIRFLOW_HOME": str(root / "home"), "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                    "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS), "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING"})
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    if "AIRFLOW_HOME" in env:
        Path(env["AIRFLOW_HOME"]).mkdir()
        subprocess.run([str(REPO / ".venv" / "bin" / "airflow"), "db", "migrate"], check=True, env=os.environ.copy(),
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    yield root
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def task_states(dr) -> dict[str, str]:
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        return {ti.task_id: str(ti.state) for ti in session.scalars(select(TaskInstance).where(
            TaskInstance.dag_id == dr.dag_id, TaskInstance.run_id == dr.run_id))}


def pg(sql: str, *args):
    with psycopg.connect(PG_DSN, autocommit=True) as conn:
        cur = conn.execute(sql, args)
        return cur.fetchall() if cur.description else []


# ---- SMTP: the documented settings, against real SMTP servers --------------------------------------------------

class Inbox:
    def __init__(self):
        self.messages = []
        self.logins = []

    async def handle_DATA(self, server, session, envelope):
        self.messages.append(envelope)
        return "250 OK"


def _self_signed(tmp: Path) -> tuple[Path, Path]:
    """A certificate for `localhost`: the relay's STARTTLS is verified against it (SSL_CERT_FILE)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    crt, pem = tmp / "relay.crt", tmp / "relay.key"
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pem.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))
    return crt, pem


def smtp_server(inbox: Inbox, tmp: Path | None = None, user: str | None = None, password: str | None = None):
    """aiosmtpd on loopback: plain (mailpit), or STARTTLS required with a login (a relay on 587)."""
    from aiosmtpd.controller import Controller
    from aiosmtpd.smtp import AuthResult

    port = _free_port()
    if tmp is None:
        ctl = Controller(inbox, hostname="127.0.0.1", port=port)
    else:
        crt, key = _self_signed(tmp)
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(crt, key)

        def check(server, session, envelope, mechanism, auth_data):
            ok = auth_data.login.decode() == user and auth_data.password.decode() == password
            inbox.logins.append(auth_data.login.decode())
            return AuthResult(success=ok)

        ctl = Controller(inbox, hostname="127.0.0.1", port=port, tls_context=tls, require_starttls=True,
                         authenticator=check, auth_require_tls=True, server_hostname="localhost")
    ctl.start()
    return ctl, port


def documented_smtp_uris(tmp_path) -> dict[str, str]:
    """The SMTP connections as the project documents them: dev from `scripts/secrets.sh init dev` (mailpit on
    1025), stage/prod from env/secrets.env.example (the relay on 587) with its placeholders filled in."""
    env_dir = tmp_path / "env"
    env_dir.mkdir()
    for name in ("secrets.env.example", "dev.env", "secrets.roles"):
        (env_dir / name).write_text((ENV / name).read_text())
    r = subprocess.run(["bash", str(REPO / "scripts" / "secrets.sh"), "init", "dev"], capture_output=True, text=True,
                       env={**os.environ, "ENRICH_ENV_DIR": str(env_dir),
                            "ENRICH_AGE_KEY_FILE": str(tmp_path / "dev.key")}, timeout=60)
    assert r.returncode == 0, r.stderr
    dev = re.search(r"^AIRFLOW_CONN_SMTP_DEFAULT=(.*)$", (env_dir / "dev.secrets.env").read_text(), re.M).group(1)
    prod = re.search(r"^AIRFLOW_CONN_SMTP_DEFAULT=(.*)$", (ENV / "secrets.env.example").read_text(), re.M).group(1)
    prod = (prod.replace("<smtp-user>", "enrich-relay").replace("<smtp-password>", quote("p@ss:w/rd", safe=""))
            .replace("<smtp-relay>", "relay.sandiego.gov").replace("<from-address>", quote("enrich@sandiego.gov")))
    assert "<" not in prod, prod
    return {"dev": dev, "prod": prod}


def _pointed_at(uri: str, host: str, port: int) -> str:
    return re.sub(r"@?[\w.-]+:(1025|587)(?=[?/]|$)", lambda m: ("@" if m.group(0).startswith("@") else "") +
                  f"{host}:{port}", uri, count=1)


def test_the_documented_smtp_settings_deliver(airflow_ops, tmp_path, monkeypatch):
    """dev: plain SMTP on 1025 (mailpit has no TLS); prod: STARTTLS on 587 with a login. Both name a sender. The
    settings documented before (implicit SSL on 1025 and 587, no from_email) fail against the same servers."""
    from airflow.providers.smtp.hooks.smtp import SmtpHook

    uris = documented_smtp_uris(tmp_path)
    assert ":1025" in uris["dev"] and ":587" in uris["prod"]

    def send(uri):
        monkeypatch.setenv("AIRFLOW_CONN_ALERT_TEST", uri)
        with SmtpHook(smtp_conn_id="alert_test") as hook:
            hook.send_email_smtp(to=["owner@sandiego.gov"], subject="test", html_content="<p>hello</p>")

    inbox = Inbox()
    ctl, port = smtp_server(inbox)
    try:
        send(_pointed_at(uris["dev"], "127.0.0.1", port))
        with pytest.raises(ssl.SSLError, match="WRONG_VERSION_NUMBER"):  # as documented before: implicit SSL, plain server
            send(f"smtp://127.0.0.1:{port}?timeout=5&retry_limit=0")
    finally:
        ctl.stop()
    assert len(inbox.messages) == 1 and inbox.messages[0].mail_from == "enrich-dev@localhost"

    relay = Inbox()
    ctl, port = smtp_server(relay, tmp_path, user="enrich-relay", password="p@ss:w/rd")
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "relay.crt"))  # trust the test relay's certificate
    try:
        send(_pointed_at(uris["prod"], "localhost", port))
        with pytest.raises(ssl.SSLError, match="WRONG_VERSION_NUMBER"):  # implicit SSL on 587, as documented before
            send(f"smtp://enrich-relay:p%40ss%3Aw%2Frd@localhost:{port}?timeout=5&retry_limit=0"
                 f"&from_email=enrich%40sandiego.gov")
    finally:
        ctl.stop()
    assert relay.logins[:1] == ["enrich-relay"]
    assert len(relay.messages) == 1 and relay.messages[0].mail_from == "enrich@sandiego.gov"
    assert relay.messages[0].rcpt_tos == ["owner@sandiego.gov"]


# ---- failure e-mails --------------------------------------------------------------------------------------------



def test_a_failed_run_emails_the_datasets_owners(airflow_ops, tmp_path, monkeypatch):
    """A real DAG run that fails (its source file is missing): the owners named in the spec get one e-mail through
    the documented dev SMTP settings, naming the dataset, the task and the error."""
    from enrich_pipeline.factory import build_dataset_dag
    from enrich_pipeline.spec import load_spec

    dag = build_dataset_dag(load_spec(airflow_ops / "specs" / "ops_missing_source.yaml"))
    inbox = Inbox()
    ctl, port = smtp_server(inbox)
    dev = documented_smtp_uris(tmp_path)["dev"]
    monkeypatch.setenv("AIRFLOW_CONN_SMTP_DEFAULT", _pointed_at(dev, "127.0.0.1", port))
    try:
        dr = dag.test()
    finally:
        ctl.stop()
    assert str(dr.state) == "failed"
    assert task_states(dr)["extract"] == "failed"
    assert len(inbox.messages) == 1, [m.rcpt_tos for m in inbox.messages]
    envelope = inbox.messages[0]
    assert envelope.rcpt_tos == ["trees@sandiego.gov", "gis-oncall@sandiego.gov"]
    assert envelope.mail_from == "enrich-dev@localhost"
    msg = email.message_from_bytes(envelope.content)
    assert msg["Subject"].startswith("[enrich] Street trees (a source that is not there): enrich_ops_missing_source "
                                     "failed at extract")
    body = next(p for p in msg.walk() if p.get_content_type() == "text/html").get_payload(decode=True).decode()
    assert "no_such_file.csv" in body and "extract" in body


def test_a_spec_without_owners_sends_nothing():
    from enrich_pipeline.alerts import failure_callbacks
    from enrich_pipeline.spec import find_spec

    assert failure_callbacks(find_spec("parking_meters"))["on_failure_callback"].to == ["open-data@sandiego.gov"]
    from dataclasses import replace

    assert failure_callbacks(replace(find_spec("parking_meters"), owners=())) == {}


# ---- the boundary refresh ---------------------------------------------------------------------------------------

def boundary_events(run_id: str) -> list:
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        return session.execute(select(AssetEvent.id, AssetEvent.extra).join(
            AssetModel, AssetEvent.asset_id == AssetModel.id).where(
            AssetModel.name == "enrich://boundaries", AssetEvent.source_run_id == run_id)).all()


def test_boundary_refresh_announces_only_a_change(airflow_ops):
    """Two refreshes of the same files: the first announces (or an earlier one already did), the second reloads
    PostGIS and the service but emits no asset event, so no dataset is re-enriched or re-emailed. When the last
    announcement held another sha256 for a layer, the next refresh announces again, naming that layer."""
    from airflow.models.asset import AssetEvent
    from airflow.utils.session import create_session
    from sqlalchemy import select

    from enrich_pipeline.factory import build_boundary_refresh_dag

    def last_announcement(session):
        return session.scalars(select(AssetEvent).where(AssetEvent.source_dag_id == "enrich_boundary_refresh")
                               .order_by(AssetEvent.timestamp.desc()).limit(1)).one_or_none()

    dag = build_boundary_refresh_dag()
    with create_session() as session:
        announced = last_announcement(session) is not None
    if not announced:  # alone (tests/test_dags.py's refresh has not run): the first refresh announces
        first = dag.test()
        assert str(first.state) == "success" and len(boundary_events(first.run_id)) == 1, task_states(first)
    second = dag.test()
    states = task_states(second)
    assert str(second.state) == "success", states
    assert states["load_postgis"] == "success" and states["reload_service"] == "success"
    assert states["announce"] == "skipped" and boundary_events(second.run_id) == []

    # The last announcement said another file for zip (as after a real change upstream): announce, naming it.
    with create_session() as session:
        last = last_announcement(session)
        extra = dict(last.extra)
        extra["sha256"] = {**extra["sha256"], "zip": {"2010": "0" * 64}}
        last.extra = extra
    third = dag.test()
    events = boundary_events(third.run_id)
    assert str(third.state) == "success" and len(events) == 1, task_states(third)
    assert events[0].extra["changed"] == ["zip"]
    assert events[0].extra["sha256"]["zip"]["2010"] != "0" * 64


def test_boundary_load_is_one_transaction(airflow_ops, boundary_tables_ops):
    """A failure half-way through the load (here: the catalog refuses the zip row, after the council district and
    neighborhood tables were already swapped) leaves every boundary table and catalog row as it was."""
    from enrich_pipeline.boundaries import fetch, load_into_postgis

    def state():
        return pg("""SELECT table_name, loaded_at, to_regclass('public.' || table_name)::oid
                     FROM boundary_layers ORDER BY 1""")

    before = state()
    pg("ALTER TABLE boundary_layers ADD CONSTRAINT fault_injected CHECK (layer <> 'zip') NOT VALID")
    try:
        with psycopg.connect(PG_DSN, autocommit=True) as conn, pytest.raises(psycopg.errors.CheckViolation):
            load_into_postgis(conn, fetch())
    finally:
        pg("ALTER TABLE boundary_layers DROP CONSTRAINT fault_injected")
    assert state() == before
    assert not pg("SELECT relname FROM pg_class WHERE relname LIKE 'boundary_%%__staging'")


@pytest.fixture(scope="module")
def boundary_tables_ops(store, pg_dsn):
    """The boundary tables in PostGIS (already there when the refresh test ran first)."""
    from enrich_service.postgis import load_layers

    if not pg("SELECT to_regclass('public.boundary_layers') IS NOT NULL")[0][0]:
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            load_layers(conn, store)
    return pg_dsn
