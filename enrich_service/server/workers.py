"""`enrich-service serve --workers N`: uvicorn's supervisor, with each worker listening on a socket of its own.

uvicorn's workers share one listening socket, and the first to wake accepts every connection waiting: 32 keep-alive
connections opened together all landed on one of two workers (bench/load.py --mode throughput: one core busy, the
other idle, 3,071 lookups/s). With SO_REUSEPORT each worker listens on its own socket and the kernel spreads new
connections over them. The supervisor keeps a bound, never listening, socket so a taken port fails at once.

Ready before serving: a worker's socket is bound at once but listens only when uvicorn has run the app's start-up,
which builds the index (main.lifespan). Until then the kernel hands it no connection (a bound SO_REUSEPORT socket
joins the port's group only by listening), so a worker the supervisor restarts after a crash is never seen loading:
its sibling takes the connections meanwhile.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import socket
import sys

from uvicorn import Config
from uvicorn.config import STARTUP_FAILURE
from uvicorn.supervisors import multiprocess

log = logging.getLogger(__name__)

# The supervisor's pid, in its workers' environment: reload.reload_every_worker signals it. Nothing else is
# imported here, so the supervisor stays a small process.
SUPERVISOR_ENV = "ENRICH_SUPERVISOR_PID"


def _reuse_port_socket(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)  # before bind, on every socket of the port
    sock.bind((host, port))
    return sock


def _exit_with_the_supervisor() -> None:
    # A supervisor killed outright (SIGKILL, the OOM killer) would leave its workers serving on the port: the kernel
    # sends them SIGTERM instead (Linux; elsewhere nothing changes).
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG
    if os.getppid() == 1:  # it died before we asked
        sys.exit(0)


class _OwnSocketWorker(multiprocess.Process):
    def target(self, sockets=None) -> None:  # runs in the worker process
        _exit_with_the_supervisor()
        inherited = sockets or []
        own = [_reuse_port_socket(*s.getsockname()[:2]) for s in inherited]
        for s in inherited:
            s.close()
        super().target(own)


class _Supervisor(multiprocess.Multiprocess):
    def handle_hup(self) -> None:
        # Every worker reloads its layers and swaps its index in place (reload.reload_on_sighup), instead of uvicorn's
        # restart of the workers, whose replacements would answer 503 while they index.
        log.info("SIGHUP: reloading the layers in %d workers", len(self.processes))
        for process in self.processes:
            if process.pid is not None:
                os.kill(process.pid, signal.SIGHUP)


def run(config: Config) -> None:
    try:
        sock = _reuse_port_socket(config.host, config.port)
    except OSError as exc:
        log.error("cannot listen on %s:%s: %s", config.host, config.port, exc)
        sys.exit(STARTUP_FAILURE)
    log.info("listening on %s:%d with %d workers, one socket each", config.host, sock.getsockname()[1],
             config.workers)
    # The supervisor makes its workers by this module-level name (a class attribute mypy won't let us assign).
    multiprocess.Process = _OwnSocketWorker  # type: ignore[misc]
    os.environ[SUPERVISOR_ENV] = str(os.getpid())  # the workers' POST /v1/admin/reload asks us to pass SIGHUP on
    try:
        _Supervisor(config, sockets=[sock]).run()
    finally:
        sock.close()
