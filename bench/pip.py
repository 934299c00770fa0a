"""Point-in-polygon throughput, side by side, in ONE run on the real layers (run by hand):

    .venv/bin/python bench/pip.py [--points 1000000] [--postgis-points 200000] [--big 10000000] [--smoke]
    .venv/bin/python bench/pip.py --voronoi 5000,50000   # layers of many small polygons only (issue 21)

Prints, per layer, geopandas.sjoin, PostGIS (plain GiST join and ST_Subdivide(geom, 256)), and the engine in
process; then the service over HTTP on loopback (client encode + request + decode included) per transport for all
three layers (JSON both as rows and as columns, each way); where the Arrow request's time goes, stage by stage
(the client's encode and decode, the server's stages from its Server-Timing header with the process's CPU, the
transfer) and the server's CPU seconds per request; start-up time and the service's RSS; last, issue 21's targets
(Arrow >= 30x, JSON >= 1.5x sjoin of the 3 layers) as met or NOT MET next to the measured ratios, with the load
average. Every figure as points/s and as a ratio to geopandas.sjoin.
--smoke: 3,000 points, one service start and one repeat, the same table in seconds; its figures mean nothing (CI
runs it so the script keeps working: tests/test_bench_smoke.py).
With --voronoi, the same comparison on synthetic layers of that many Voronoi cells over the city's bounding box,
added through a copy of the manifest, and the service's start-up with them.
"""

from __future__ import annotations

import argparse
import gc
import io
import os
import subprocess
import sys
import time
from pathlib import Path

import geopandas as gpd
import httpx
import numpy as np
import orjson
import psycopg
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.ipc as ipc

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench.voronoi import voronoi_manifest  # noqa: E402
from enrich_service.client import body_parts, read_answer  # noqa: E402
from enrich_service.io.arrow_stream import stream_parts  # noqa: E402
from tests.conftest import ADDRESS, BOUNDARIES, PG_DSN, _free_port  # noqa: E402  (the data's one reader)

ARROW_TARGET, JSON_TARGET = 30.0, 1.5  # issue 21: over HTTP, against sjoin of the same 3 layers
LAYERS = [("council_district", 1, "council_districts_2021_datasd.geojson"),
          ("neighborhood", 0, "cmty_plan_datasd.geojson"),
          ("zip", 0, "sd_county_zcta2010.geojson")]


def timed(fn, *args, repeat: int = 1):
    best = float("inf")
    out = None
    for _ in range(repeat):
        out = None  # the last answer freed first: one at a time in memory, as a client holds them
        t0 = time.perf_counter()
        out = fn(*args)
        best = min(best, time.perf_counter() - t0)
    return best, out


def uniform(bbox, n, seed):
    rng = np.random.default_rng(seed)
    return rng.uniform(bbox[0], bbox[2], n), rng.uniform(bbox[1], bbox[3], n)


def sjoin(polys: gpd.GeoDataFrame, pts: gpd.GeoDataFrame):
    # geopandas at its fastest: points built beforehand, predicate "within" (the polygon side is prepared;
    # "intersects" would test each point against unprepared polygons, 45x slower).
    return gpd.sjoin(pts, polys, predicate="within")


def postgis(conn, table: str, x, y, subdivide: bool) -> float:
    conn.execute("DROP TABLE IF EXISTS bench_pts")
    conn.execute("CREATE TEMP TABLE bench_pts (i int, geom geometry(Point, 4326))")
    with conn.cursor().copy("COPY bench_pts (i, geom) FROM STDIN") as copy:
        for i, (px, py) in enumerate(zip(x.tolist(), y.tolist())):
            copy.write_row((i, f"SRID=4326;POINT({px!r} {py!r})"))
    conn.execute("ANALYZE bench_pts")
    poly = table
    if subdivide:
        conn.execute("DROP TABLE IF EXISTS bench_sub")
        conn.execute(f"CREATE TEMP TABLE bench_sub AS SELECT fid, ST_Subdivide(geom, 256) geom FROM {table}")
        conn.execute("CREATE INDEX ON bench_sub USING gist (geom); ANALYZE bench_sub")
        poly = "bench_sub"
    t0 = time.perf_counter()
    conn.execute(f"CREATE TEMP TABLE bench_out AS SELECT p.i, b.fid FROM bench_pts p LEFT JOIN {poly} b "
                 f"ON ST_Contains(b.geom, p.geom)")
    elapsed = time.perf_counter() - t0
    conn.execute("DROP TABLE bench_out")
    return elapsed


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def start_service(port: int, env: dict) -> tuple[subprocess.Popen, float]:
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "enrich_service.cli", "serve", "--port", str(port),
                             "--log-level", "warning"], env={**os.environ, **env})
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return proc, time.perf_counter() - t0
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            raise SystemExit("service failed to start")
        time.sleep(0.05)


