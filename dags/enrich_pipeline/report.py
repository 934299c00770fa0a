"""The district report a department head reads: a published dataset counted per council district (and per
neighborhood), with the chart in the message, every district (zeros too), the period covered, the change since the
last report, and the rows without a district explained in words. E-mailed through Airflow's SMTP connection.

What is counted: entities when the spec names their id (`report.entity_id`: a parking meter is a pole, which has one
row per rate configuration, so a pole counts once), else rows. Counts come from PostGIS (GROUP BY on the published
table) when the spec publishes there and the connection exists, else from the portal CSV (the same rows). The full
list of districts comes from the boundary tables in PostGIS (`boundary_<layer>`), else from the layer files.

Each sent report is remembered (`<ENRICH_WORK_DIR>/<report dag>/history.json`: when, and the counts): the next one
shows the change since then.
"""

from __future__ import annotations

import html
import json
from datetime import datetime
from pathlib import Path
from typing import Any

from .spec import DatasetSpec, Report, resolve

NONE_LABEL = "No district"
ERROR_COL = "enrich_error"  # set on published rows without a usable location (assemble.ERROR)
HISTORY_KEEP = 60


def _report(spec: DatasetSpec) -> Report:
    """The spec's report section (a report DAG exists only for specs that have one)."""
    if spec.report is None:
        raise ValueError(f"{spec.name}: the spec has no report section")
    return spec.report


def _table(spec: DatasetSpec) -> str:
    assert spec.postgis is not None  # callers check spec.postgis first
    return spec.postgis.table


def _portal_csv(spec: DatasetSpec) -> Path:
    """The published CSV, which holds the same rows as the table."""
    if spec.portal is None:
        raise ValueError(f"{spec.name}: published neither to PostGIS nor to the portal")
    return Path(resolve(spec.portal.folder)) / f"{spec.portal.basename}.csv"


# ---- counting -----------------------------------------------------------------------------------------------------

def _key_sql(spec: DatasetSpec):
    from psycopg import sql

    from .publish import pg_columns

    ids = pg_columns(list(_report(spec).entity_id))
    if not ids:
        return sql.SQL("count(*)")
    if len(ids) == 1:
        return sql.SQL("count(DISTINCT {})").format(sql.Identifier(ids[0]))
    return sql.SQL("count(DISTINCT ({}))").format(sql.SQL(", ").join(map(sql.Identifier, ids)))


def counts_from_postgis(conn, spec: DatasetSpec) -> dict:
    from psycopg import sql

    from .publish import pg_columns, split_table_name

    schema, name = split_table_name(_table(spec))
    table = sql.Identifier(schema, name)
    n = _key_sql(spec)
    out: dict[str, Any] = {"by": {}}
    for layer in _report(spec).by:
        col = sql.Identifier(pg_columns([spec.layers[layer]])[0])
        out["by"][layer] = [list(r) for r in conn.execute(
            sql.SQL("SELECT {c}::text, {n} FROM {t} GROUP BY 1").format(c=col, n=n, t=table)).fetchall()]
    first = sql.Identifier(pg_columns([spec.layers[_report(spec).by[0]]])[0])
    out["total"], out["unlocated"] = conn.execute(sql.SQL(
        "SELECT {n}, (SELECT {n} FROM {t} WHERE {c} IS NULL AND {e} IS NOT NULL) FROM {t}").format(
        n=n, t=table, c=first, e=sql.Identifier(ERROR_COL))).fetchone()
    date_column = _report(spec).date_column
    if date_column:
        d = sql.Identifier(pg_columns([date_column])[0])
        lo, hi = conn.execute(sql.SQL("SELECT min({d})::text, max({d})::text FROM {t}").format(d=d, t=table)).fetchone()
        out["dates"] = [lo[:10], hi[:10]] if lo else None
    return out


