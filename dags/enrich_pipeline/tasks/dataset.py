"""The tasks of a dataset DAG (enrich_<name>), in the order they run:

extract → plan_batches → enrich_batch (mapped, one per batch) → assemble → quality_gate → publish_postgis
→ publish_files → record_publication

Each is small and idempotent: it reads its inputs from the run's work folder, writes its outputs there atomically,
and a retry or a cleared run rewrites the same files. A failure a retry cannot fix (a corrupt source, a 4xx from the
service, a guard, the quality gate) fails at once (AirflowFailException).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import cast

from airflow.sdk import task

from ..payloads import Assembled, BatchPlan, BatchResult, Extracted, PostgisLoaded, QualityStats, StagedFiles
from . import spec_at, this_run, work_dir

# Bounds the enrich calls in flight to the service across every dataset DAG: `airflow pools set enrich_service 4`.
SERVICE_POOL = os.environ.get("ENRICH_SERVICE_POOL", "enrich_service")
GPKG_FALLBACK_ENV = "ENRICH_POSTGIS_FALLBACK"  # "geopackage": without the Postgres connection, write a .gpkg


@task
def extract(spec_path: str) -> Extracted:
    """Read the source into extract.parquet in the run's work folder (a row group per batch)."""
    from airflow.sdk.exceptions import AirflowFailException

    from ..extract import SourceUnreadable
    from ..extract import extract as run
    from ..publish import PublishRefused, refuse_stale_early

    spec = spec_at(spec_path)
    try:
        refuse_stale_early(spec, this_run())  # a cleared old run stops here, before any work
        return run(spec, work_dir() / "extract.parquet")
    except (SourceUnreadable, PublishRefused) as exc:  # a corrupt file stays corrupt: no retries
        raise AirflowFailException(str(exc)) from exc


@task
def plan_batches(extracted: Extracted) -> list[BatchPlan]:
    from ..enrich import plan_batches as plan

    return plan(Path(extracted["path"]))


@task(map_index_template="{{ task.op_kwargs['batch']['batch'] }}", pool=SERVICE_POOL)
def enrich_batch(spec_path: str, batch: BatchPlan, extracted: Extracted) -> BatchResult:
    """Tag one batch through the service; the result file appears whole or not at all."""
    from airflow.sdk.exceptions import AirflowFailException

    from enrich_service.client import RequestRejected

    from ..enrich import enrich_batch as run
    from ..hooks import EnrichServiceHook

    spec = spec_at(spec_path)
    with EnrichServiceHook(spec.service_conn_id).get_conn() as client:
        try:
            return run(spec, Path(extracted["path"]), work_dir(), batch["batch"], client)
        except RequestRejected as exc:  # the request is wrong: a retry would be refused again
            raise AirflowFailException(str(exc)) from exc


@task
def assemble(spec_path: str, extracted: Extracted, batches: list[BatchResult]) -> Assembled:
    """The extract and every batch's results as enriched.parquet (refused if the batches used other layers)."""
    from ..assemble import assemble as run

    # By index: iterating the lazy XCom sequence probes one past the end (a logged 404).
    results = [batches[i] for i in range(len(batches))]
    return run(spec_at(spec_path), Path(extracted["path"]), work_dir(), results, work_dir() / "enriched.parquet")


@task(retries=0)
def quality_gate(spec_path: str, assembled: Assembled) -> QualityStats:
    """Fail (without retries) before publishing when too many in-city rows have no district."""
    from airflow.sdk.exceptions import AirflowFailException

    from ..quality import QualityGateFailed, check, measure

    spec = spec_at(spec_path)
    stats = measure(spec, Path(assembled["path"]))
    try:
        check(spec, stats)
    except QualityGateFailed as exc:
        raise AirflowFailException(str(exc)) from exc
    return stats


@task
def publish_postgis(spec_path: str, assembled: Assembled, stats: QualityStats) -> PostgisLoaded:
    """Guards against the last publication, then the rows into a new version table nobody reads yet."""
    from airflow.sdk.exceptions import AirflowFailException

    from ..publish import PublishRefused, connect, has_connection, portal_folder, prepare_postgis, stage_geopackage

    spec = spec_at(spec_path)
    if spec.postgis is None:
        return {}  # (not None: Airflow stores no XCom for None, and the next task would log its absence)
    if not has_connection(spec.postgis.conn_id):
        if os.environ.get(GPKG_FALLBACK_ENV) != "geopackage":
            raise AirflowFailException(
                f"no Airflow connection {spec.postgis.conn_id!r} for {spec.postgis.table}: define it "
                f"(AIRFLOW_CONN_{spec.postgis.conn_id.upper()}) or set {GPKG_FALLBACK_ENV}=geopackage")
        # No database here (a laptop, the main job without ENRICH_POSTGIS_DSN): the same rows and geometry as a
        # GeoPackage beside the portal files, staged and renamed in with them.
        folder = portal_folder(spec) or work_dir()
        staged = stage_geopackage(spec, Path(assembled["path"]), this_run(), folder)
        return {**staged, "rows": assembled["rows"]}
    try:
        with connect(spec, f"enrich-load {spec.name}") as conn:
            return cast(PostgisLoaded, prepare_postgis(conn, spec, Path(assembled["path"]), this_run()))
    except PublishRefused as exc:
        raise AirflowFailException(str(exc)) from exc


@task
def publish_files(spec_path: str, assembled: Assembled, stats: QualityStats) -> StagedFiles:
    """The portal files under hidden staged names (the published files are not touched yet)."""
    from ..publish import stage_files

    spec = spec_at(spec_path)
    if spec.portal is None:
        return {}
    return stage_files(spec, Path(assembled["path"]), this_run())


@task
def record_publication(spec_path: str, assembled: Assembled, stats: QualityStats, postgis: PostgisLoaded,
                       files: StagedFiles) -> dict:
    """Switch PostGIS to the new version and rename the files and their metadata into place, all or nothing; then
    announce the asset (the factory gives this task the dataset's outlet)."""
    from airflow.sdk.exceptions import AirflowFailException

    from ..publish import PublishRefused, column_types, commit, unmatched

    spec = spec_at(spec_path)
    run = this_run()
    enriched = Path(assembled["path"])
    doc = {
        "dataset": spec.name, "description": spec.description, "dag_id": run["dag_id"], "run_id": run["run_id"],
        "rows": assembled["rows"], "layers": assembled["layers"], "unmatched": unmatched(spec, enriched),
        "quality": {k: v for k, v in stats.items() if not k.endswith("_ids")}, "columns": column_types(enriched),
    }
    try:
        return commit(spec, run, dict(postgis), dict(files), doc)
    except PublishRefused as exc:
        raise AirflowFailException(str(exc)) from exc