def http_arrow(client, url, x, y, stages: dict | None = None):
    """As enrich_service.client sends a table and reads the answer: the Arrow stream's parts over the table's own
    columns (stream_parts), in 1 MB views (body_parts); the answer read into one buffer (read_answer)."""
    t0 = time.perf_counter()
    parts, length = body_parts(stream_parts(pa.table({"id": np.arange(len(x)), "lon": x, "lat": y})))
    t1 = time.perf_counter()
    with client.stream("POST", f"{url}/v1/pip?layers=council_district,neighborhood,zip", content=parts,
                       headers={"content-type": "application/vnd.apache.arrow.stream", **length}) as r:
        r.raise_for_status()
        body = read_answer(r)
    t2 = time.perf_counter()
    out = ipc.open_stream(pa.py_buffer(body)).read_all()
    if stages is not None:
        stages.update(client_encode=t1 - t0, request=t2 - t1, client_decode=time.perf_counter() - t2,
                      server=server_timing(r.headers.get("server-timing", "")),
                      sizes=(sum(map(len, parts)), len(body)))
    return out


def http_json(client, url, x, y):
    """The row form both ways: a list of {id, lon, lat} objects in, a list of objects out."""
    points = [{"id": i, "lon": a, "lat": b} for i, (a, b) in enumerate(zip(x.tolist(), y.tolist()))]
    parts, length = body_parts(orjson.dumps({"points": points}))
    r = client.post(f"{url}/v1/pip", content=parts, headers={"content-type": "application/json", **length})
    r.raise_for_status()
    return orjson.loads(r.content)["results"]


def http_json_columns(client, url, x, y):
    """The columnar form both ways, as enrich_service.client sends JSON: {points: {id, lon, lat}} (arrays) in,
    shape=columns out."""
    body = orjson.dumps({"points": {"id": np.arange(len(x)), "lon": x, "lat": y}}, option=orjson.OPT_SERIALIZE_NUMPY)
    parts, length = body_parts(body)
    with client.stream("POST", f"{url}/v1/pip?shape=columns", content=parts,
                       headers={"content-type": "application/json", **length}) as r:
        r.raise_for_status()
        return orjson.loads(read_answer(r))["results"]


def server_timing(header: str) -> dict[str, tuple[float, float]]:
    """Server-Timing (read;dur=..;desc="cpu .."): stage -> (wall s, process CPU s)."""
    out = {}
    for part in filter(None, (p.strip() for p in header.split(","))):
        name, *fields = part.split(";")
        values = dict(f.split("=", 1) for f in fields)
        out[name] = (float(values.get("dur", "nan")) / 1000,
                     float(values.get("desc", '"cpu nan"').strip('"').split()[-1]) / 1000)
    return out


def cpu_seconds(pid: int) -> float:
    """The process's user + system CPU time (/proc/<pid>/stat, in clock ticks)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def arrow_breakdown(client, url, x, y, pid: int, repeat: int) -> None:
    """Where the Arrow request's time goes, the fastest of `repeat`: the client's encode and decode, the server's
    stages (Server-Timing: wall and the process's CPU), and the rest (both bodies in transit, HTTP parsing, the
    framework); then the server's CPU seconds per request, from /proc, over the same requests."""
    runs = []
    cpu = []
    for _ in range(repeat):
        stages: dict = {}
        c0 = cpu_seconds(pid)
        http_arrow(client, url, x, y, stages)
        cpu.append(cpu_seconds(pid) - c0)
        runs.append(stages)
    best = min(runs, key=lambda s: s["client_encode"] + s["request"] + s["client_decode"])
    server = best["server"]
    in_server = sum(wall for wall, _ in server.values())
    total = best["client_encode"] + best["request"] + best["client_decode"]
    print(f"\nHTTP arrow, {len(x):,} points, 3 layers: where the time goes (fastest of {repeat}; "
          f"body {best['sizes'][0] / 1e6:.1f} MB in, {best['sizes'][1] / 1e6:.1f} MB out)")
    print(f"  {'stage':44} {'wall ms':>9} {'server CPU ms':>14}")
    print(f"  {'client encode (Arrow stream)':44} {best['client_encode'] * 1000:9.1f}")
    for name, (wall, stage_cpu) in server.items():
        label = {"read": "server: body arrives (transfer in)", "decode": "server: decode + checks",
                 "tag": "server: prepare + tag", "encode": "server: answer table + Arrow stream"}.get(name, name)
        print(f"  {label:44} {wall * 1000:9.1f} {stage_cpu * 1000:14.1f}")
    print(f"  {'answer transfer, HTTP, framework (the rest)':44} {(best['request'] - in_server) * 1000:9.1f}")
    print(f"  {'client decode (Arrow stream)':44} {best['client_decode'] * 1000:9.1f}")
    print(f"  {'total':44} {total * 1000:9.1f}")
    print(f"  server process CPU per request (/proc, all of it): min {min(cpu) * 1000:.0f} ms, "
          f"median {sorted(cpu)[len(cpu) // 2] * 1000:.0f} ms")


