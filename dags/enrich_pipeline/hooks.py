"""The enrichment service as an Airflow hook on an HTTP connection (conn id `enrich_service` by default).

host (with or without scheme) and port give the base URL; the password is the admin API key (for reload). Extras:
`timeout` (seconds per request, default 300), `replicas` (the service's replicas, each asked itself when the
boundary refresh waits for them to follow a reload) and `converge_timeout_s` (how long it waits, default 120).
Example:
    AIRFLOW_CONN_ENRICH_SERVICE='http://:ADMIN_KEY@enrich-service:8080?timeout=300'
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseHook

if TYPE_CHECKING:  # the client (httpx) is imported when a task asks for it: parsing stays cheap
    from enrich_service.client import EnrichClient


class EnrichServiceHook(BaseHook):
    """`get_conn()` is an `enrich_service.client.EnrichClient` for the connection (use it as a context manager)."""

    conn_name_attr = "enrich_conn_id"
    default_conn_name = "enrich_service"
    conn_type = "http"
    hook_name = "Enrichment service"

    def __init__(self, enrich_conn_id: str = default_conn_name, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.enrich_conn_id = enrich_conn_id
        self._conn: Any = None

    @property
    def connection(self) -> Any:
        if self._conn is None:
            self._conn = self.get_connection(self.enrich_conn_id)
        return self._conn

    @property
    def base_url(self) -> str:
        conn = self.connection
        host = (conn.host or "").rstrip("/")
        if not host:
            raise ValueError(f"connection {self.enrich_conn_id!r} has no host")
        url = host if "://" in host else f"{conn.schema or 'http'}://{host}"
        if conn.port and url.count(":") < 2:
            url += f":{conn.port}"
        return url

    def get_conn(self) -> EnrichClient:
        from enrich_service.client import EnrichClient

        timeout = float(self.connection.extra_dejson.get("timeout", 300))
        return EnrichClient(self.base_url, api_key=self.connection.password or None, timeout=timeout)

    @property
    def converge_timeout_s(self) -> float:
        return float(self.connection.extra_dejson.get("converge_timeout_s", 120))

    def replica_urls(self) -> list[str]:
        """The service's replicas, each asked itself: the extra `replicas`, a list or a comma-separated string of
        URLs or host:port. A name that resolves to several addresses (compose's `enrich-service`, a headless
        Kubernetes service) stands for each of them. Empty: not configured."""
        raw = self.connection.extra_dejson.get("replicas") or []
        entries = [e.strip() for e in (raw.split(",") if isinstance(raw, str) else raw) if str(e).strip()]
        urls: list[str] = []
        for entry in entries:
            scheme, _, rest = entry.rpartition("://")
            host, _, port = rest.rstrip("/").rpartition(":")
            if not host:
                host, port = rest.rstrip("/"), "8080"
            try:
                addrs = sorted({str(a[4][0]) for a in socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)})
            except socket.gaierror:
                addrs = [host]  # reported as unreachable by the wait, by name
            for addr in addrs:
                shown = f"[{addr}]" if ":" in addr else addr
                urls.append(f"{scheme or 'http'}://{shown}:{port}")
        return sorted(set(urls))

    def test_connection(self) -> tuple[bool, str]:
        """The UI's "Test" button: is the service up, with its layers loaded?"""
        with self.get_conn() as client:
            return (True, "ready") if client.ready() else (False, f"{self.base_url} is not ready (/readyz)")
