"""DAG factories: one dataset DAG and one report DAG per spec, and the boundary-refresh DAG.

A dataset DAG:  extract → plan_batches → enrich_batch (mapped, one task per batch) → assemble → quality_gate
                → publish_postgis → publish_files → record_publication (emits Asset enrich://published/<name>)
A report DAG (scheduled on that asset): aggregate → render → email.
Runs of a dataset DAG start on the spec's schedule and whenever the boundaries change (Asset enrich://boundaries,
emitted by the boundary-refresh DAG).

Nothing here does work at parse time: tasks read their spec from the closure and resolve paths when they run.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

from airflow.sdk import Asset, AssetOrTimeSchedule, CronTriggerTimetable, dag, get_current_context, task

from .alerts import failure_callbacks
from .spec import DatasetSpec

BOUNDARIES = Asset("enrich://boundaries")
START = datetime(2025, 1, 1, tzinfo=UTC)
TZ = "America/Los_Angeles"
# Bounds the enrich calls in flight to the service across every dataset DAG: `airflow pools set enrich_service 4`.
SERVICE_POOL = os.environ.get("ENRICH_SERVICE_POOL", "enrich_service")
GPKG_FALLBACK_ENV = "ENRICH_POSTGIS_FALLBACK"  # "geopackage": without the Postgres connection, write a .gpkg


def _retry_args() -> dict:
    """Task retries: exponential backoff from ENRICH_RETRY_DELAY_SECONDS (default 30 s), at most 10 minutes."""
    return {
        "retries": int(os.environ.get("ENRICH_TASK_RETRIES", 4)),
        "retry_delay": timedelta(seconds=float(os.environ.get("ENRICH_RETRY_DELAY_SECONDS", 30))),
        "retry_exponential_backoff": 2.0,
        "max_retry_delay": timedelta(minutes=10),
    }


def _schedule(spec: DatasetSpec):
    if spec.schedule and spec.reenrich_on_boundary_change:
        return AssetOrTimeSchedule(timetable=CronTriggerTimetable(spec.schedule, timezone=TZ), assets=BOUNDARIES)
    if spec.schedule:
        return CronTriggerTimetable(spec.schedule, timezone=TZ)
    return [BOUNDARIES] if spec.reenrich_on_boundary_change else None


def _work() -> Path:
    from .workdir import run_dir

    ctx = get_current_context()
    return run_dir(ctx["dag"].dag_id, ctx["run_id"])


def _run() -> dict:
    """This run as the publish guards see it (ordered by logical date; a manual run by its run_after)."""
    from .publish import run_info

    ctx = get_current_context()
    dr = ctx["dag_run"]
    return run_info(ctx["dag"].dag_id, ctx["run_id"], ctx.get("logical_date") or dr.run_after,
                    allow_row_change=bool((dr.conf or {}).get("allow_row_change")))


def build_dataset_dag(spec: DatasetSpec):
    limits = {"execution_timeout": timedelta(minutes=spec.publish.task_timeout_minutes)}
    @dag(dag_id=spec.dag_id, description=spec.description or None, schedule=_schedule(spec), start_date=START,
         catchup=False, max_active_runs=1, default_args={**_retry_args(), **limits, **failure_callbacks(spec)},
         dagrun_timeout=timedelta(minutes=spec.publish.run_timeout_minutes), tags=["enrich", *spec.tags],
         doc_md=f"Enrich `{spec.name}` (spec `{spec.path.name}`) through the enrichment service and publish it.")
    def dataset_dag():
        @task
        def extract() -> dict:
            """Read the source into extract.parquet in the run's work folder (a row group per batch)."""
            from airflow.sdk.exceptions import AirflowFailException

            from .extract import SourceUnreadable
            from .extract import extract as run
            from .publish import PublishRefused, refuse_stale_early

            try:
                refuse_stale_early(spec, _run())  # a cleared old run stops here, before any work
                return run(spec, _work() / "extract.parquet")
            except (SourceUnreadable, PublishRefused) as exc:  # a corrupt file stays corrupt: no retries
                raise AirflowFailException(str(exc)) from exc

        @task
        def plan_batches(extracted: dict) -> list[dict]:
            from .enrich import plan_batches as plan

            return plan(Path(extracted["path"]))

        @task(map_index_template="{{ task.op_kwargs['batch']['batch'] }}", pool=SERVICE_POOL)
        def enrich_batch(batch: dict, extracted: dict) -> dict:
            """Tag one batch through the service; the result file appears whole or not at all."""
            from airflow.sdk.exceptions import AirflowFailException

            from enrich_service.client import RequestRejected

            from .enrich import enrich_batch as run
            from .service import client_for

            with client_for(spec.service_conn_id) as client:
                try:
                    return run(spec, Path(extracted["path"]), _work(), batch["batch"], client)
                except RequestRejected as exc:  # the request is wrong: a retry would be refused again
                    raise AirflowFailException(str(exc)) from exc

        @task
        def assemble(extracted: dict, batches: list[dict]) -> dict:
            from .assemble import assemble as run

            # By index: iterating the lazy XCom sequence probes one past the end (a logged 404).
            results = [batches[i] for i in range(len(batches))]
            return run(spec, Path(extracted["path"]), _work(), results, _work() / "enriched.parquet")

        @task(retries=0)
        def quality_gate(assembled: dict) -> dict:
            """Fail (without retries) before publishing when too many in-city rows have no district."""
            from airflow.sdk.exceptions import AirflowFailException

            from .quality import QualityGateFailed, check, measure

            stats = measure(spec, Path(assembled["path"]))
            try:
                check(spec, stats)
            except QualityGateFailed as exc:
                raise AirflowFailException(str(exc)) from exc
            return stats

        @task
        def publish_postgis(assembled: dict, stats: dict) -> dict:
            """Guards against the last publication, then the rows into a new version table nobody reads yet."""
            from airflow.sdk.exceptions import AirflowFailException

            from .publish import PublishRefused, connect, has_connection, prepare_postgis, stage_geopackage
            from .spec import resolve

            if spec.postgis is None:
                return {}  # (not None: Airflow stores no XCom for None, and the next task would log its absence)
            if not has_connection(spec.postgis.conn_id):
                if os.environ.get(GPKG_FALLBACK_ENV) != "geopackage":
                    raise AirflowFailException(
                        f"no Airflow connection {spec.postgis.conn_id!r} for {spec.postgis.table}: define it "
                        f"(AIRFLOW_CONN_{spec.postgis.conn_id.upper()}) or set {GPKG_FALLBACK_ENV}=geopackage")
                # No database here (a laptop, the main job without ENRICH_POSTGIS_DSN): the same rows and
                # geometry as a GeoPackage beside the portal files, staged and renamed in with them.
                folder = Path(resolve(spec.portal.folder)) if spec.portal else _work()
                return {**stage_geopackage(spec, Path(assembled["path"]), _run(), folder), "rows": assembled["rows"]}
            try:
                with connect(spec, f"enrich-load {spec.name}") as conn:
                    return prepare_postgis(conn, spec, Path(assembled["path"]), _run())
            except PublishRefused as exc:
                raise AirflowFailException(str(exc)) from exc

        @task
        def publish_files(assembled: dict, stats: dict) -> dict:
            """The portal files under hidden staged names (the published files are not touched yet)."""
            from .publish import stage_files

            if spec.portal is None:
                return {}
            return stage_files(spec, Path(assembled["path"]), _run())

        @task(outlets=[Asset(spec.asset_uri)])
        def record_publication(assembled: dict, stats: dict, postgis: dict, files: dict) -> dict:
            """Switch PostGIS to the new version and rename the files and their metadata into place, all or
            nothing; then announce the asset."""
            from airflow.sdk.exceptions import AirflowFailException

            from .publish import PublishRefused, column_types, commit, unmatched

            run = _run()
            doc = {
                "dataset": spec.name, "description": spec.description, "dag_id": run["dag_id"],
                "run_id": run["run_id"], "rows": assembled["rows"], "layers": assembled["layers"],
                "unmatched": unmatched(spec, Path(assembled["path"])),
                "quality": {k: v for k, v in stats.items() if not k.endswith("_ids")},
                "columns": column_types(Path(assembled["path"])),
            }
            try:
                return commit(spec, run, postgis, files, doc)
            except PublishRefused as exc:
                raise AirflowFailException(str(exc)) from exc

        extracted = extract()
        batches = enrich_batch.partial(extracted=extracted).expand(batch=plan_batches(extracted))
        assembled = assemble(extracted, batches)
        stats = quality_gate(assembled)
        # One unit, in this order: PostGIS loaded, files staged, then both switched together with the metadata.
        loaded = publish_postgis(assembled, stats)
        staged = publish_files(assembled, stats)
        loaded >> staged
        record_publication(assembled, stats, loaded, staged)

    return dataset_dag()


