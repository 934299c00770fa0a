"""Geocoder accuracy and speed on the real reference (run by hand):

    .venv/bin/python bench/geocode.py [--records 200000] [--http-batch 10000] [--no-http] [--smoke]

Accuracy: four ground truths, each as a table by match level (count, share, median and 95th-percentile error in
metres, share within 100 m), plus the issue's floors on what the reference covers:
  - held-back address points (one in ten left out of the reference, then geocoded from "number street" + ZIP);
  - the reference's own address points asked for without a ZIP (exact matches; the farthest must stay < 250 m);
  - parking meters: their hundred-block addresses (`sub_area`) against the meters' own coordinates;
  - transit stops named for an intersection ("Garnet Av & Cass St") against the stop's coordinates.
Speed: a mixed batch of real addresses (address points in three spellings, numbers inside segment ranges,
hundred blocks, intersections, junk), in process with the result cache off (warm: imports and first calls done
on another batch and another Geocoder), then over HTTP on loopback in batches (JSON and Arrow).
--smoke: 3,000 records (1,000 over HTTP), every table in seconds; its figures mean nothing (CI runs it so the script
keeps working: tests/test_bench_smoke.py).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.ipc as ipc

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from tests.conftest import ADDRESS, BOUNDARIES, DATA, POINTS, _free_port  # noqa: E402  (the data's one reader)

METERS = POINTS / "treas_parking_meters_loc_datasd.csv"
STOPS = POINTS / "transit_stops_datasd.geojson"
LAYERS = "council_district,neighborhood,zip"


def accuracy(files, zip_points) -> None:
    from enrich_service.geocode import evaluate
    from enrich_service.geocode.matcher import Geocoder
    from enrich_service.geocode.reference import load_reference

    geocoder = Geocoder(load_reference(files, zip_points))
    evals = [evaluate.held_back_points(files, zip_points), evaluate.reference_points(geocoder, files),
             evaluate.parking_meters(geocoder, METERS), evaluate.transit_intersections(geocoder, STOPS)]
    pd.set_option("display.width", 200)
    for e in evals:
        table = pd.DataFrame(e.table()).drop(columns="set").set_index("level")
        print(f"\n{e.name}: {len(e.addresses):,} addresses, match rate {e.match_rate:.1%}")
        print(table.to_string())
        print(f"  covered by the reference: {e.covered.sum():,}; within {evaluate.WITHIN_M:g} m: "
              f"{e.covered_within:.1%} (floor 95%); farthest exact match: {e.exact_max_m:.0f} m (ceiling "
              f"{evaluate.EXACT_MAX_M:g} m)")


def tagging(index, files) -> None:
    """Wrong tags per match level on the truth sets (enrich_service/geocode/tag_accuracy.py): the tagging rule."""
    from enrich_service.geocode import tag_accuracy

    print("\ntags given and wrong, per truth set and match level (given = a key, not null; wrong = not the key at "
          "the true coordinates)")
    head = f"{'set':38} {'level':14} {'n':>6}" + "".join(f" {k[:12] + ' tag/wrong':>22}" for k in tag_accuracy.LAYERS)
    print(head)
    for check in tag_accuracy.truth_sets(index, files, METERS, STOPS):
        for r in check.rows():
            if r["level"] in ("none", "all"):
                continue
            cells = "".join(f" {r[k + '_tagged']:>9.1%} {r[k + '_wrong']:>5}/{r[k + '_given']:<6}"
                            for k in tag_accuracy.LAYERS)
            print(f"{check.name:38} {r['level']:14} {r['n']:>6}{cells}")


def collisions(index) -> None:
    """The police collisions file (dags/datasets/pd_collisions_2017.yaml): share per match level, share tagged."""
    import pyarrow.csv as pacsv

    sys.path.insert(0, str(REPO / "dags"))
    from enrich_pipeline.geocode import compose, match_quality
    from enrich_pipeline.spec import find_spec
    from enrich_service.geocode.join import Records, geocode_join

    spec = find_spec("pd_collisions_2017")
    table = pacsv.read_csv(DATA / "datasets" / "pd_collisions_2017_datasd.csv", convert_options=pacsv.ConvertOptions(
        column_types={c: pa.string() for c in ("street_no", "date_time")}))
    joined = geocode_join(index, Records(ids=None, addresses=compose(spec, table)), LAYERS.split(","),
                          use_cache=False)
    print(f"\npolice collisions 2017 ({table.num_rows:,} rows): share per match level, share of the level tagged")
    level = joined.geocoded.match.tolist()
    per = {k: match_quality(level, joined.result.layers[k].keys().tolist(),
                            joined.result.layers[k].rule_names().tolist()) for k in LAYERS.split(",")}
    print(f"{'level':14} {'rows':>7} {'share':>7}" + "".join(f" {k:>18}" for k in LAYERS.split(",")))
    for i, r in enumerate(per["council_district"]):
        print(f"{r['level']:14} {r['rows']:>7,} {r['share']:>7.1%}" +
              "".join(f" {per[k][i]['tagged_share']:>18.1%}" for k in LAYERS.split(",")))
    n = len(level)
    print(f"{'all':14} {n:>7,} {1:>7.1%}" + "".join(
        f" {sum(r['tagged'] for r in per[k]) / n:>18.1%}" for k in LAYERS.split(",")))


def in_process(files, zip_points, index, records: list[str], distinct: list[str]) -> None:
    from enrich_service.geocode.cache import ResultCache
    from enrich_service.geocode.join import Records, geocode_join
    from enrich_service.geocode.matcher import Geocoder
    from enrich_service.geocode.reference import load_reference

    reference = load_reference(files, zip_points)
    Geocoder(reference).geocode(distinct[: len(distinct) // 10], use_cache=False)  # warm: first calls, imports
    print(f"\nin process, result cache off ({len(distinct):,} distinct addresses in the mix)")
    # Wall clock, and per CPU-second of this process: on a machine shared with other work the second is the
    # figure a dedicated core would give.
    print(f"{'':52} {'records/s':>12} {'per CPU-s':>12}")

    def run(name: str, n: int, fn, *args) -> None:
        w0, c0 = time.perf_counter(), time.process_time()
        fn(*args)
        wall, cpu = time.perf_counter() - w0, time.process_time() - c0
        print(f"{name:52} {n / wall:12,.0f} {n / cpu:12,.0f}", flush=True)

    for name, batch in ((f"{len(records):,} records (repeats deduplicated)", records),
                        (f"{len(distinct):,} distinct addresses", distinct)):
        geocoder = Geocoder(reference)  # fresh: no fuzzy-name memo from the warm-up
        run(f"geocode {name}", len(batch), geocoder.geocode, batch, None, False)
    index.geocoder = Geocoder(reference)
    run(f"geocode + tag 3 layers, {len(records):,} records", len(records), geocode_join, index,
        Records(ids=None, addresses=records), LAYERS.split(","), None, None, False)
    cached = Geocoder(reference, ResultCache("bench"))
    cached.geocode(records)
    run("geocode again with the result cache (a DAG re-run)", len(records), cached.geocode, records)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_service(port: int) -> subprocess.Popen:
    env = {**os.environ, "ENRICH_BOUNDARY_DIR": str(BOUNDARIES), "ENRICH_REFERENCE_DIR": str(ADDRESS)}
    proc = subprocess.Popen([sys.executable, "-m", "enrich_service.cli", "serve", "--port", str(port),
                             "--log-level", "warning"], env=env)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            raise SystemExit("service failed to start")
        time.sleep(0.1)
    proc.kill()
    raise SystemExit("service not ready in 120 s")


def over_http(records: list[str], batch: int, port: int) -> None:
    proc = start_service(port)
    url = f"http://127.0.0.1:{port}/v1/geocode-join"
    try:
        with httpx.Client(timeout=300) as client:
            print(f"\nover HTTP on loopback, batches of {batch:,} (client encode + request + decode included)")
            # Each pass sends every record once; the second pass of each transport meets the warm result cache.
            for transport in ("json", "arrow"):
                for attempt in ("cold cache", "warm cache"):
                    t0, server0 = time.perf_counter(), cpu_seconds(proc.pid)
                    for s in range(0, len(records), batch):
                        chunk = records[s:s + batch]
                        if transport == "json":
                            body = orjson.dumps({"records": [{"id": s + i, "address": a} for i, a in enumerate(chunk)],
                                                 "layers": LAYERS.split(",")})
                            r = client.post(url, content=body, headers={"content-type": "application/json"})
                            r.raise_for_status()
                            assert len(orjson.loads(r.content)["results"]) == len(chunk)
                        else:
                            table = pa.table({"id": np.arange(s, s + len(chunk)), "address": chunk})
                            sink = pa.BufferOutputStream()
                            with ipc.new_stream(sink, table.schema) as w:
                                w.write_table(table)
                            r = client.post(f"{url}?layers={LAYERS}", content=sink.getvalue().to_pybytes(),
                                            headers={"content-type": "application/vnd.apache.arrow.stream"})
                            r.raise_for_status()
                            assert ipc.open_stream(r.content).read_all().num_rows == len(chunk)
                    rate = len(records) / (time.perf_counter() - t0)
                    # /proc counts CPU in clock ticks (10 ms): a smoke batch can take less than one
                    server = len(records) / max(cpu_seconds(proc.pid) - server0, 1 / os.sysconf("SC_CLK_TCK"))
                    print(f"{transport:6} {attempt:12} {rate:12,.0f} records/s {server:12,.0f} per server CPU-s",
                          flush=True)
                    if transport == "json" and attempt == "warm cache":
                        break
                # a new set of records for the next transport's cold pass
                records = [f"{a} " for a in records]
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=200_000)
    ap.add_argument("--http-batch", type=int, default=10_000)
    ap.add_argument("--http-records", type=int, default=100_000)
    ap.add_argument("--no-http", action="store_true")
    ap.add_argument("--port", type=int, help="the service's port (default: a free one)")
    ap.add_argument("--tags-only", action="store_true", help="only the wrong-tag and collisions tables")
    ap.add_argument("--smoke", action="store_true", help="3,000 records, 1,000 over HTTP: every table in seconds")
    args = ap.parse_args()
    if args.smoke:
        args.records, args.http_records, args.http_batch = 3_000, 1_000, 500
    args.port = args.port or _free_port()

    from enrich_service.geocode import zip_points
    from enrich_service.geocode.evaluate import mixed_addresses
    from enrich_service.geocode.reference import load_reference, resolve_reference
    from enrich_service.index import build_index
    from enrich_service.settings import Settings

    settings = Settings(boundary_dir=BOUNDARIES, reference_dir=ADDRESS)
    files = resolve_reference(settings)
    index = build_index(settings)
    zips = zip_points(index.store)
    t0 = time.perf_counter()
    load_reference(files, zips)
    print(f"machine: {os.cpu_count()} cores; reference build {time.perf_counter() - t0:.2f}s "
          f"(from the disk cache at start-up: {index.geocoder.ref.load_seconds:.2f}s)")
    if not args.tags_only:
        accuracy(files, zips)
    tagging(index, files)
    collisions(index)
    if args.tags_only:
        return
    records, distinct = mixed_addresses(files, METERS, STOPS, args.records)
    if args.smoke:
        distinct = distinct[:args.records]
    in_process(files, zips, index, records, distinct)
    if not args.no_http:
        over_http(records[: args.http_records], args.http_batch, args.port)


if __name__ == "__main__":
    main()
