"""Boundary refresh: read the layer files, have the service accept them, then load the same files into PostGIS.

The files come from the service's own settings (ENRICH_BOUNDARY_DIR, or downloads into ENRICH_CACHE_DIR checked
against the manifest's sha256), so PostGIS and the service are fed from one source and the check can compare
sha256 per layer version.
"""

from __future__ import annotations

from typing import Any

from .payloads import Fetched, LoadedBoundaries


def _store():
    from enrich_service.layers.store import LayerStore
    from enrich_service.settings import Settings

    settings = Settings()
    return LayerStore.load(settings.manifest, settings.boundary_dir, settings.cache_dir)


def _sha256(store) -> dict[str, dict[str, str]]:
    return {name: {v.version: v.source.sha256 for v in vs} for name, vs in store.versions.items()}


def fetch() -> Fetched:
    store = _store()
    return {"source": store.source_mode, "sha256": _sha256(store),
            "files": {name: [{"version": v.version, "features": v.n_features, **v.source.describe()} for v in vs]
                      for name, vs in store.versions.items()}}


def load_into_postgis(conn, fetched: Fetched) -> LoadedBoundaries:
    """Every layer version into PostGIS in ONE transaction: a failure half-way (a lock, a full disk, a constraint)
    leaves every table, view and catalog row as it was, never some layers new and others old. load_layers' own
    per-table transactions become savepoints inside this one (psycopg nests conn.transaction())."""
    from enrich_service.postgis import load_layers

    store = _store()
    if _sha256(store) != fetched["sha256"]:
        raise RuntimeError("the layer files changed since fetch_layers checked them; clear the run to start over")
    with conn.transaction():
        tables = load_layers(conn, store)
    return {"tables": tables, "sha256": fetched["sha256"]}


def changed_layers(announced: dict | None, loaded: dict[str, dict[str, str]]) -> list[str]:
    """The layers whose versions or sha256 differ from the last announced set (`announced`: the extra of the last
    enrich://boundaries event, None when there was none). Every layer when nothing was announced, or when the
    announcement does not say what it held (an event made by hand)."""
    before = (announced or {}).get("sha256")
    if not isinstance(before, dict):
        return sorted(loaded)
    return sorted(name for name in set(loaded) | set(before) if loaded.get(name) != before.get(name))


def check_serving(fetched: Fetched, answer: dict) -> None:
    """The service's reload answer lists per layer its versions and sha256: they must be the files this refresh
    read (and will load into PostGIS)."""
    serving = {name: {v["version"]: v["sha256"] for v in vs} for name, vs in answer.get("versions", {}).items()}
    differ = sorted(n for n, versions in fetched["sha256"].items() if serving.get(n) != versions)
    if differ:
        raise RuntimeError(f"the service serves other layer files than this refresh read for {differ}: "
                           f"point both at the same ENRICH_BOUNDARY_DIR (or cache)")


def replica_urls(conn: Any) -> list[str]:
    """The service's replicas, each asked itself (the boundary refresh waits for all of them): the connection extra
    `replicas`, a list or a comma-separated string of URLs or host:port. An entry without a scheme or port takes the
    connection's (as EnrichServiceHook.base_url does), else http and 8080. A name that resolves to several addresses
    (compose's `enrich-service`, a headless Kubernetes service) stands for each of them. Empty: not configured."""
    import socket
    from urllib.parse import urlsplit

    raw = conn.extra_dejson.get("replicas") or []
    entries = [e.strip() for e in (raw.split(",") if isinstance(raw, str) else raw) if str(e).strip()]
    default_scheme = getattr(conn, "schema", None) or "http"
    default_port = getattr(conn, "port", None) or 8080
    urls: list[str] = []
    for entry in entries:
        parts = urlsplit(entry if "://" in entry else f"//{entry}")
        scheme, host, port = parts.scheme or default_scheme, parts.hostname or "", parts.port or default_port
        try:
            addrs = sorted({str(a[4][0]) for a in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)})
        except socket.gaierror:
            addrs = [host]  # reported as unreachable by the wait, by name
        for addr in addrs:
            shown = f"[{addr}]" if ":" in addr else addr
            urls.append(f"{scheme}://{shown}:{port}")
    return sorted(set(urls))


def wait_for_replicas(replicas: list[str], expected: str, timeout_s: float = 120.0, probes: int = 6,
                      every_s: float = 1.0) -> dict[str, float]:
    """Wait until every replica serves the layer set `expected` (sha256), asking each one itself, not the load
    balancer: `probes` GET /readyz on new connections per replica (each may land on another of its workers), all
    of which must name `expected`. Returns the seconds each replica took; raises naming the laggards and what they
    serve. The replicas follow the accepted set on their own (ENRICH_FOLLOW_INTERVAL_S): this only watches."""
    import time

    import httpx

    started = time.monotonic()
    done: dict[str, float] = {}
    last: dict[str, str] = {}
    while True:
        for url in replicas:
            if url in done:
                continue
            seen = set()
            for _ in range(probes):
                try:
                    with httpx.Client(timeout=10) as c:  # a new connection per probe
                        r = c.get(f"{url.rstrip('/')}/readyz")
                    body = r.json() if r.headers.get("content-type", "").startswith("application/json") else {}
                    seen.add(body.get("layers_sha256") or f"HTTP {r.status_code} {body.get('status', '')}".strip())
                except (httpx.HTTPError, ValueError) as exc:
                    seen.add(f"unreachable ({type(exc).__name__})")
            if seen == {expected}:
                done[url] = round(time.monotonic() - started, 1)
            else:
                last[url] = ", ".join(sorted(s[:12] if len(s) == 64 else s for s in seen))
        if len(done) == len(replicas):
            return done
        if time.monotonic() - started > timeout_s:
            laggards = {u: last[u] for u in replicas if u not in done}
            raise RuntimeError(f"{len(laggards)} of {len(replicas)} replicas do not serve layer set {expected[:12]} "
                               f"after {timeout_s:.0f} s: " + "; ".join(f"{u} serves {s}" for u, s in laggards.items())
                               + " (see each replica's /readyz and log)")
        time.sleep(every_s)