def counts_from_csv(path: Path, spec: DatasetSpec) -> dict:
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as pacsv

    cols = list(dict.fromkeys([spec.layers[layer] for layer in _report(spec).by] + list(_report(spec).entity_id)
                              + [ERROR_COL] + ([_report(spec).date_column] if _report(spec).date_column else [])))
    text = {c: pa.string() for c in cols if c != _report(spec).date_column}
    table = pacsv.read_csv(path, convert_options=pacsv.ConvertOptions(  # an empty cell is "no district"
        include_columns=cols, column_types=text, strings_can_be_null=True))
    ids = list(_report(spec).entity_id)
    key = (table.column(ids[0]) if len(ids) == 1 else
           pc.binary_join_element_wise(*[pc.fill_null(table.column(c), "") for c in ids], "\x1f")) if ids else None
    table = table.append_column("__key", key if key is not None else pa.array(range(table.num_rows)))

    def count(t) -> int:
        return len(pc.unique(t.column("__key"))) if ids else t.num_rows

    out: dict[str, Any] = {"by": {}, "total": count(table)}
    for layer in _report(spec).by:
        g = table.group_by(spec.layers[layer]).aggregate([("__key", "count_distinct")])
        out["by"][layer] = [list(r) for r in zip(g.column(spec.layers[layer]).to_pylist(),
                                                 g.column("__key_count_distinct").to_pylist())]
    first = spec.layers[_report(spec).by[0]]
    out["unlocated"] = count(table.filter(pc.and_(pc.is_null(table.column(first)),
                                                   pc.is_valid(table.column(ERROR_COL)))))
    if _report(spec).date_column:
        mm = pc.min_max(table.column(_report(spec).date_column))
        lo, hi = mm["min"].as_py(), mm["max"].as_py()
        out["dates"] = [str(lo)[:10], str(hi)[:10]] if lo is not None else None
    return out


def all_values_from_postgis(conn, layer: str) -> list[str] | None:
    """Every value of the layer (e.g. the 9 districts) from its newest boundary table, or None without one."""
    from psycopg import sql

    view = f"boundary_{layer}"
    if not conn.execute("SELECT to_regclass(%s) IS NOT NULL", (view,)).fetchone()[0]:
        return None
    return [r[0] for r in conn.execute(sql.SQL("SELECT DISTINCT key FROM {}").format(sql.Identifier(view)))]


def all_values_from_files(layers) -> dict[str, list[str]]:
    """The same from the layer files the service reads (ENRICH_BOUNDARY_DIR or the cache), newest version."""
    from .boundaries import _store

    store = _store()
    return {layer: sorted({k for k in store.versions[layer][-1].keys if k is not None}) for layer in layers}


def aggregate(spec: DatasetSpec) -> dict:
    """{"by": {layer: [[value or None, count]]}, "all": {layer: [every value]}, "total", "unlocated", "dates"}."""
    from .publish import has_connection, postgis_hook_connection

    layers = list(_report(spec).by)
    # Without the database (published as a GeoPackage instead), the portal CSV holds the same rows.
    if spec.postgis and (has_connection(spec.postgis.conn_id) or not spec.portal):
        with postgis_hook_connection(spec.postgis.conn_id) as conn:
            out = counts_from_postgis(conn, spec)
            every = {layer: all_values_from_postgis(conn, layer) for layer in layers}
    else:
        out = counts_from_csv(_portal_csv(spec), spec)
        every = {layer: None for layer in layers}
    missing = [layer for layer, values in every.items() if values is None]
    if missing:
        try:
            every.update(all_values_from_files(missing))
        except Exception:  # no boundary files here either: the report says the zero rows may be missing
            pass
    out["all"] = every
    out.setdefault("dates", None)
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

        schema, name = split_table_name(_table(spec))
        with postgis_hook_connection(spec.postgis.conn_id) as conn:
            rows = conn.execute(sql.SQL("SELECT {} FROM {}").format(
                sql.SQL(", ").join(map(sql.Identifier, pg_columns(names))), sql.Identifier(schema, name))).fetchall()
        return {n: [r[i] for r in rows] for i, n in enumerate(names)}
    import pyarrow as pa
    import pyarrow.csv as pacsv

    csv = _portal_csv(spec)
    table = pacsv.read_csv(csv, convert_options=pacsv.ConvertOptions(
        include_columns=names, column_types={n: pa.string() for n in names}, strings_can_be_null=True))
    return {n: table.column(n).to_pylist() for n in names}