def http_csv(client, url, x, y):
    sink = io.BytesIO()
    pacsv.write_csv(pa.table({"id": np.arange(len(x)), "lon": x, "lat": y}), sink)
    r = client.post(f"{url}/v1/pip?layers=council_district,neighborhood,zip", content=sink.getvalue(),
                    headers={"content-type": "text/csv"})
    r.raise_for_status()
    return pacsv.read_csv(io.BytesIO(r.content))


def ndjson_lines(x, y, chunk=100_000):
    for s in range(0, len(x), chunk):
        yield b"".join(orjson.dumps({"id": s + i, "lon": a, "lat": b}) + b"\n"
                       for i, (a, b) in enumerate(zip(x[s:s + chunk].tolist(), y[s:s + chunk].tolist())))


def http_ndjson(client, url, x, y):
    rows = 0
    with client.stream("POST", f"{url}/v1/pip?layers=council_district,neighborhood,zip",
                       content=ndjson_lines(x, y), headers={"content-type": "application/x-ndjson"}) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if line:
                orjson.loads(line)
                rows += 1
    return rows


VORONOI_TARGET = 50.0  # issue 21: the engine in process against geopandas.sjoin, per layer of many polygons
STARTUP_TARGET_S = 5.0  # issue 21: start-up with a 50,000-polygon layer, its indexes cached


