"""DAG factories: one dataset DAG and one report DAG per spec, and the boundary-refresh DAG. The tasks themselves
are module-level TaskFlow functions in `tasks/`; this module only wires them.

A dataset DAG:  extract → plan_batches → enrich_batch (mapped, one task per batch) → assemble → quality_gate
                → publish_postgis → publish_files → record_publication (emits Asset enrich://published/<name>)
A report DAG (scheduled on that asset): aggregate → render → email.
Runs of a dataset DAG start on the spec's schedule and whenever the boundaries change (Asset enrich://boundaries,
emitted by the boundary-refresh DAG).

Nothing here does work at parse time: the tasks get the spec's file and read it, and resolve paths, when they run.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from typing import Any

from airflow.sdk import DAG, Asset, AssetOrTimeSchedule, CronTriggerTimetable

from .alerts import failure_callbacks
from .spec import DatasetSpec
from .tasks import dataset, refresh, report

BOUNDARIES = refresh.BOUNDARIES
START = datetime(2025, 1, 1, tzinfo=UTC)
TZ = "America/Los_Angeles"


def _retry_args() -> dict[str, Any]:
    """Task retries: exponential backoff from ENRICH_RETRY_DELAY_SECONDS (default 30 s), at most 10 minutes."""
    return {
        "retries": int(os.environ.get("ENRICH_TASK_RETRIES", 4)),
        "retry_delay": timedelta(seconds=float(os.environ.get("ENRICH_RETRY_DELAY_SECONDS", 30))),
        "retry_exponential_backoff": 2.0,
        "max_retry_delay": timedelta(minutes=10),
    }


def _schedule(spec: DatasetSpec) -> Any:
    if spec.schedule and spec.reenrich_on_boundary_change:
        return AssetOrTimeSchedule(timetable=CronTriggerTimetable(spec.schedule, timezone=TZ), assets=BOUNDARIES)
    if spec.schedule:
        return CronTriggerTimetable(spec.schedule, timezone=TZ)
    return [BOUNDARIES] if spec.reenrich_on_boundary_change else None


def build_dataset_dag(spec: DatasetSpec) -> DAG:
    limits = {"execution_timeout": timedelta(minutes=spec.publish.task_timeout_minutes)}
    # The tasks' results are XComArgs here (Any): the payload types hold where the tasks run.
    with DAG(dag_id=spec.dag_id, description=spec.description or None, schedule=_schedule(spec), start_date=START,
             catchup=False, max_active_runs=1, default_args={**_retry_args(), **limits, **failure_callbacks(spec)},
             dagrun_timeout=timedelta(minutes=spec.publish.run_timeout_minutes), tags=["enrich", *spec.tags],
             doc_md=f"Enrich `{spec.name}` (spec `{spec.path.name}`) through the enrichment service and publish "
                    f"it.") as dag:
        path = str(spec.path)
        extracted: Any = dataset.extract(spec_path=path)
        batches: Any = dataset.enrich_batch.partial(spec_path=path, extracted=extracted).expand(
            batch=dataset.plan_batches(extracted))
        assembled: Any = dataset.assemble(spec_path=path, extracted=extracted, batches=batches)
        stats: Any = dataset.quality_gate(spec_path=path, assembled=assembled)
        # One unit, in this order: PostGIS loaded, files staged, then both switched together with the metadata.
        loaded: Any = dataset.publish_postgis(spec_path=path, assembled=assembled, stats=stats)
        staged: Any = dataset.publish_files(spec_path=path, assembled=assembled, stats=stats)
        loaded >> staged
        dataset.record_publication.override(outlets=[Asset(spec.asset_uri)])(
            spec_path=path, assembled=assembled, stats=stats, postgis=loaded, files=staged)
    return dag


def build_report_dag(spec: DatasetSpec) -> DAG:
    assert spec.report is not None
    with DAG(dag_id=spec.report_dag_id, description=f"District report for {spec.name}",
             schedule=[Asset(spec.asset_uri)], start_date=START, catchup=False, max_active_runs=1,
             default_args={**_retry_args(), **failure_callbacks(spec)}, tags=["enrich", "report", *spec.tags],
             doc_md=f"{spec.report.entity.capitalize()} of `{spec.name}` per {', '.join(spec.report.by)}, with the "
                    f"chart in the message, every district, the change since the last report; e-mailed to the "
                    f"recipients.") as dag:
        path = str(spec.path)
        counts: Any = report.aggregate(spec_path=path)
        rendered: Any = report.render(spec_path=path, counts=counts)
        report.email(spec_path=path, rendered=rendered, counts=counts)
    return dag


def build_boundary_refresh_dag(service_conn_id: str = "enrich_service", postgis_conn_id: str = "enrich_postgis") -> DAG:
    with DAG(dag_id="enrich_boundary_refresh", description="Reload boundary layers into PostGIS and the service",
             schedule="@weekly", start_date=START, catchup=False, max_active_runs=1, default_args=_retry_args(),
             tags=["enrich", "boundaries"],
             doc_md="Read the manifest's layer files (ENRICH_BOUNDARY_DIR, or downloaded and checked by sha256), "
                    "have the service validate and accept them (every replica), then load the same files into "
                    "PostGIS (one transaction), and announce `enrich://boundaries` so the dataset DAGs re-enrich, "
                    "only when a file's sha256 changed. A file the service refuses reaches neither.") as dag:
        fetched: Any = refresh.fetch_layers()
        served: Any = refresh.reload_service(fetched=fetched, service_conn_id=service_conn_id)
        loaded: Any = refresh.load_postgis(fetched=fetched, served=served, postgis_conn_id=postgis_conn_id)
        refresh.announce(loaded=loaded, served=served)
    return dag