def table_rows(counts: dict, layer: str) -> list[dict]:
    """[{"value", "count"}] with every known value (zero when absent), districts in numeric order, "no district"
    last."""
    found = {v: int(c) for v, c in counts["by"][layer]}
    values = set(counts["all"].get(layer) or ()) | {v for v in found if v is not None}
    rows = [{"value": v, "count": found.get(v, 0)} for v in values]
    rows.sort(key=lambda r: (0, int(r["value"]), "") if r["value"].isdigit() else (1, 0, r["value"].lower()))
    if None in found:
        rows.append({"value": None, "count": found[None]})
    return rows


# ---- history ----------------------------------------------------------------------------------------------------

def history_path(spec: DatasetSpec) -> Path:
    from .workdir import work_root

    return work_root() / spec.report_dag_id / "history.json"


def previous_report(spec: DatasetSpec, run_id: str) -> dict | None:
    """The last report sent by another run (a re-run of this run compares with the one before, not itself)."""
    path = history_path(spec)
    if not path.exists():
        return None
    entries = [e for e in json.loads(path.read_text()) if e["run_id"] != run_id]
    return entries[-1] if entries else None


def remember(spec: DatasetSpec, run_id: str, at: str, counts: dict) -> None:
    from .workdir import atomic_path

    path = history_path(spec)
    entries = [e for e in (json.loads(path.read_text()) if path.exists() else []) if e["run_id"] != run_id]
    entries.append({"run_id": run_id, "at": at, "total": counts["total"],
                    "by": {layer: {("" if v is None else v): c for v, c in rows}
                           for layer, rows in counts["by"].items()}})
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(entries[-HISTORY_KEEP:], indent=1))


# ---- rendering --------------------------------------------------------------------------------------------------

def _label(layer: str, value: str | None) -> str:
    if value is None:
        return NONE_LABEL if layer == "council_district" else f"No {layer.replace('_', ' ')}"
    return f"District {value}" if layer == "council_district" else value


def _day(iso: str) -> str:
    d = datetime.fromisoformat(iso)
    return f"{d:%B} {d.day}, {d.year}"


def _change(now: int, before: int | None) -> str:
    if before is None:
        return "new"
    d = now - before
    return "no change" if d == 0 else f"{d:+,}"