def voronoi_bench(counts: list[int], n: int, port: int, starts: int = 3) -> None:
    """sjoin and the engine in process on each synthetic layer, then the service's start-up with all of them: once
    with an empty cache folder (every layer parsed, every index and the geocoder built) and then warm."""
    import tempfile

    from enrich_service.engine.tagger import Engine
    from enrich_service.layers.store import LayerStore
    from enrich_service.settings import Settings

    settings = Settings(boundary_dir=BOUNDARIES)
    city = LayerStore.load(settings.manifest, BOUNDARIES, settings.cache_dir).versions["city_limits"][0].bbox
    folder = Path(settings.cache_dir) / "bench-voronoi"
    manifest, names = voronoi_manifest(folder, settings.manifest, BOUNDARIES, city, counts)
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}; {n:,} uniform points over the "
          f"city's bounding box per layer\n")
    print(f"{'':44} {'points/s':>14} {'x sjoin':>9}", flush=True)
    rows = Rows()
    verdicts = []
    for name, cells in zip(names, counts):
        t0 = time.perf_counter()
        store = LayerStore.load(manifest, folder, settings.cache_dir)
        only = LayerStore(specs={name: store.specs[name]}, versions={name: store.versions[name]},
                          manifest=store.manifest, source_mode=store.source_mode, load_seconds=0.0)
        t_load = time.perf_counter() - t0
        t_build, engine = timed(Engine, only, settings.grid_cells, settings.use_grid, settings.cache_dir)
        x, y = uniform(city, n, seed=17)
        polys = gpd.read_file(folder / f"{name}.geojson")
        pts = gpd.GeoDataFrame(geometry=gpd.points_from_xy(x, y), crs=4326)
        t_sj, joined = timed(sjoin, polys, pts)
        engine.tag_version(name, 0, x[:1000], y[:1000])  # warm (JIT, caches)
        t_en, (feature, _) = timed(engine.tag_version, name, 0, x, y, repeat=3)
        assert (feature >= 0).sum() >= len(joined.index.unique()) * 0.999  # the same join, not an empty one
        print(f"{name}: {cells:,} cells; all layers read in {t_load:.2f}s, this one's indexes built (or read from "
              f"the cache) in {t_build:.2f}s", flush=True)
        rows.append((f"geopandas.sjoin {name}", n / t_sj, 1.0))
        rows.append((f"engine in process {name}", n / t_en, t_sj / t_en))
        verdicts.append(f"engine in process {name}: {t_sj / t_en:.1f}x sjoin, target {VORONOI_TARGET:.0f}x "
                        f"{'met' if t_sj / t_en >= VORONOI_TARGET else 'NOT met'}")
        del engine, only, store, polys, pts, joined
        gc.collect()
    startups = []
    with tempfile.TemporaryDirectory(prefix="enrich-cold-") as cold:
        # The first start with a cache folder of its own, empty: the cold start; then warm ones on the same folder.
        env = {"ENRICH_BOUNDARY_DIR": str(folder), "ENRICH_MANIFEST": str(manifest), "ENRICH_LOG_LEVEL": "WARNING",
               "ENRICH_REFERENCE_DIR": str(ADDRESS), "ENRICH_CACHE_DIR": cold}
        for _ in range(starts + 1):
            proc, t = start_service(port, env)
            startups.append(t)
            proc.terminate()
            proc.wait()
    warm = sorted(startups[1:])[len(startups[1:]) // 2]
    each = ", ".join(f"{t:.2f}" for t in startups[1:])
    print(f"\nservice start-up to ready with the real layers and {', '.join(names)}: {warm:.2f}s warm (median of "
          f"{each}), {startups[0]:.2f}s cold (an empty cache folder)")
    if max(counts) >= 50_000:
        verdicts.append(f"start-up with {', '.join(names)}, warm: {warm:.2f}s, target {STARTUP_TARGET_S:.0f}s "
                        f"{'met' if warm <= STARTUP_TARGET_S else 'NOT met'}")
    print("\n".join(["", "issue 21 targets:"] + [f"  {v}" for v in verdicts]))


class Rows(list):
    """The table, printed row by row as it is measured (a long run shows its figures as it goes)."""

    def append(self, row) -> None:
        name, rate, ratio = row
        print(f"{name:44} {rate:14,.0f} {ratio:9.2f}", flush=True)
        super().append(row)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--points", type=int, default=1_000_000)
    ap.add_argument("--postgis-points", type=int, default=200_000,
                    help="points for the PostGIS joins (the plain join manages a few 10k points/s)")
    ap.add_argument("--big", type=int, default=0, help="also stream this many points as NDJSON, watching RSS")
    ap.add_argument("--port", type=int, help="the service's port (default: a free one)")
    ap.add_argument("--smoke", action="store_true", help="3,000 points, one start, one repeat: every path in seconds")
    ap.add_argument("--voronoi", default="", help="comma-separated cell counts: bench synthetic layers of that many "
                                                  "Voronoi cells instead of the real layers (e.g. 5000,50000)")
    args = ap.parse_args()
    args.port = args.port or _free_port()
    if args.smoke:
        args.points, args.postgis_points, args.big = 3_000, 3_000, min(args.big, 3_000)
    n = args.points
    repeat = 1 if args.smoke else 3
    starts = 1 if args.smoke else 3
    if args.voronoi:
        voronoi_bench([int(c) for c in args.voronoi.split(",")], n, args.port, starts)
        return

    from enrich_service.engine.tagger import Engine
    from enrich_service.layers.store import LayerStore
    from enrich_service.postgis import load_layers, table_name
    from enrich_service.settings import Settings

    settings = Settings(boundary_dir=BOUNDARIES)
    store = LayerStore.load(settings.manifest, BOUNDARIES, settings.cache_dir)
    t_build, engine = timed(Engine, store, settings.grid_cells, settings.use_grid)
    print(f"machine: {os.cpu_count()} cores; engine grid={'on' if settings.use_grid else 'off'}, "
          f"index build {t_build:.2f}s for all layers and versions\n")

    conn = psycopg.connect(PG_DSN, autocommit=True)
    conn.execute("CREATE SCHEMA IF NOT EXISTS bench")
    load_layers(conn, store, schema="bench")

    print(f"{'':44} {'points/s':>14} {'x sjoin':>9}", flush=True)
    rows = Rows()
    sjoin_rate = {}
    for layer, vi, filename in LAYERS:
        version = store.versions[layer][vi]
        x, y = uniform(version.bbox, n, seed=7)
        polys = gpd.read_file(BOUNDARIES / filename)
        pts = gpd.GeoDataFrame(geometry=gpd.points_from_xy(x, y), crs=4326)
        t_sj, _ = timed(sjoin, polys, pts)
        sjoin_rate[layer] = n / t_sj
        engine.tag_version(layer, vi, x[:1000], y[:1000])  # warm (JIT, caches)
        t_en, _ = timed(engine.tag_version, layer, vi, x, y, repeat=repeat)
        m = min(args.postgis_points, n)
        table = f"bench.{table_name(layer, version.version)}"
        t_pg = postgis(conn, table, x[:m], y[:m], subdivide=False)
        t_pgs = postgis(conn, table, x[:m], y[:m], subdivide=True)
        for name, rate in ((f"geopandas.sjoin {layer}", n / t_sj), (f"PostGIS ST_Contains {layer}", m / t_pg),
                           (f"PostGIS subdivided(256) {layer}", m / t_pgs), (f"engine in process {layer}", n / t_en)):
            rows.append((name, rate, rate / sjoin_rate[layer]))

    # The service over HTTP: all three layers per request, compared with sjoin of the same three layers in turn.
    three_layer_sjoin = 1.0 / sum(1.0 / r for r in sjoin_rate.values())
    rows.append(("geopandas.sjoin, 3 layers in turn", three_layer_sjoin, 1.0))
    # Everything loaded, as deployed: the geocoder's reference too (its share of the RSS is in docs/engine.md).
    env = {"ENRICH_BOUNDARY_DIR": str(BOUNDARIES), "ENRICH_REFERENCE_DIR": str(ADDRESS),
           "ENRICH_LOG_LEVEL": "WARNING"}
    # Start-up is one number per start and noisy on a shared machine: three starts, the median reported.
    startups = []
    for _ in range(starts - 1):
        proc, t = start_service(args.port, env)
        startups.append(t)
        proc.terminate()
        proc.wait()
    proc, t = start_service(args.port, env)
    startups.append(t)
    startup = sorted(startups)[len(startups) // 2]
    url = f"http://127.0.0.1:{args.port}"
    time.sleep(1)
    idle_rss = rss_mb(proc.pid)
    x, y = uniform(store.versions["council_district"][1].bbox, n, seed=11)
    # The clients are timed as a client process runs them. This one also holds what the comparisons above loaded
    # (the layers read for sjoin, the in-process engine: ~1.2M objects), which the collector would walk again and
    # again while a client parses a 1M-row JSON answer (measured: parse 1.2-3.4 s instead of ~0.9).
    gc.freeze()
    try:
        with httpx.Client(timeout=600) as client:
            http_arrow(client, url, x[:1000], y[:1000])
            http_json_columns(client, url, x[:1000], y[:1000])
            ratio = {}
            for name, fn in (("HTTP arrow", http_arrow), ("HTTP json rows (orjson)", http_json),
                             ("HTTP json columns (orjson)", http_json_columns),
                             ("HTTP csv", http_csv), ("HTTP ndjson stream", http_ndjson)):
                t, _ = timed(fn, client, url, x, y, repeat=repeat)  # best of 3, as for the engine
                rows.append((f"{name}, 3 layers", n / t, (n / t) / three_layer_sjoin))
                ratio[name] = (n / t) / three_layer_sjoin
            arrow_breakdown(client, url, x, y, proc.pid, repeat)
            peak = rss_mb(proc.pid)
            big_line = ""
            if args.big:
                bx, by = uniform(store.versions["council_district"][1].bbox, args.big, seed=13)
                t0 = time.perf_counter()
                http_ndjson(client, url, bx, by)
                big_line = (f"{args.big:,} points as NDJSON in {time.perf_counter() - t0:.1f}s, "
                            f"service RSS after {rss_mb(proc.pid):.0f} MB")
    finally:
        proc.terminate()
        proc.wait()

    each = ", ".join(f"{t:.2f}" for t in startups)
    print(f"\nservice start-up to ready: {startup:.2f}s (median of {each}); RSS idle {idle_rss:.0f} MB, "
          f"after the {n:,}-point requests {peak:.0f} MB")
    if big_line:
        print(big_line)
    json_best = max(ratio["HTTP json rows (orjson)"], ratio["HTTP json columns (orjson)"])
    print(f"\ntargets (issue 21), against geopandas.sjoin of the 3 layers; load average "
          f"{', '.join(f'{v:.2f}' for v in os.getloadavg())}{' (--smoke: figures mean nothing)' if args.smoke else ''}")
    for name, measured, target in ((f"HTTP arrow, {n:,} points, 3 layers", ratio["HTTP arrow"], ARROW_TARGET),
                                   ("HTTP json (the faster of rows and columns)", json_best, JSON_TARGET)):
        print(f"  {name:44} {measured:6.2f}x  target >= {target:g}x: {'met' if measured >= target else 'NOT MET'}")


if __name__ == "__main__":
    main()
