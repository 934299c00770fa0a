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


def replica_urls(conn) -> list[str]:
    """The service's replicas, each asked itself (the boundary refresh waits for all of them): the connection extra
    `replicas`, a list or a comma-separated string of URLs or host:port. A name that resolves to several addresses
    (compose's `enrich-service`, a headless Kubernetes service) stands for each of them. Empty: not configured."""
    import socket

    raw = conn.extra_dejson.get("replicas") or []
    entries = [e.strip() for e in (raw.split(",") if isinstance(raw, str) else raw) if str(e).strip()]
    urls: list[str] = []
    for entry in entries:
        scheme, _, rest = entry.rpartition("://")
        host, _, port = rest.rstrip("/").rpartition(":")
        if not host:
            host, port = rest.rstrip("/"), "8080"
        try:
            addrs = sorted({a[4][0] for a in socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)})
        except socket.gaierror:
            addrs = [host]  # reported as unreachable by the wait, by name
        for addr in addrs:
            shown = f"[{addr}]" if ":" in addr else addr
            urls.append(f"{scheme or 'http'}://{shown}:{port}")
    return sorted(set(urls))
