"""Idle memory, start-up and the first bulk request of a real `enrich-service serve` (issue 21), in one run by hand:

    .venv/bin/python bench/memory.py            # 3 starts; 1M-point Arrow and 10k-point JSON requests
    .venv/bin/python bench/memory.py --smoke    # the same steps in seconds, small batches (tests/test_bench_smoke.py)

Prints, in one run:
- where the idle memory goes: a fresh Python process takes the service's start-up steps one at a time (imports by
  library, the app, layers, R-trees, numba's kernels, grids, geocoder, warm-up, the release of start-up pages) and
  reports each step's RSS, split into anonymous memory (the process's own) and file-backed pages (shared library
  code, whose count depends on what the page cache holds: most right after `pip install`);
- the service (1 worker, started as bench/load.py starts it): start-up to ready, idle RSS, anonymous and
  file-backed, and PSS; with 2 workers, each worker's RSS and PSS (PSS divides a page shared by the workers
  between them) and the supervisor's;
- the first bulk request after start-up against the median of the next five: 1M points as Arrow (10k in --smoke)
  and 10k points as JSON (1k), each on a fresh start, wall time and the server's CPU time;
- the targets (idle RSS under 400 MB, the first request no dearer than the later ones, start-up under 2 s) as met
  or not met, and the load average. Memory figures hold on a busy machine; times do not.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
# Nothing else at module level: the breakdown's fresh process runs this file, and must start from bare Python.

LAYERS = "council_district,neighborhood,zip"
RSS_TARGET_MB = 400
STARTUP_TARGET_S = 2.0
MB = 1024  # kB in /proc


# ---------------------------------------------------------------------------------------------------- /proc

def memory(pid: int) -> dict[str, float]:
    """RSS with its anonymous and file-backed parts (/proc/<pid>/status) and PSS (smaps_rollup), in MB."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile", "RssShmem"):
            out[key] = int(value.split()[0]) / MB
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        key, _, value = line.partition(":")
        if key in ("Pss", "Pss_Anon", "Pss_File"):
            out[key] = int(value.split()[0]) / MB
    return out


def mapped_mb(pid: int, name: str) -> float:
    """Resident MB of the mappings of files whose path contains `name`."""
    total, inside = 0, False
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            head = line.split(maxsplit=5)
            if len(head) >= 5 and "-" in head[0] and not head[0].endswith(":"):
                inside = len(head) == 6 and name in head[5]
            elif inside and head[0] == "Rss:":
                total += int(head[1])
    return total / MB


def workers_of(pid: int) -> list[int]:
    from bench.load import process_tree

    return [p for p in process_tree(pid)[1:] if b"spawn_main" in Path(f"/proc/{p}/cmdline").read_bytes()]


# ---------------------------------------------------------------------------------------------------- breakdown

