"""The main job (`bash scripts/run.sh`): one dataset's DAG end to end on this machine, then where its outputs are.

Starts the enrichment service on loopback, runs the dataset DAG (default: parking_meters) with Airflow's
`dag.test()` against a local SQLite metadata DB, and prints the published files, the PostGIS table (or the
GeoPackage written instead) and a per-district summary. The service it started is stopped on the way out.

Settings (environment; all optional on this machine):
  ENRICH_POSTGIS_DSN   publish to this PostGIS as well (e.g. postgresql://postgres@127.0.0.1:5432/postgres);
                       unset: a GeoPackage is written beside the portal files instead
  ENRICH_DATA_DIR      the source files (default ../shared/data)
  ENRICH_BOUNDARY_DIR  the layer files (default <ENRICH_DATA_DIR>/boundaries when it exists, else downloaded)
  ENRICH_PUBLISH_DIR   where portal files go (default out/publish); ENRICH_WORK_DIR: run folders (default out/work)
  AIRFLOW_HOME         default .airflow (SQLite metadata DB, created on first use)
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DAGS = REPO / "dags"


def environment(args: argparse.Namespace) -> dict[str, str]:
    """The settings the DAG run sees, each from the environment when set there, else this machine's default."""
    data = Path(os.environ.get("ENRICH_DATA_DIR", REPO.parent / "shared" / "data")).resolve()
    if not (data / "points").is_dir():
        sys.exit(f"the source data is expected in {data}/points: set ENRICH_DATA_DIR")
    env = {
        "ENRICH_DATA_DIR": str(data),
        "ENRICH_PUBLISH_DIR": os.environ.get("ENRICH_PUBLISH_DIR", str(REPO / "out" / "publish")),
        "ENRICH_WORK_DIR": os.environ.get("ENRICH_WORK_DIR", str(REPO / "out" / "work")),
        "AIRFLOW_HOME": os.environ.get("AIRFLOW_HOME", str(REPO / ".airflow")),
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": os.environ.get("AIRFLOW__LOGGING__LOGGING_LEVEL", "ERROR"),
        # A failing batch is retried (service restarting...), but a demo should not wait minutes to say so.
        "ENRICH_TASK_RETRIES": os.environ.get("ENRICH_TASK_RETRIES", "2"),
        "ENRICH_RETRY_DELAY_SECONDS": os.environ.get("ENRICH_RETRY_DELAY_SECONDS", "2"),
    }
    if "ENRICH_BOUNDARY_DIR" not in os.environ and (data / "boundaries").is_dir():
        env["ENRICH_BOUNDARY_DIR"] = str(data / "boundaries")
    if "ENRICH_REFERENCE_DIR" not in os.environ and (data / "address").is_dir():
        env["ENRICH_REFERENCE_DIR"] = str(data / "address")  # the geocoder's, for address-only datasets
    dsn = args.postgis_dsn or os.environ.get("ENRICH_POSTGIS_DSN")
    if dsn:
        env["AIRFLOW_CONN_ENRICH_POSTGIS"] = dsn
    else:
        env["ENRICH_POSTGIS_FALLBACK"] = "geopackage"
    return env


def migrate_airflow_db() -> None:
    home = Path(os.environ["AIRFLOW_HOME"])
    home.mkdir(parents=True, exist_ok=True)
    r = subprocess.run([str(Path(sys.executable).with_name("airflow")), "db", "migrate"], capture_output=True,
                       text=True)
    if r.returncode:
        sys.exit(f"airflow db migrate failed in {home}:\n{r.stderr[-3000:]}")


def task_table(dr) -> list[tuple[str, str, int, float]]:
    """(task, states, most tries, seconds) per task in the order they started; mapped tasks on one line."""
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from sqlalchemy import select

    rows: dict[str, dict] = {}
    with create_session() as session:
        for ti in session.scalars(select(TaskInstance).where(TaskInstance.dag_id == dr.dag_id,
                                                             TaskInstance.run_id == dr.run_id)):
            r = rows.setdefault(ti.task_id, {"n": 0, "states": set(), "tries": 0, "seconds": 0.0, "start": None})
            r["n"] += 1
            r["states"].add(str(ti.state))
            r["tries"] = max(r["tries"], ti.try_number)
            r["seconds"] += ti.duration or 0.0
            if ti.start_date and (r["start"] is None or ti.start_date < r["start"]):
                r["start"] = ti.start_date
    ordered = sorted(rows.items(), key=lambda kv: (kv[1]["start"] is None, kv[1]["start"] or datetime.min))
    return [(task + (f" [{r['n']}]" if r["n"] > 1 else ""), "/".join(sorted(r["states"])), r["tries"], r["seconds"])
            for task, r in ordered]


