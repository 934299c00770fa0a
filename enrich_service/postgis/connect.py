"""PostGIS connections that cannot hang a publish, and the messages for what a publish meets in production.

- `connect` opens a connection with TCP keepalives, `tcp_user_timeout`, `statement_timeout`, `lock_timeout` and
  `idle_in_transaction_session_timeout`, so neither a dead peer nor a reader's lock holds a publish for hours.
- `deadline` bounds a blocking step on the client side too: through a half-open connection (something still
  acknowledges the packets, nothing answers) a COPY would block forever, since neither keepalives nor the
  server's statement_timeout reach a client that waits to send.
- `set_local_timeouts` tightens the limits for one transaction (the swap: short lock waits).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
from collections.abc import Iterator

import psycopg
from psycopg import errors as pgerrors
from psycopg import sql

log = logging.getLogger(__name__)

# libpq TCP settings for every publishing connection: a silent peer is noticed in ~1 minute, not ~2 hours.
KEEPALIVES = {"keepalives": 1, "keepalives_idle": 30, "keepalives_interval": 10, "keepalives_count": 3,
              "tcp_user_timeout": 60_000}


class PublishTimeout(RuntimeError):
    """A step of a publish got no answer in time (a dead or half-open connection, a held lock)."""


def connect(conninfo: str = "", *, statement_timeout_s: float = 900, lock_timeout_s: float = 10,
            connect_timeout_s: float = 10, application_name: str = "enrich-publish", **kwargs) -> psycopg.Connection:
    """An autocommit psycopg connection with keepalives and server-side time limits (transactions are explicit)."""
    # The server's side of the keepalives too: its backend notices a vanished client in ~1 minute.
    options = (f"-c statement_timeout={int(statement_timeout_s * 1000)} -c lock_timeout={int(lock_timeout_s * 1000)}"
               f" -c idle_in_transaction_session_timeout={int(max(statement_timeout_s, 60) * 1000)}"
               f" -c tcp_keepalives_idle=30 -c tcp_keepalives_interval=10 -c tcp_keepalives_count=3")
    params = {**KEEPALIVES, "connect_timeout": max(1, int(connect_timeout_s)), "application_name": application_name,
              "options": options, **kwargs}
    return psycopg.connect(conninfo, autocommit=True, **params)


@contextlib.contextmanager
def deadline(conn: psycopg.Connection, seconds: float, what: str) -> Iterator[None]:
    """Raise PublishTimeout if the block has not finished after `seconds`: the connection's socket is shut down
    (the blocked call returns at once with an error) and the connection is unusable afterwards. Its backend is
    then terminated through a new connection: a backend waiting for COPY data ignores statement_timeout and would
    keep its transaction (and locks) until the server's keepalives give up."""
    fired = threading.Event()
    target = backend_of(conn)

    def fire():
        fired.set()
        try:
            fd = conn.pgconn.socket
            with socket.socket(fileno=os.dup(fd)) as s:
                s.shutdown(socket.SHUT_RDWR)
        except Exception:  # already closed
            pass

    timer = threading.Timer(seconds, fire)
    timer.daemon = True
    timer.start()
    try:
        yield
    except Exception as exc:
        if fired.is_set():
            terminate(target)
            raise PublishTimeout(f"{what}: no answer from PostGIS within {seconds:g} s (a dead or half-open "
                                 f"connection); nothing was published by this step") from exc
        raise
    finally:
        timer.cancel()
    if fired.is_set():
        terminate(target)
        raise PublishTimeout(f"{what}: no answer from PostGIS within {seconds:g} s; nothing was published by this step")


def backend_of(conn: psycopg.Connection) -> dict:
    """How to reach `conn`'s backend from a new connection (read while `conn` works: its info goes with it)."""
    info = conn.info
    return {"host": info.host, "port": info.port, "user": info.user, "password": info.password,
            "dbname": info.dbname, "pid": info.backend_pid}


def terminate(target: dict, wait_s: float = 5) -> None:
    """Best effort, bounded: pg_terminate_backend(pid) from a new connection (the same role may end its own), so
    the transaction of a connection this side gave up on releases its locks now, not when keepalives notice."""
    target = dict(target)
    pid = target.pop("pid")

    def run():
        try:
            with psycopg.connect(**{k: v for k, v in target.items() if v is not None}, autocommit=True,
                                 connect_timeout=3, options="-c statement_timeout=3000") as c:
                c.execute("SELECT pg_terminate_backend(%s)", (pid,))
                log.warning("terminated PostGIS backend %s after a client-side timeout", pid)
        except Exception as exc:  # unreachable too: the server's keepalives end it
            log.warning("could not terminate PostGIS backend %s: %s", pid, exc)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(wait_s)


def explain(exc: BaseException, what: str) -> str | None:
    """A message naming the cause for the errors a publish meets in production (None for anything else)."""
    if isinstance(exc, pgerrors.LockNotAvailable):
        return (f"{what}: waited lock_timeout for a lock that another session holds (a long reader transaction or "
                f"a running DDL); the previous publication is unchanged. Postgres said: {exc}")
    if isinstance(exc, pgerrors.QueryCanceled):
        return f"{what}: cancelled by statement_timeout; the previous publication is unchanged. Postgres said: {exc}"
    if isinstance(exc, pgerrors.DependentObjectsStillExist):
        return f"{what}: other objects depend on it (views); nothing was dropped. Postgres said: {exc}"
    return None


def set_local_timeouts(conn: psycopg.Connection, lock_timeout_s: float, statement_timeout_s: float | None = None,
                       ) -> None:
    """Within the caller's transaction: SET LOCAL lock_timeout (and statement_timeout)."""
    conn.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(f"{int(lock_timeout_s * 1000)}ms")))
    if statement_timeout_s is not None:
        conn.execute(sql.SQL("SET LOCAL statement_timeout = {}").format(
            sql.Literal(f"{int(statement_timeout_s * 1000)}ms")))