def build_report_dag(spec: DatasetSpec):
    @dag(dag_id=spec.report_dag_id, description=f"District report for {spec.name}",
         schedule=[Asset(spec.asset_uri)], start_date=START, catchup=False, max_active_runs=1,
         default_args={**_retry_args(), **failure_callbacks(spec)}, tags=["enrich", "report", *spec.tags],
         doc_md=f"{spec.report.entity.capitalize()} of `{spec.name}` per {', '.join(spec.report.by)}, with the chart "
                f"in the message, every district, the change since the last report; e-mailed to the recipients.")
    def report_dag():
        @task
        def aggregate() -> dict:
            from .report import aggregate as run

            return run(spec)

        @task
        def render(counts: dict) -> dict:
            """The chart and the message: the counts as of this run, against the last report sent."""
            from .report import previous_report, render_chart, render_html

            ctx = get_current_context()
            # As of the publication that triggered this report (its asset event), else this run's date.
            events = ctx.get("triggering_asset_events") or {}
            stamps = [ev.timestamp for evs in events.values() for ev in evs]
            as_of = (max(stamps) if stamps else ctx.get("logical_date") or ctx["dag_run"].run_after).isoformat()
            png = render_chart(spec, counts, _work() / f"{spec.name}_by_{spec.report.by[0]}.png")
            previous = previous_report(spec, ctx["run_id"])
            return {"png": str(png), "as_of": as_of, "html": render_html(spec, counts, as_of, previous, png.name)}

        @task
        def email(rendered: dict, counts: dict) -> list[str]:
            """Send it, then remember these counts for the next report's "change since"."""
            from .report import remember, send

            subject = (spec.report.subject
                       or f"{spec.description or spec.name}: {spec.report.entity} per council district")
            send(spec, subject, rendered["html"], Path(rendered["png"]))
            remember(spec, get_current_context()["run_id"], rendered["as_of"], counts)
            return list(spec.report.recipients)

        counts = aggregate()
        email(render(counts), counts)

    return report_dag()


