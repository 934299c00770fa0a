"""The enrichment service as an Airflow hook on an HTTP connection (conn id `enrich_service` by default).

host (with or without scheme) and port give the base URL; the password is the admin API key (for reload). Extras:
`timeout` (seconds per request, default 300), `replicas` (the service's replicas, each asked itself when the
boundary refresh waits for them to follow a reload) and `converge_timeout_s` (how long it waits, default 120).
Example:
    AIRFLOW_CONN_ENRICH_SERVICE='http://:ADMIN_KEY@enrich-service:8080?timeout=300'
"""

from __future__ import annotations

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
        """The service's replicas, each asked itself (the `replicas` extra; see boundaries.replica_urls)."""
        from .boundaries import replica_urls

        return replica_urls(self.connection)

    def test_connection(self) -> tuple[bool, str]:
        """The UI's "Test" button: is the service up, with its layers loaded?"""
        with self.get_conn() as client:
            return (True, "ready") if client.ready() else (False, f"{self.base_url} is not ready (/readyz)")
