"""The district report: a published dataset counted per council district (and per neighborhood), a PNG bar chart
and an HTML table, emailed through Airflow's SMTP connection to the spec's recipients.

Counts come from PostGIS (GROUP BY on the published table) when the spec publishes there and the connection exists,
else from the portal CSV (the same rows).
"""

from __future__ import annotations

import html
from pathlib import Path

from .spec import DatasetSpec, resolve

NONE_LABEL = "(none)"


def aggregate_rows(rows: list[tuple[str | None, int]]) -> list[dict]:
    """[(value, count)] -> [{"value", "count", "share"}], largest first, districts in numeric order."""
    total = sum(c for _, c in rows) or 1
    out = [{"value": NONE_LABEL if v is None else str(v), "count": int(c), "share": round(c / total, 4)}
           for v, c in rows]

    def order(r):
        v = r["value"]
        return (v == NONE_LABEL, int(v) if v.isdigit() else 0, -r["count"], v)

    return sorted(out, key=order)


def counts_from_postgis(conn, table: str, column: str) -> list[tuple]:
    from psycopg import sql

    from .publish import pg_columns, split_table_name

    schema, name = split_table_name(table)
    col = pg_columns([column])[0]
    return conn.execute(sql.SQL("SELECT {c}, count(*) FROM {t} GROUP BY {c}").format(
        c=sql.Identifier(col), t=sql.Identifier(schema, name))).fetchall()


def counts_from_csv(path: Path, column: str) -> list[tuple]:
    import pyarrow as pa
    import pyarrow.csv as pacsv

    table = pacsv.read_csv(path, convert_options=pacsv.ConvertOptions(  # an empty cell is "no district"
        include_columns=[column], column_types={column: pa.string()}, strings_can_be_null=True))
    grouped = table.group_by(column).aggregate([([], "count_all")])
    return list(zip(grouped.column(column).to_pylist(), grouped.column("count_all").to_pylist()))


def aggregate(spec: DatasetSpec) -> dict:
    """{layer: [{"value", "count", "share"}]} for each layer in report.by."""
    from .publish import has_connection, postgis_hook_connection

    out = {}
    # Without the database (published as a GeoPackage instead), the portal CSV holds the same rows.
    if spec.postgis and (has_connection(spec.postgis.conn_id) or not spec.portal):
        with postgis_hook_connection(spec.postgis.conn_id) as conn:
            for layer in spec.report.by:
                out[layer] = aggregate_rows(counts_from_postgis(conn, spec.postgis.table, spec.layers[layer]))
    else:
        csv = Path(resolve(spec.portal.folder)) / f"{spec.portal.basename}.csv"
        for layer in spec.report.by:
            out[layer] = aggregate_rows(counts_from_csv(csv, spec.layers[layer]))
    if spec.address is not None:  # address-only data: how sure the districts are (tagged, ambiguous, not found)
        from .geocode import report_quality

        out["match_quality"] = report_quality(spec, lambda names: _published_columns(spec, names))
    return out


def _published_columns(spec: DatasetSpec, names: list[str]) -> dict[str, list]:
    """Whole columns of the published rows: from PostGIS when published there, else the portal CSV."""
    from .publish import has_connection, postgis_hook_connection

    if spec.postgis and (has_connection(spec.postgis.conn_id) or not spec.portal):
        from psycopg import sql

        from .publish import pg_columns, split_table_name

        schema, name = split_table_name(spec.postgis.table)
        with postgis_hook_connection(spec.postgis.conn_id) as conn:
            rows = conn.execute(sql.SQL("SELECT {} FROM {}").format(
                sql.SQL(", ").join(map(sql.Identifier, pg_columns(names))), sql.Identifier(schema, name))).fetchall()
        return {n: [r[i] for r in rows] for i, n in enumerate(names)}
    import pyarrow as pa
    import pyarrow.csv as pacsv

    csv = Path(resolve(spec.portal.folder)) / f"{spec.portal.basename}.csv"
    table = pacsv.read_csv(csv, convert_options=pacsv.ConvertOptions(
        include_columns=names, column_types={n: pa.string() for n in names}, strings_can_be_null=True))
    return {n: table.column(n).to_pylist() for n in names}


def render_chart(spec: DatasetSpec, counts: dict, dest: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .workdir import atomic_path

    layer = spec.report.by[0]
    rows = counts[layer]
    fig, ax = plt.subplots(figsize=(7, 3.6), dpi=100)
    labels = [r["value"] for r in rows]
    ax.bar(labels, [r["count"] for r in rows], color=["#9aa" if v == NONE_LABEL else "#1f5f8b" for v in labels])
    ax.set_title(f"{spec.description or spec.name}: rows per {layer.replace('_', ' ')}")
    ax.set_xlabel(layer.replace("_", " "))
    ax.set_ylabel("rows")
    for i, r in enumerate(rows):
        ax.annotate(f"{r['count']:,}", (i, r["count"]), ha="center", va="bottom", fontsize=8)
    fig.tight_layout()
    with atomic_path(dest) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return dest


def render_html(spec: DatasetSpec, counts: dict, run_note: str) -> str:
    parts = [f"<h2>{html.escape(spec.description or spec.name)}</h2>",
             f"<p>{html.escape(run_note)}. The chart is attached.</p>"]
    for layer in spec.report.by:
        rows = counts[layer]
        if layer != spec.report.by[0]:
            rows = sorted(rows, key=lambda r: -r["count"])[: spec.report.top]
        title = layer.replace("_", " ")
        parts.append(f"<h3>Rows per {html.escape(title)}</h3><table border='1' cellpadding='3' "
                     f"style='border-collapse:collapse'><tr><th>{html.escape(title)}</th><th>rows</th>"
                     f"<th>share</th></tr>")
        parts += [f"<tr><td>{html.escape(r['value'])}</td><td align='right'>{r['count']:,}</td>"
                  f"<td align='right'>{r['share']:.1%}</td></tr>" for r in rows]
        parts.append("</table>")
    if counts.get("match_quality"):
        from .geocode import quality_html

        parts.append(quality_html(counts["match_quality"], spec.report.by[0]))
    return "\n".join(parts)


def send(spec: DatasetSpec, subject: str, html_body: str, attachments: list[Path]) -> None:
    from airflow.providers.smtp.hooks.smtp import SmtpHook

    with SmtpHook(smtp_conn_id=spec.report.conn_id) as hook:
        hook.send_email_smtp(to=list(spec.report.recipients), subject=subject, html_content=html_body,
                             files=[str(p) for p in attachments])