def build_boundary_refresh_dag(service_conn_id: str = "enrich_service", postgis_conn_id: str = "enrich_postgis"):
    @dag(dag_id="enrich_boundary_refresh", description="Reload boundary layers into PostGIS and the service",
         schedule="@weekly", start_date=START, catchup=False, max_active_runs=1, default_args=_retry_args(),
         tags=["enrich", "boundaries"],
         doc_md="Read the manifest's layer files (ENRICH_BOUNDARY_DIR, or downloaded and checked by sha256), "
                "have the service validate and accept them (every replica), then load the same files into "
                "PostGIS (one transaction), and announce `enrich://boundaries` so the dataset DAGs re-enrich, "
                "only when a file's sha256 changed. A file the service refuses reaches neither.")
    def boundary_refresh():
        @task
        def fetch_layers() -> dict:
            """Read and validate every layer version; downloads land in ENRICH_CACHE_DIR only if their sha256
            matches the manifest. Returns what was found, per layer version."""
            from .boundaries import fetch

            return fetch()

        @task
        def reload_service(fetched: dict) -> dict:
            """POST /v1/admin/reload (API key: the connection's password): the service validates the files and
            accepts or refuses them (409 naming the check); check it serves the files fetch_layers read."""
            from airflow.sdk.exceptions import AirflowFailException

            from enrich_service.client import RequestRejected

            from .boundaries import check_serving
            from .service import client_for

            with client_for(service_conn_id) as client:
                try:
                    answer = client.reload()
                except RequestRejected as exc:  # a wrong or missing key: retrying will not fix it
                    raise AirflowFailException(str(exc)) from exc
            check_serving(fetched, answer)
            # One replica answered the reload (through the balancer); the others follow the set it accepted.
            # Wait until every replica, asked itself, serves it; fail naming the ones that do not.
            from airflow.sdk import BaseHook

            from .boundaries import wait_for_replicas
            from .service import replica_urls

            conn = BaseHook.get_connection(service_conn_id)
            replicas = replica_urls(conn)
            converged = wait_for_replicas(replicas, answer["layers_sha256"],
                                          float(conn.extra_dejson.get("converge_timeout_s", 120))) \
                if replicas and answer.get("layers_sha256") else {}
            return {**{k: answer[k] for k in ("status", "generation", "build_seconds", "layers_sha256")
                       if k in answer}, "replicas_converged_s": converged}

        @task
        def load_postgis(fetched: dict, served: dict) -> dict:
            """Every layer version into PostGIS in one transaction, from the files the service has just accepted
            (after reload_service, so a file the service refuses never reaches PostGIS)."""
            from .boundaries import load_into_postgis
            from .publish import postgis_hook_connection

            with postgis_hook_connection(postgis_conn_id) as conn:
                return load_into_postgis(conn, fetched)

        @task(inlets=[BOUNDARIES], outlets=[BOUNDARIES])
        def announce(loaded: dict, served: dict) -> dict:
            """Update enrich://boundaries only when a layer's sha256 (or its list of versions) differs from the last
            announcement: every dataset re-enriches, and its report is e-mailed, on that event. No change: skipped,
            and no event."""
            from airflow.sdk.exceptions import AirflowSkipException

            from .boundaries import changed_layers

            ctx = get_current_context()
            last = list(ctx["inlet_events"][BOUNDARIES].ascending(False).limit(1))
            changed = changed_layers(last[0].extra if last else None, loaded["sha256"])
            if not changed:
                raise AirflowSkipException("no layer file changed since the last announcement "
                                           f"({last[0].timestamp:%Y-%m-%d %H:%M} UTC): nothing to re-enrich")
            ctx["outlet_events"][BOUNDARIES].extra = {"sha256": loaded["sha256"], "changed": changed}
            return {"changed": changed}

        fetched = fetch_layers()
        served = reload_service(fetched)
        announce(load_postgis(fetched, served), served)

    return boundary_refresh()
