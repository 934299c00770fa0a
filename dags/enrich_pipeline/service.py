"""The enrichment service as an Airflow connection (HTTP, conn id `enrich_service` by default).

host (with or without scheme) and port give the base URL; the password is the admin API key (for reload); the
extra `{"timeout": 300}` sets the request timeout. Example:
    AIRFLOW_CONN_ENRICH_SERVICE='http://:ADMIN_KEY@enrich-service:8080?timeout=300'
"""

from __future__ import annotations


def base_url(conn) -> str:
    host = (conn.host or "").rstrip("/")
    if not host:
        raise ValueError(f"connection {conn.conn_id!r} has no host")
    url = host if "://" in host else f"{conn.schema or 'http'}://{host}"
    if conn.port and url.count(":") < 2:
        url += f":{conn.port}"
    return url


def client_for(conn_id: str):
    """An EnrichClient for the connection `conn_id`."""
    from airflow.sdk import BaseHook

    from enrich_service.client import EnrichClient

    conn = BaseHook.get_connection(conn_id)
    timeout = float(conn.extra_dejson.get("timeout", 300))
    return EnrichClient(base_url(conn), api_key=conn.password or None, timeout=timeout)
