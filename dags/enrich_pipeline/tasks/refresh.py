"""The tasks of enrich_boundary_refresh: fetch_layers → reload_service → load_postgis → announce.

The service validates and accepts the layer files before PostGIS loads them, so a file the service refuses reaches
neither; `announce` updates enrich://boundaries only when a file changed.
"""

from __future__ import annotations

from typing import Any, cast

from airflow.sdk import Asset, get_current_context, task

from ..payloads import Fetched, LoadedBoundaries, Served

BOUNDARIES = Asset("enrich://boundaries")


@task
def fetch_layers() -> Fetched:
    """Read and validate every layer version; downloads land in ENRICH_CACHE_DIR only if their sha256 matches the
    manifest. Returns what was found, per layer version."""
    from ..boundaries import fetch

    return fetch()


@task
def reload_service(fetched: Fetched, service_conn_id: str) -> Served:
    """POST /v1/admin/reload (API key: the connection's password): the service validates the files and accepts or
    refuses them (409 naming the check); check it serves the files fetch_layers read, on every replica."""
    from airflow.sdk.exceptions import AirflowFailException

    from enrich_service.client import RequestRejected

    from ..boundaries import check_serving, wait_for_replicas
    from ..hooks import EnrichServiceHook

    hook = EnrichServiceHook(service_conn_id)
    with hook.get_conn() as client:
        try:
            answer = client.reload()
        except RequestRejected as exc:  # a wrong or missing key: retrying will not fix it
            raise AirflowFailException(str(exc)) from exc
    check_serving(fetched, answer)
    # One replica answered the reload (through the balancer); the others follow the set it accepted. Wait until
    # every replica, asked itself, serves it; fail naming the ones that do not.
    replicas = hook.replica_urls()
    converged = wait_for_replicas(replicas, answer["layers_sha256"], hook.converge_timeout_s) \
        if replicas and answer.get("layers_sha256") else {}
    served = {k: answer[k] for k in ("status", "generation", "build_seconds", "layers_sha256") if k in answer}
    return cast(Served, {**served, "replicas_converged_s": converged})


@task
def load_postgis(fetched: Fetched, served: Served, postgis_conn_id: str) -> LoadedBoundaries:
    """Every layer version into PostGIS in one transaction, from the files the service has just accepted (after
    reload_service, so a file the service refuses never reaches PostGIS)."""
    from ..boundaries import load_into_postgis
    from ..publish import postgis_hook_connection

    with postgis_hook_connection(postgis_conn_id) as conn:
        return load_into_postgis(conn, fetched)


@task(inlets=[BOUNDARIES], outlets=[BOUNDARIES])
def announce(loaded: LoadedBoundaries, served: Served) -> dict[str, list[str]]:
    """Update enrich://boundaries only when a layer's sha256 (or its list of versions) differs from the last
    announcement: every dataset re-enriches, and its report is e-mailed, on that event. No change: skipped, and no
    event."""
    from airflow.sdk.exceptions import AirflowSkipException

    from ..boundaries import changed_layers

    ctx = get_current_context()
    last = list(ctx["inlet_events"][BOUNDARIES].ascending(False).limit(1))
    changed = changed_layers(last[0].extra if last else None, loaded["sha256"])
    if not changed:
        raise AirflowSkipException("no layer file changed since the last announcement "
                                   f"({last[0].timestamp:%Y-%m-%d %H:%M} UTC): nothing to re-enrich")
    extra: dict[str, Any] = {"sha256": loaded["sha256"], "changed": changed}
    ctx["outlet_events"][BOUNDARIES].extra = extra
    return {"changed": changed}
