"""The tasks of a report DAG (report_<name>, scheduled on the dataset's published asset): aggregate → render →
email."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from airflow.sdk import get_current_context, task

from ..payloads import Rendered
from . import spec_at, work_dir


@task
def aggregate(spec_path: str) -> dict[str, Any]:
    """Counts per report.by layer, from the published table (or the portal CSV)."""
    from ..report import aggregate as run

    return run(spec_at(spec_path))


@task
def render(spec_path: str, counts: dict[str, Any]) -> Rendered:
    """The chart and the message: the counts as of this run, against the last report sent."""
    from ..report import previous_report, render_chart, render_html

    spec = spec_at(spec_path)
    assert spec.report is not None  # the factory builds a report DAG only for specs with a report
    ctx = get_current_context()
    # As of the publication that triggered this report (its asset event), else this run's date.
    events = ctx.get("triggering_asset_events") or {}
    stamps = [ev.timestamp for evs in events.values() for ev in evs]
    as_of = (max(stamps) if stamps else ctx.get("logical_date") or ctx["dag_run"].run_after).isoformat()
    png = render_chart(spec, counts, work_dir() / f"{spec.name}_by_{spec.report.by[0]}.png")
    previous = previous_report(spec, ctx["run_id"])
    return {"png": str(png), "as_of": as_of, "html": render_html(spec, counts, as_of, previous, png.name)}


@task
def email(spec_path: str, rendered: Rendered, counts: dict[str, Any]) -> list[str]:
    """Send it, then remember these counts for the next report's "change since"."""
    from ..report import remember, send

    spec = spec_at(spec_path)
    assert spec.report is not None
    subject = spec.report.subject or f"{spec.description or spec.name}: {spec.report.entity} per council district"
    send(spec, subject, rendered["html"], Path(rendered["png"]))
    remember(spec, get_current_context()["run_id"], rendered["as_of"], counts)
    return list(spec.report.recipients)