def breakdown_child() -> None:
    """Run in a fresh process: the service's start-up, one step at a time, one JSON line per step."""
    import ctypes
    import gc
    import importlib.machinery

    trim = ctypes.CDLL("libc.so.6").malloc_trim
    compiled = [0, 0.0]  # modules compiled from source (no bytecode to read), their CPU seconds
    loader = importlib.machinery.SourceFileLoader
    source_to_code = loader.source_to_code

    def counted(self, data, path, *, _optimize=-1):
        t = time.process_time()
        code = source_to_code(self, data, path, _optimize=_optimize)
        compiled[0] += 1
        compiled[1] += time.process_time() - t
        return code

    loader.source_to_code = counted  # type: ignore[method-assign]

    cpu = [time.process_time()]

    def report(step: str, t0: float) -> None:
        now = time.process_time()  # every thread's CPU: steadier than the wall time on a shared machine
        gc.collect()
        trim(0)
        m = memory(os.getpid())
        print(json.dumps({"step": step, "seconds": time.perf_counter() - t0, "cpu": now - cpu[0], **m}), flush=True)
        cpu[0] = time.process_time()

    t0 = time.perf_counter()
    report("python", t0)
    for step, modules in (("numpy", ["numpy"]),
                          ("pyarrow (+ compute, ipc, csv)", ["pyarrow", "pyarrow.compute", "pyarrow.ipc", "pyarrow.csv"]),
                          ("shapely, rtree", ["shapely", "rtree"]),
                          ("pyproj", ["pyproj"]),
                          ("fastapi, pydantic, starlette, uvicorn", ["fastapi", "pydantic", "starlette", "uvicorn"]),
                          ("numba, llvmlite (import)", ["numba"])):
        t0 = time.perf_counter()
        for name in modules:
            __import__(name)
        report(step, t0)
    t0 = time.perf_counter()
    import enrich_service.main as main

    app = main.create_app()  # as every worker: keep_freed_memory (malloc settings) too
    report("the service's modules, the app (usaddress, rapidfuzz, ...)", t0)
    not_imported = [m for m in ("pandas", "geopandas", "psycopg", "httpx", "pyogrio", "sqlalchemy")
                    if m not in sys.modules]

    import datetime as dt

    from enrich_service.engine.grid import GridIndex
    from enrich_service.engine.tagger import Engine
    from enrich_service.geocode import build_geocoder
    from enrich_service.index import ServiceIndex
    from enrich_service.layers.store import LayerStore
    from enrich_service.server.memory import (
        keep_pandas_out_of_pyarrow,
        release_freed_memory,
        release_startup_library_pages,
    )
    from enrich_service.server.warm_up import warm_up
    from enrich_service.settings import get_settings

    settings = get_settings()
    t0 = time.perf_counter()
    store = LayerStore.load(settings.manifest, settings.boundary_dir, settings.cache_dir)
    report(f"layers ({sum(len(v) for v in store.versions.values())} versions, geometries)", t0)
    t0 = time.perf_counter()
    engine = Engine(store, use_grid=False)
    report("R-trees (exact path)", t0)
    versions = [(name, i, v) for name, vs in store.versions.items() for i, v in enumerate(vs)]
    t0 = time.perf_counter()
    GridIndex.build(min((v for _, _, v in versions), key=lambda v: v.n_features), cells=64)
    report("numba: grid build kernels loaded from its cache", t0)
    t0 = time.perf_counter()
    for name, i, v in versions:
        engine.grid[name, i] = GridIndex.build(v, cells=settings.grid_cells)
    grid_mb = sum(g.nbytes for g in engine.grid.values()) / 2**20
    report(f"grids ({settings.grid_cells} cells a side, arrays {grid_mb:.0f} MB)", t0)
    t0 = time.perf_counter()
    geocoder = build_geocoder(settings, store)
    report("geocoder reference and matcher", t0)
    index = ServiceIndex(store=store, engine=engine, built_at=dt.datetime.now(dt.UTC), build_seconds=0.0,
                         geocoder=geocoder)
    app.state.index = index
    t0 = time.perf_counter()
    if not keep_pandas_out_of_pyarrow(only_when_served=False):  # as a served worker does first
        import pandas  # noqa: F401  (what pyarrow's first conversion would have imported)
    report("pandas " + ("imported (by pyarrow)" if "pandas" in sys.modules else "kept out of pyarrow"), t0)
    import asyncio

    t0 = time.perf_counter()
    asyncio.run(warm_up(app, index))
    report("warm-up (kernels, codecs, geocoder)", t0)
    t0 = time.perf_counter()
    release_freed_memory()
    released = release_startup_library_pages() / 2**20
    report(f"start-up's release: freed heap, {released:.0f} MB of libllvmlite.so", t0)
    not_imported = [m for m in not_imported if m not in sys.modules]
    print(json.dumps({"not_imported": not_imported, "compiled": compiled}), flush=True)


def breakdown(env: dict) -> tuple[list[dict], list[str]]:
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--breakdown-child"],
                          env={**os.environ, **env}, capture_output=True, text=True, timeout=300, cwd=REPO)
    if proc.returncode != 0:
        raise SystemExit(f"the breakdown process failed:\n{proc.stderr[-3000:]}")
    rows, spared, compiled = [], [], [0, 0.0]
    for line in proc.stdout.splitlines():
        if not line.startswith("{"):
            continue
        rec = json.loads(line)
        if "step" in rec:
            rows.append(rec)
        elif "not_imported" in rec:
            spared, compiled = rec["not_imported"], rec["compiled"]
    return rows, spared, compiled


# ---------------------------------------------------------------------------------------------------- requests

def bodies(n_arrow: int, n_json: int) -> tuple[bytes, bytes]:
    import numpy as np
    import orjson
    import pyarrow as pa

    from enrich_service.io.arrow_stream import stream_buffer

    rng = np.random.default_rng(21)
    x, y = rng.uniform(-117.28, -116.95, n_arrow), rng.uniform(32.55, 33.10, n_arrow)  # the city's extent
    arrow = stream_buffer(pa.table({"id": np.arange(n_arrow), "lon": x, "lat": y})).to_pybytes()
    pts = [{"id": i, "lon": a, "lat": b} for i, (a, b) in enumerate(zip(x[:n_json].tolist(), y[:n_json].tolist()))]
    return arrow, orjson.dumps({"points": pts})


