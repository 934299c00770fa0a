"""A dataset DAG's work at scale, stage by stage (run by hand):

    .venv/bin/python bench/pipeline.py [--rows 1000000] [--batch-rows 250000] [--workers 2] [--no-postgis]
    .venv/bin/python bench/pipeline.py --smoke      # 3,000 rows in batches of 1,000: that it runs, in seconds (CI)

Synthesizes a meters-like CSV of --rows rows from the real points in ../shared/data/points (parking meters and
transit stops, resampled and jittered by ~30 m, 0.1% with the 32.0,-117.0 placeholder), then runs the same pipeline
functions the DAG tasks call, with a spec in the shipped YAML format: extract → enrich (batches through a live
service on loopback over Arrow, --workers at a time, as mapped tasks on several workers would) → assemble →
quality gate → publish to PostGIS (COPY + swap; --no-postgis to skip) → publish the CSV and GeoJSON → metadata.
Prints seconds and rows/s per stage and the end-to-end total (service start-up excluded: it is long-running).
Airflow's own scheduling overhead is not in these figures (a few seconds per run; see docs/dags.md).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "dags")]
DATA = Path(os.environ.get("ENRICH_SHARED_DATA", REPO.parent / "shared" / "data"))
PG_DSN = os.environ.get("ENRICH_POSTGIS_DSN", os.environ.get("ENRICH_TEST_POSTGIS_DSN",
                                                             "postgresql://postgres@127.0.0.1:5432/test"))
SPEC = """
name: bench_pipeline
description: Synthetic meters (bench/pipeline.py)
source: {{kind: csv, path: "{source}", column_types: {{pole: string}}}}
id: row_id
coordinates: {{lon: lng, lat: lat, crs: EPSG:4326, placeholders: [[-117.0, 32.0]]}}
layers: {{council_district: council_district, neighborhood: community_plan_area, zip: zip_code}}
quality: {{layer: council_district, within: city_limits, max_unmatched_share: 0.001, max_unlocated_share: 0.01}}
batch_rows: {batch_rows}
outputs:
  postgis: {{table: public.bench_pipeline_enriched}}
  portal: {{folder: "{publish}", basename: bench_pipeline_enriched}}
