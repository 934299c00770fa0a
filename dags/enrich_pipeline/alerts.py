"""Failure e-mails: when a task of a dataset DAG fails for good (retries spent, or a failure retrying cannot fix),
the dataset's owners (`owners:` in its spec) get one e-mail through Airflow's SMTP provider (connection
`alert_conn_id`, default `smtp_default`; its `from_email` extra is the sender).

The callback runs on the worker, after the task's last try (Airflow's task-level on_failure_callback): it names the
dataset, the DAG, the task, the try and the error, and links the task's log. Building it at parse time costs
nothing: the SMTP provider is imported only when an e-mail goes out.
"""

from __future__ import annotations

import html
import logging

from .spec import DatasetSpec

log = logging.getLogger(__name__)


class FailureEmail:
    """An on_failure_callback e-mailing `to` (the spec's owners) through the SMTP connection `conn_id`."""

    def __init__(self, spec: DatasetSpec):
        self.dataset = spec.description or spec.name
        self.to = list(spec.owners)
        self.conn_id = spec.alert_conn_id

    def __call__(self, context) -> None:
        from airflow.providers.smtp.hooks.smtp import SmtpHook

        subject, body = self.render(context)
        with SmtpHook(smtp_conn_id=self.conn_id) as hook:
            hook.send_email_smtp(to=self.to, subject=subject, html_content=body)
        log.info("failure e-mail sent to %s", ", ".join(self.to))

    def render(self, context) -> tuple[str, str]:
        ti = context["ti"]
        dag_id = ti.dag_id
        error = context.get("exception")
        reason = f"{type(error).__name__}: {error}" if error is not None else "(no exception recorded)"
        first_line = str(error).splitlines()[0][:120] if error is not None and str(error) else type(error).__name__
        subject = f"[enrich] {self.dataset}: {dag_id} failed at {ti.task_id}: {first_line}"
        logical = context.get("logical_date") or context.get("run_after")
        rows = [("Dataset", self.dataset), ("DAG", dag_id), ("Task", ti.task_id + (
                f" (map index {ti.map_index})" if getattr(ti, "map_index", -1) not in (-1, None) else "")),
                ("Try", str(getattr(ti, "try_number", ""))), ("Run", str(context.get("run_id", ""))),
                ("Scheduled for", f"{logical:%Y-%m-%d %H:%M %Z}" if logical else "")]
        log_url = getattr(ti, "log_url", None)
        table = "".join(f"<tr><th align='left'>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows)
        body = (f"<p>A run of <b>{html.escape(self.dataset)}</b> failed and will not be retried.</p>"
                f"<table cellpadding='3'>{table}</table>"
                f"<p><b>Error</b></p><pre>{html.escape(reason)}</pre>"
                + (f"<p><a href='{html.escape(log_url)}'>The task's log</a></p>" if log_url else "")
                + "<p>Fix the cause, then clear the failed task in Airflow to run it again.</p>")
        return subject, body


def failure_callbacks(spec: DatasetSpec) -> dict:
    """default_args for a dataset's DAGs: the owners' failure e-mail, when the spec names owners."""
    return {"on_failure_callback": FailureEmail(spec)} if spec.owners else {}