def threads_cpu_seconds(pid: int) -> float:
    """The CPU time of the process's threads, to the nanosecond (/proc/<pid>/task/*/schedstat): /proc/<pid>/stat
    counts whole clock ticks (10 ms), a seventh of a 1M-point request. The service's threads live as long as it."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            total += int((task / "schedstat").read_text().split()[0])
    return total / 1e9


def page_faults(pid: int) -> int:
    """Minor page faults so far (/proc/<pid>/stat): a page touched for the first time."""
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[7])


def first_and_next(url: str, pid: int, content: bytes, content_type: str, repeat: int = 6) -> list[tuple]:
    """(wall s, server CPU s, page faults) of `repeat` identical requests in a row, the first right after
    start-up."""
    import httpx

    out = []
    with httpx.Client(timeout=600) as client:
        # The client's own first request (its connection, code run for the first time) is not the server's: curl
        # saw the first 1M-point request no slower than the next ones while this client's took twice as long.
        client.get(f"{url}/healthz").raise_for_status()
        for _ in range(repeat):
            cpu0, faults0, t0 = threads_cpu_seconds(pid), page_faults(pid), time.perf_counter()
            r = client.post(f"{url}/v1/pip?layers={LAYERS}", content=content, headers={"content-type": content_type})
            wall = time.perf_counter() - t0
            r.raise_for_status()
            out.append((wall, threads_cpu_seconds(pid) - cpu0, page_faults(pid) - faults0))
    return out


def service_env() -> dict:
    from tests.conftest import ADDRESS, BOUNDARIES  # the data's one reader

    return {"ENRICH_BOUNDARY_DIR": str(BOUNDARIES), "ENRICH_REFERENCE_DIR": str(ADDRESS),
            "ENRICH_LOG_LEVEL": "WARNING"}


STARTUP_CPU: list[float] = []  # the 1-worker process's own CPU seconds at ready: steadier than wall time under load


def start(workers: int, tmp: Path, name: str) -> tuple[subprocess.Popen, str, float]:
    """`enrich-service serve` as bench/load.py starts it (polled closely: start-up is a figure here)."""
    from bench.load import cpu_seconds, launch

    t0 = time.perf_counter()
    proc, url = launch(workers, service_env(), tmp / f"{name}.log", "warning", poll_s=0.02)
    wall = time.perf_counter() - t0
    if workers == 1:
        STARTUP_CPU.append(cpu_seconds([proc.pid]))
    return proc, url, wall


def settle(pids: list[int], seconds: float = 10) -> None:
    """Wait until the RSS stops moving (the supervisor and the page cache may still be settling), at most `seconds`."""
    last = None
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        now = [round(memory(p)["VmRSS"]) for p in pids]
        if now == last:
            return
        last = now
        time.sleep(0.5)


# ---------------------------------------------------------------------------------------------------- main

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arrow-points", type=int, default=1_000_000)
    ap.add_argument("--json-points", type=int, default=10_000)
    ap.add_argument("--starts", type=int, default=3, help="1-worker starts timed (the median is the figure)")
    ap.add_argument("--smoke", action="store_true", help="small batches, one start per step: seconds (CI)")
    ap.add_argument("--breakdown-child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.breakdown_child:
        breakdown_child()
        return 0
    if args.smoke:
        args.arrow_points, args.json_points, args.starts = 10_000, 1_000, 2
    load0 = os.getloadavg()
    tmp = Path(tempfile.mkdtemp(prefix="enrich-memory-"))
    arrow, body = bodies(args.arrow_points, args.json_points)

    from bench.load import stop

    steps, spared, compiled = breakdown(service_env())

    startups: list[float] = []
    proc, url, t = start(1, tmp, "arrow")  # start 1: idle memory, then the Arrow requests
    startups.append(t)
    try:
        settle([proc.pid])
        idle = memory(proc.pid)
        llvm_idle, pandas_idle = mapped_mb(proc.pid, "libllvmlite"), mapped_mb(proc.pid, "pandas/_libs")
        arrow_runs = first_and_next(url, proc.pid, arrow, "application/vnd.apache.arrow.stream")
        after = memory(proc.pid)
        llvm_after = mapped_mb(proc.pid, "libllvmlite")
    finally:
        stop(proc)
    proc, url, t = start(1, tmp, "json")  # start 2: the JSON requests
    startups.append(t)
    try:
        json_runs = first_and_next(url, proc.pid, body, "application/json")
    finally:
        stop(proc)
    for k in range(max(0, args.starts - 2)):
        proc, url, t = start(1, tmp, f"start{k}")
        startups.append(t)
        stop(proc)
    proc, url, t2 = start(2, tmp, "two")  # 2 workers: PSS
    try:
        pids = workers_of(proc.pid)
        settle(pids)
        per_worker = [memory(p) for p in pids]
        supervisor = memory(proc.pid)
    finally:
        stop(proc)
    load1 = os.getloadavg()
    with contextlib.suppress(OSError):
        for f in tmp.iterdir():
            f.unlink()
        tmp.rmdir()

    # ------------------------------------------------------------------------------------------------ the table
    print(f"== enrich-service memory and start-up, {os.cpu_count()} cores, load average before "
          f"{[round(x, 2) for x in load0]} after {[round(x, 2) for x in load1]}")
    print("\nwhere the idle memory goes (a fresh process taking the start-up's steps; MB after each step, + its share)")
    print(f"  {'step':62s} {'RSS':>6s} {'+':>6s} {'anon':>6s} {'+':>6s} {'file':>6s} {'+':>6s} {'s':>5s} {'CPU s':>5s}")
    prev = {"VmRSS": 0.0, "RssAnon": 0.0, "RssFile": 0.0}
    for rec in steps:
        d = {k: rec[k] - prev[k] for k in prev}
        print(f"  {rec['step']:62s} {rec['VmRSS']:6.0f} {d['VmRSS']:+6.0f} {rec['RssAnon']:6.0f} {d['RssAnon']:+6.0f} "
              f"{rec['RssFile']:6.0f} {d['RssFile']:+6.0f} {rec['seconds']:5.2f} {rec['cpu']:5.2f}")
        prev = {k: rec[k] for k in prev}
    print(f"  not imported by the service: {', '.join(spared) or '-'}")
    print(f"  modules compiled from source (no bytecode; scripts/install.sh writes it): {compiled[0]}, "
          f"{compiled[1]:.2f}s CPU")

    print(f"\nservice, 1 worker, idle: RSS {idle['VmRSS']:.0f} MB = anonymous {idle['RssAnon']:.0f} MB + file-backed "
          f"{idle['RssFile']:.0f} MB; PSS {idle['Pss']:.0f} MB (libllvmlite.so resident {llvm_idle:.0f} MB, "
          f"{llvm_after:.0f} MB after the requests; pandas {'loaded' if pandas_idle else 'not loaded'})")
    print(f"service, 1 worker, after the requests: RSS {after['VmRSS']:.0f} MB (anonymous {after['RssAnon']:.0f} MB: "
          f"freed heap kept for the next request, ENRICH_KEEP_FREED_MB)")
    for k, m in enumerate(per_worker):
        print(f"2 workers, worker {k + 1}: RSS {m['VmRSS']:.0f} MB (anonymous {m['RssAnon']:.0f}, file-backed "
              f"{m['RssFile']:.0f}), PSS {m['Pss']:.0f} MB (anonymous {m['Pss_Anon']:.0f}, file {m['Pss_File']:.0f})")
    total_pss = sum(m["Pss"] for m in per_worker) + supervisor["Pss"]
    print(f"2 workers: supervisor PSS {supervisor['Pss']:.0f} MB; all processes PSS {total_pss:.0f} MB, RSS summed "
          f"{sum(m['VmRSS'] for m in per_worker) + supervisor['VmRSS']:.0f} MB (2-worker start to ready {t2:.2f}s)")

    median_start = statistics.median(startups)
    print(f"\nstart-up to ready, 1 worker: {median_start:.2f}s (median of {', '.join(f'{t:.2f}' for t in startups)}); "
          f"the worker's CPU until ready {statistics.median(STARTUP_CPU):.2f}s (median)")
    verdicts = []
    for name, runs in ((f"HTTP arrow, {args.arrow_points:,} points", arrow_runs),
                       (f"HTTP json, {args.json_points:,} points", json_runs)):
        (w0, c0, f0), rest = runs[0], runs[1:]
        wm, cm = statistics.median(r[0] for r in rest), statistics.median(r[1] for r in rest)
        fm = statistics.median(r[2] for r in rest)
        tick = 1 / os.sysconf("SC_CLK_TCK")
        ok = c0 <= max(r[1] for r in rest) + 0.010  # the later ones vary by about 10 ms from run to run
        verdicts.append(ok)
        print(f"{name}: first {w0 * 1000:.0f} ms (server CPU {c0 * 1000:.0f} ms, {f0:,} page faults), next five "
              f"median {wm * 1000:.0f} ms (server CPU {cm * 1000:.0f} ms, {fm:,.0f} page faults): first/later "
              f"{w0 / wm:.2f}x wall, {c0 / max(cm, tick):.2f}x CPU")

    def verdict(ok: bool) -> str:
        return "met" if ok else "NOT met"

    print(f"\ntarget idle RSS < {RSS_TARGET_MB} MB (1 worker): {idle['VmRSS']:.0f} MB, {verdict(idle['VmRSS'] < RSS_TARGET_MB)}")
    print(f"target first bulk request <= the later ones (server CPU within the next five's, +10 ms): "
          f"{verdict(all(verdicts))}")
    print(f"target start-up < {STARTUP_TARGET_S:g} s: {median_start:.2f}s, {verdict(median_start < STARTUP_TARGET_S)}"
          f" (load average {os.getloadavg()[0]:.2f}: time figures need a quiet machine)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
