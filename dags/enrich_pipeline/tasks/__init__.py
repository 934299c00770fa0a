"""The TaskFlow tasks of the DAGs, at module level: `dataset` (enrich_<name>), `report` (report_<name>) and
`refresh` (enrich_boundary_refresh). factory.py wires them into DAGs.

A dataset's tasks take the spec's file (`spec_path`) and read it when they run: the argument is a short string in
the serialized DAG and the UI, and the spec a task acts on is the file the DAG was parsed from. Everything heavy is
imported inside the tasks, so importing these modules (at parse time) costs nothing.
"""

from __future__ import annotations

from pathlib import Path

from airflow.sdk import get_current_context

from ..spec import DatasetSpec, load_spec


def spec_at(spec_path: str) -> DatasetSpec:
    return load_spec(Path(spec_path))


def work_dir() -> Path:
    """This run's work folder (<ENRICH_WORK_DIR>/<dag_id>/<run_id>)."""
    from ..workdir import run_dir

    ctx = get_current_context()
    return run_dir(ctx["dag"].dag_id, ctx["run_id"])


def this_run() -> dict:
    """This run as the publish guards see it (ordered by logical date; a manual run by its run_after)."""
    from ..publish import run_info

    ctx = get_current_context()
    dr = ctx["dag_run"]
    return run_info(ctx["dag"].dag_id, ctx["run_id"], ctx.get("logical_date") or dr.run_after,
                    allow_row_change=bool((dr.conf or {}).get("allow_row_change")))