def render_chart(spec: DatasetSpec, counts: dict, dest: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .workdir import atomic_path

    layer = _report(spec).by[0]
    rows = table_rows(counts, layer)
    fig, ax = plt.subplots(figsize=(7.5, 3.8), dpi=100)
    labels = [_label(layer, r["value"]).replace("District ", "") if r["value"] is not None else "no district"
              for r in rows]
    ax.bar(labels, [r["count"] for r in rows],
           color=["#9aa" if r["value"] is None else "#1f5f8b" for r in rows])
    ax.set_title(f"{_report(spec).entity.capitalize()} per {layer.replace('_', ' ')}")
    ax.set_xlabel(layer.replace("_", " "))
    ax.set_ylabel(_report(spec).entity)
    for i, r in enumerate(rows):
        ax.annotate(f"{r['count']:,}", (i, r["count"]), ha="center", va="bottom", fontsize=8)
    fig.tight_layout()
    with atomic_path(dest) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return dest


def render_html(spec: DatasetSpec, counts: dict, as_of: str, previous: dict | None, chart_cid: str) -> str:
    """The message body. `as_of`: when the counted publication was made (ISO); `previous`: the last report."""
    rep = _report(spec)
    what = rep.entity
    first = rep.by[0]
    e = html.escape
    total = counts["total"]
    parts = [f"<h2>{e(what.capitalize())} per {e(first.replace('_', ' '))}</h2>"]
    period = f"Counts of {e(what)} in the data published on {e(_day(as_of))}"
    if previous:
        period += f", compared with the previous report of {e(_day(previous['at']))}"
        diff = total - previous["total"]
        trend = ("the same total as then" if diff == 0 else
                 f"{abs(diff):,} {'more' if diff > 0 else 'fewer'} than then ({previous['total']:,})")
    else:
        period += " (the first report: no earlier figures to compare with)"
        trend = None
    parts.append(f"<p>{period}.</p>")
    if counts.get("dates") and rep.date_column:
        lo, hi = counts["dates"]
        parts.append(f"<p>Dates in the data ({e(rep.date_column.replace('_', ' '))}): {e(_day(lo))} "
                     f"to {e(_day(hi))}.</p>")
    parts.append(f"<p><b>{total:,} {e(what)}</b> in all" + (f", {e(trend)}" if trend else "") + ".</p>")
    if rep.entity_id:
        parts.append(f"<p>Each of the {e(what)} is counted once (by {e(', '.join(rep.entity_id))}), "
                     f"even where the data has several rows for it.</p>")
    parts.append(f"<p><img src='cid:{e(chart_cid)}' alt='{e(what)} per {e(first.replace('_', ' '))}' "
                 f"width='750'></p>")
    for layer in rep.by:
        rows = table_rows(counts, layer)
        before = (previous or {}).get("by", {}).get(layer)
        title = layer.replace("_", " ")
        shown = rows
        if layer != first:  # many neighborhoods: the largest, then the rest in one sentence
            named = sorted((r for r in rows if r["value"] is not None and r["count"]), key=lambda r: -r["count"])
            shown, rest = named[: rep.top], named[rep.top:]
            zero = sum(1 for r in rows if r["value"] is not None and not r["count"])
        parts.append(f"<h3>{e(what.capitalize())} per {e(title)}</h3><table border='1' cellpadding='3' "
                     f"style='border-collapse:collapse'><tr><th>{e(title)}</th><th>{e(what)}</th>"
                     f"<th>share</th><th>change since the last report</th></tr>")
        for r in shown:
            prev = None if before is None else before.get("" if r["value"] is None else r["value"], 0)
            parts.append(f"<tr><td>{e(_label(layer, r['value']))}</td><td align='right'>{r['count']:,}</td>"
                         f"<td align='right'>{(r['count'] / total if total else 0):.1%}</td>"
                         f"<td align='right'>{e(_change(r['count'], prev)) if before is not None else '-'}</td></tr>")
        parts.append("</table>")
        if layer != first:
            note = []
            if rest:
                note.append(f"{len(rest)} more {e(title)}s have {sum(r['count'] for r in rest):,} {e(what)} "
                            f"between them")
            if zero:
                note.append(f"{zero} of the {len(named) + zero} {e(title)}s have none")
            if note:
                text = "; ".join(note)
                parts.append(f"<p>{text[0].upper()}{text[1:]}.</p>")
    none = next((r["count"] for r in table_rows(counts, first) if r["value"] is None), 0)
    if none:
        unlocated = counts.get("unlocated") or 0
        outside = none - unlocated
        why = []
        if unlocated:
            why.append(f"{unlocated:,} have no usable location in the source data (missing coordinates, or a "
                       f"placeholder position used when the location is unknown)")
        if outside:
            why.append(f"{outside:,} are located outside the City of San Diego's {e(first.replace('_', ' '))}s")
        parts.append(f"<p><b>{e(_label(first, None))}</b>: {none:,} {e(what)} could not be placed in a "
                     f"{e(first.replace('_', ' '))}: " + "; ".join(why) + ".</p>")
    if not counts["all"].get(first):
        parts.append(f"<p>The full list of {e(first.replace('_', ' '))}s was not available: those with no "
                     f"{e(what)} may be missing from the table.</p>")
    if counts.get("match_quality"):
        from .geocode import quality_html

        parts.append(quality_html(counts["match_quality"], _report(spec).by[0]))
    return "\n".join(parts)


# ---- sending ----------------------------------------------------------------------------------------------------

def send(spec: DatasetSpec, subject: str, html_body: str, chart: Path) -> None:
    """One message: the HTML with the chart shown in it (multipart/related, the PNG inline by Content-ID)."""
    from email.mime.image import MIMEImage

    from airflow.providers.smtp.hooks.smtp import SmtpHook

    class InlineChartHook(SmtpHook):
        # The provider attaches files (Content-Disposition: attachment); the chart is part of the text instead.
        def _build_mime_message(self, *args, **kwargs):
            msg, recipients = super()._build_mime_message(*args, **kwargs)
            image = MIMEImage(Path(chart).read_bytes(), "png")
            image.add_header("Content-ID", f"<{chart.name}>")
            image.add_header("Content-Disposition", "inline", filename=chart.name)
            msg.attach(image)
            return msg, recipients

    with InlineChartHook(smtp_conn_id=_report(spec).conn_id) as hook:
        hook.send_email_smtp(to=list(_report(spec).recipients), subject=subject, html_content=html_body,
                             mime_subtype="related")