"""


def synthesize(n: int, dest: Path, seed: int = 7) -> None:
    """n rows resampled from the real meters and stops, coordinates jittered (sd ~30 m), placeholders kept rare."""
    import json as _json

    meters = pacsv.read_csv(DATA / "points" / "treas_parking_meters_loc_datasd.csv",
                            convert_options=pacsv.ConvertOptions(column_types={"pole": pa.string()}))
    stops = _json.loads((DATA / "points" / "transit_stops_datasd.geojson").read_text())["features"]
    mx = meters.column("lng").to_numpy().astype(float)
    my = meters.column("lat").to_numpy().astype(float)
    real = (np.abs(mx + 117.0) > 1e-9) | (np.abs(my - 32.0) > 1e-9)
    sx = np.array([f["geometry"]["coordinates"][0] for f in stops if f.get("geometry")])
    sy = np.array([f["geometry"]["coordinates"][1] for f in stops if f.get("geometry")])
    x = np.concatenate([mx[real], sx])
    y = np.concatenate([my[real], sy])
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, len(x), n)
    lon = np.round(x[pick] + rng.normal(0, 0.0003, n), 7)
    lat = np.round(y[pick] + rng.normal(0, 0.0003, n), 7)
    fake = rng.random(n) < 0.001
    lon[fake], lat[fake] = -117.0, 32.0
    src = np.minimum(pick, meters.num_rows - 1)  # borrow a real meter's attributes for every row
    table = pa.table({
        "row_id": pa.array(np.arange(n, dtype=np.int64)),
        "zone": meters.column("zone").take(pa.array(src)),
        "area": meters.column("area").take(pa.array(src)),
        "sub_area": meters.column("sub_area").take(pa.array(src)),
        "pole": meters.column("pole").take(pa.array(src)),
        "config_name": meters.column("config_name").take(pa.array(src)),
        "lng": lon, "lat": lat,
    })
    pacsv.write_csv(table, dest)


def drop_publication(table: str) -> None:
    """The published view, its version tables and its catalog row (publish_postgis publishes a view on a version
    table, recorded in enrich_publications)."""
    import psycopg
    from psycopg import sql

    schema, name = table.split(".")
    with psycopg.connect(PG_DSN, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP VIEW IF EXISTS {}").format(sql.Identifier(schema, name)))
        for (version,) in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = %s AND tablename LIKE %s",
                                       (schema, f"{name}\\_\\_p%")).fetchall():
            conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(schema, version)))
        if conn.execute("SELECT to_regclass(%s) IS NOT NULL", (f"{schema}.enrich_publications",)).fetchone() == (True,):
            conn.execute(sql.SQL("DELETE FROM {} WHERE table_name = %s").format(
                sql.Identifier(schema, "enrich_publications")), (table,))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--batch-rows", type=int, default=250_000)
    ap.add_argument("--workers", type=int, default=2, help="batches enriched at once (default: %(default)s)")
    ap.add_argument("--no-postgis", action="store_true")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder and print it")
    ap.add_argument("--smoke", action="store_true",
                    help="a few thousand rows (3,000 in batches of 1,000): checks that every stage runs, in seconds")
    args = ap.parse_args()
    if args.smoke:
        args.rows, args.batch_rows = 3_000, 1_000

    import psycopg

    from enrich_pipeline.assemble import assemble, plausible_area
    from enrich_pipeline.enrich import enrich_batch, plan_batches
    from enrich_pipeline.extract import extract
    from enrich_pipeline.publish import publish_postgis, unmatched, write_csv, write_metadata, write_spatial
    from enrich_pipeline.quality import check, measure
    from enrich_pipeline.spec import load_spec
    from enrich_service.client import EnrichClient, LocalService
    from enrich_service.layers.sources import sha256_of

    root = Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
    work, publish = root / "work", root / "publish"
    work.mkdir()
    source = root / "source.csv"
    t = time.perf_counter()
    synthesize(args.rows, source)
    print(f"synthesized {args.rows:,} rows ({source.stat().st_size / 1e6:.0f} MB CSV) in "
          f"{time.perf_counter() - t:.1f} s (not counted)")
    spec_path = root / "bench_pipeline.yaml"
    spec_path.write_text(SPEC.format(source=source, batch_rows=args.batch_rows, publish=publish))
    spec = load_spec(spec_path)
    assert spec.postgis is not None
    table = spec.postgis.table

    t = time.perf_counter()
    service = LocalService({"ENRICH_BOUNDARY_DIR": str(DATA / "boundaries")}, log=str(root / "service.log")).start()
    print(f"service ready on {service.url} in {time.perf_counter() - t:.1f} s (not counted)\n")
    stages: list[tuple[str, float, str]] = []

    def stage(name: str, fn, note=lambda r: ""):
        t0 = time.perf_counter()
        result = fn()
        took = time.perf_counter() - t0
        stages.append((name, took, note(result)))
        print(f"  {name:<16} {took:7.2f} s  {args.rows / took:>12,.0f} rows/s  {stages[-1][2]}", flush=True)
        return result

    try:
        extracted = stage("extract", lambda: extract(spec, work / "extract.parquet"),
                          lambda r: f"{len(r['columns'])} columns")
        path = Path(extracted["path"])

        def enrich_all():
            def one(b):
                with EnrichClient(service.url) as client:
                    return enrich_batch(spec, path, work, b["batch"], client)
            with ThreadPoolExecutor(args.workers) as pool:
                return list(pool.map(one, plan_batches(path)))

        batches = stage("enrich", enrich_all, lambda r: f"{len(r)} batches, {args.workers} at a time, Arrow")
        with EnrichClient(service.url) as client:  # the DAG's assemble asks the service connection for this
            area = plausible_area(spec, client.layers())
        assembled = stage("assemble", lambda: assemble(spec, path, work, batches, work / "enriched.parquet", area))
        enriched = Path(assembled["path"])

        def gate():
            stats = measure(spec, enriched)
            check(spec, stats)
            return stats

        stage("quality gate", gate, lambda s: f"{s['unmatched']} of {s['should_match']:,} in-city rows "
                                                f"unmatched, {s['unlocated']:,} unlocated")
        postgis = None
        if not args.no_postgis:
            def to_postgis():
                with psycopg.connect(PG_DSN, autocommit=True) as conn:
                    return publish_postgis(conn, table, enriched, comment="bench/pipeline.py")
            postgis = stage("publish postgis", to_postgis, lambda r: f"{r['table']} ({PG_DSN.rsplit('/', 1)[-1]})")
        csv = stage("publish csv", lambda: write_csv(enriched, publish / "bench_pipeline_enriched.csv"),
                    lambda p: f"{p.stat().st_size / 1e6:.0f} MB")
        geojson = stage("publish geojson", lambda: write_spatial(enriched, publish / "bench_pipeline_enriched.geojson",
                                                                 "GeoJSON"),
                        lambda p: f"{p.stat().st_size / 1e6:.0f} MB")
        stage("metadata", lambda: write_metadata(publish / "bench_pipeline_enriched.metadata.json", {
            "rows": assembled["rows"], "layers": assembled["layers"], "unmatched": unmatched(spec, enriched),
            "postgis": postgis, "files": {p.name: {"sha256": sha256_of(p)} for p in (csv, geojson)}}),
              lambda p: "sha256 of the files")
    finally:
        service.stop()
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
            if not args.no_postgis:
                drop_publication(table)

    total = sum(s for _, s, _ in stages)
    files = sum(s for n, s, _ in stages if n in ("publish csv", "publish geojson"))
    pg = sum(s for n, s, _ in stages if n == "publish postgis")
    print(f"\n  {'end to end':<16} {total:7.2f} s  {args.rows / total:>12,.0f} rows/s  (stages one after another)")
    if pg:
        overlap = total - min(pg, files)
        print(f"  {'':<16} {overlap:7.2f} s  with the two publish tasks in parallel, as the DAG runs them")
    if args.keep:
        print(f"\nkept {root}")
    print(json.dumps({"rows": args.rows, "batch_rows": args.batch_rows, "workers": args.workers,
                      "stages_s": {n: round(s, 2) for n, s, _ in stages}, "total_s": round(total, 2)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