def summary(spec, folder: Path) -> str:
    """Rows per council district (and the unmatched share per layer), from the published CSV."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    column = spec.layers["council_district"]
    table = pacsv.read_csv(folder / f"{spec.portal.basename}.csv", convert_options=pacsv.ConvertOptions(
        include_columns=[column], column_types={column: pa.string()}, strings_can_be_null=True))
    grouped = table.group_by(column).aggregate([([], "count_all")])
    counts = dict(zip(grouped.column(column).to_pylist(), grouped.column("count_all").to_pylist()))
    order = sorted(counts, key=lambda v: (v is None, int(v) if v and v.isdigit() else 0, str(v)))
    meta = json.loads((folder / f"{spec.portal.basename}.metadata.json").read_text())
    lines = [f"{'council district':>16}  {'rows':>7}  share"]
    lines += [f"{v or 'no district':>16}  {counts[v]:>7,}  {counts[v] / max(table.num_rows, 1):6.1%}" for v in order]
    lines.append(f"{'total':>16}  {meta['rows']:>7,}")
    lines.append("unmatched per layer: " + ", ".join(
        f"{layer} {u['unmatched']:,} ({u['unmatched_share']:.1%})" for layer, u in meta["unmatched"].items()))
    q = meta["quality"]
    if q.get("match_levels"):  # address data: how sure the districts are, per match level
        lines.append("geocode match levels (rows, share tagged): " + ", ".join(
            f"{m['level']} {m['rows']:,} ({m['tagged_share']:.1%})" for m in q["match_levels"] if m["rows"]))
    else:
        within = "inside the city " if spec.quality.within else ""
        lines.append(f"quality gate: {q['unmatched']} of {q['should_match']:,} rows {within}without a district; "
                     f"{q['unlocated']} rows without usable coordinates")
    return "\n".join(lines)


def redact(dsn: str) -> str:
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(dsn)
    if parts.password:
        parts = parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@"))
    return urlunsplit(parts)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="parking_meters", help="the spec name in dags/datasets (default: %(default)s)")
    parser.add_argument("--postgis-dsn", help="publish to this PostGIS too (default: ENRICH_POSTGIS_DSN)")
    args = parser.parse_args()

    env = environment(args)
    os.environ.update(env)  # before Airflow is imported: it reads its configuration once
    sys.path.insert(0, str(DAGS))
    # `kill` (SIGTERM) unwinds like Ctrl-C, so the service started below is stopped either way.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    from enrich_pipeline.spec import find_spec
    from enrich_service.client import LocalService

    spec = find_spec(args.dataset)
    out = Path(env["ENRICH_PUBLISH_DIR"])
    out.mkdir(parents=True, exist_ok=True)
    print(f"dataset {spec.name}: {spec.path.relative_to(REPO)}; Airflow home {env['AIRFLOW_HOME']}", flush=True)
    t0 = time.perf_counter()
    migrate_airflow_db()

    key = secrets.token_urlsafe(24)  # this run's admin key: the service and its Airflow connection share it
    log = out.parent / "enrich-service.log"
    with LocalService({"ENRICH_API_KEYS": key}, log=str(log)) as service:
        print(f"service on {service.url} (pid {service.proc.pid}, log {log}), ready after "
              f"{time.perf_counter() - t0:.1f} s", flush=True)
        os.environ["AIRFLOW_CONN_ENRICH_SERVICE"] = service.url.replace("http://", f"http://:{key}@")

        import enrich_datasets

        dag = getattr(enrich_datasets, spec.dag_id)
        now = datetime.now(UTC)
        t1 = time.perf_counter()
        dr = dag.test(logical_date=now, run_after=now)
        took = time.perf_counter() - t1
    print("service stopped", flush=True)

    print(f"\nDAG {dr.dag_id} run {dr.run_id}: {dr.state} in {took:.1f} s")
    for task, state, tries, seconds in task_table(dr):
        print(f"  {task:<20} {state:<16} tries {tries}  {seconds:6.2f} s")
    if str(dr.state) != "success":
        print(f"\nthe run failed: see the task logs under {env['AIRFLOW_HOME']}/logs", file=sys.stderr)
        return 1

    from enrich_pipeline.spec import resolve
    from enrich_pipeline.workdir import run_dir

    print("\noutputs:")
    if spec.portal:
        folder = Path(resolve(spec.portal.folder))
        meta_path = folder / f"{spec.portal.basename}.metadata.json"
        meta = json.loads(meta_path.read_text())
        for p in [*(folder / name for name in meta["files"]), meta_path]:
            print(f"  {p}  ({p.stat().st_size / 1e6:.1f} MB)")
    published = (meta.get("postgis") if spec.portal else None) or {}  # what publish_postgis did
    if "geopackage" in published:
        print(f"  {published['geopackage']}  (GeoPackage, instead of PostGIS: set ENRICH_POSTGIS_DSN, e.g. "
              f"postgresql://postgres@127.0.0.1:5432/postgres, to publish there)")
    elif "table" in published:
        print(f"  PostGIS table {published['table']} ({published['rows']:,} rows) in "
              f"{redact(env['AIRFLOW_CONN_ENRICH_POSTGIS'])}")
    print(f"  run folder (extract, batches, enriched table): {run_dir(dr.dag_id, dr.run_id)}")
    if spec.portal:
        print("\n" + summary(spec, Path(resolve(spec.portal.folder))))
    print(f"\ndone in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
