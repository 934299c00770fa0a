"""Start-up (issue 21): every bulk path is warmed before a worker answers anything, and what is no longer imported
at start-up still works on its first use. Timings and sizes are measured by bench/memory.py, not here."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import httpx
import pytest

from .conftest import BOUNDARIES, REPO, cache_dir_sharing_layers, start_service

pytestmark = pytest.mark.data


def _log_lines(path) -> list[dict]:
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            pass  # uvicorn's own plain lines
    return out


def _real_batch(n: int) -> dict:
    """`n` real points (repeated as needed) as a JSON batch of every layer."""
    import numpy as np

    from .conftest import real_points

    x, y = real_points()
    take = np.arange(n) % len(x)
    return {"points": [{"id": i, "lon": a, "lat": b} for i, (a, b) in enumerate(zip(x[take].tolist(), y[take].tolist()))]}


def test_every_bulk_path_is_warmed_before_the_first_answer(tmp_path):
    """The warm-up runs inside the start-up: when /readyz first answers, the log already says it is done, with every
    bulk path (each body format), the single lookups and the geocoder answering 200; the geocoder's result cache
    holds none of its addresses afterwards, and the start-up's freed memory is already released. Then the first answers of every size, on each side of the engine's and
    the JSON writer's serial/parallel thresholds, load no numba kernel from its cache: such a load cost the first
    10k-point JSON request 10-15 ms (bench/memory.py)."""
    from enrich_service.engine import grid
    from enrich_service.io import json_rows, results

    sizes = sorted({results.SMALL_ROWS + 1, grid.SERIAL_BELOW + 1, json_rows.SERIAL_BELOW + 1})
    log_path = tmp_path / "service.log"
    with open(log_path, "wb") as log:
        # numba prints each kernel it loads from its cache, or compiles and saves, to stdout (this log file).
        proc, url = start_service({"ENRICH_LOG_LEVEL": "INFO", "NUMBA_DEBUG_CACHE": "1", "PYTHONUNBUFFERED": "1"}, log=log, log_level="info")
        try:
            at_ready = _log_lines(log_path)
            warmed = [rec for rec in at_ready if rec.get("msg", "").startswith("warm-up done")]
            released = [rec for rec in at_ready if rec.get("msg", "").startswith("freed memory released")]
            cache = httpx.get(f"{url}/v1/layers", timeout=10).json()
            ready_at = len(log_path.read_text().splitlines())
            for n in sizes:
                r = httpx.post(f"{url}/v1/pip", json=_real_batch(n), timeout=60,
                               headers={"x-api-key": "test-admin-key"})
                assert r.status_code == 200 and r.json()["count"] == n, (n, r.text[:300])
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    loaded_later = [line for line in log_path.read_text().splitlines()[ready_at:] if line.startswith("[cache]")]
    assert not loaded_later, f"kernels loaded by the first requests of {sizes} points, not the warm-up: {loaded_later}"
    assert warmed, f"/readyz answered before the warm-up was done:\n{log_path.read_text()[-3000:]}"
    # The start-up's garbage trimmed and the heap warmed before the worker listens, not while it answers its first
    # request (which then paid for both: bench/memory.py saw 40 ms of CPU for a 10 ms request).
    assert released, f"/readyz answered before the start-up's memory release was done:\n{log_path.read_text()[-3000:]}"
    failed = [rec for rec in _log_lines(log_path) if rec.get("logger", "").endswith("warm_up") and rec["level"] != "INFO"]
    assert not failed, failed
    routes = warmed[0]["msg"]
    for path in ("POST /v1/pip application/json", "POST /v1/pip application/vnd.apache.arrow.stream",
                 "POST /v1/pip text/csv", "POST /v1/pip application/geo+json", "POST /v1/pip application/x-ndjson",
                 "GET /v1/pip", "POST /v1/geocode-join application/json",
                 "POST /v1/geocode-join application/vnd.apache.arrow.stream", "GET /v1/geocode"):
        assert f"{path}: 200" in routes, routes
    assert cache["geocode_reference"]["cache"]["entries"] == 0, cache["geocode_reference"]["cache"]


def test_a_layer_download_works_although_its_client_is_not_imported_at_start(tmp_path):
    """httpx (and the rich/click/pygments it pulls in) is imported on the first download, not by the service's
    start: a fresh process shows it absent after importing the app, then downloads a real layer file from a local
    server, checked against the manifest's sha256."""
    layer = next(BOUNDARIES.glob("*.geojson"))
    script = textwrap.dedent(f"""
        import functools, http.server, sys, threading
        from pathlib import Path
        import enrich_service.main
        assert "httpx" not in sys.modules, "httpx imported at start"
        from enrich_service.layers.manifest import FileSpec
        from enrich_service.layers.sources import resolve, sha256_of
        handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory={str(layer.parent)!r})
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        url = f"http://127.0.0.1:{{server.server_address[1]}}/{layer.name}"
        spec = FileSpec({layer.name!r}, sha256_of(Path({str(layer)!r})), url)
        got = resolve(spec, None, Path({str(tmp_path)!r}))
        assert got.origin == "download" and sha256_of(got.path) == spec.sha256, got
        server.shutdown()
        print("downloaded", got.path)
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "downloaded" in proc.stdout


def test_llvm_still_compiles_after_its_start_up_pages_are_released():
    """The pages of libllvmlite.so that start-up touched are unmapped once the worker is warm; numba compiling a new
    function afterwards (LLVM running again) must map them back and work, and what was compiled before still runs."""
    script = textwrap.dedent("""
        import numpy as np
        from numba import njit
        from enrich_service.server.memory import release_startup_library_pages

        @njit
        def before(a):
            return a.sum()

        assert before(np.arange(10)) == 45
        released = release_startup_library_pages()
        assert released > 0, "nothing of libllvmlite.so was released"

        @njit
        def after(a, k):
            return (a * k).sum()

        assert after(np.arange(10.0), 2.0) == 90.0 and before(np.arange(5)) == 10
        print("released", released)
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "released" in proc.stdout


def test_a_warmed_heap_serves_a_bulk_requests_buffers_without_fresh_pages():
    """After the start-up's (and each reload's) release, warm_mb of heap is touched and kept: a 24 MB buffer (a 1M-
    point body) allocated afterwards faults in no new pages, where the same buffer after a release without warming
    faults in every one (~6,000). Another process: the malloc settings and the trim are process-wide."""
    script = textwrap.dedent("""
        import resource
        from enrich_service.server.memory import keep_freed_memory, release_freed_memory

        def faults_for_a_body():
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            body = bytearray(24 << 20)  # as read_body makes it (numpy's own large arrays may get huge pages)
            faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
            del body
            return faults

        keep_freed_memory(256)
        release_freed_memory(0)
        cold = faults_for_a_body()
        release_freed_memory(32)
        warm = faults_for_a_body()
        print(cold, warm)
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    cold, warm = map(int, proc.stdout.split())
    assert cold > 5000 and warm < 300, (cold, warm)


@pytest.mark.parametrize("policy, spins", [(None, False), ("ACTIVE", True)])
def test_openmp_threads_sleep_when_a_parallel_kernel_ends(policy, spins):
    """A served worker's OpenMP threads (numba's parallel kernels) do not spin on the cores once a kernel returns:
    50 ms after a kernel, the process has used almost no CPU. The control, the environment asking for ACTIVE
    waiting, shows the spinning that passive_threads leaves out (an operator's setting still wins)."""
    script = textwrap.dedent("""
        import os, sys, time
        import numpy as np
        from numba import njit, prange
        from enrich_service.server.parallel import passive_threads

        if len(sys.argv) > 1:
            os.environ["OMP_WAIT_POLICY"] = sys.argv[1]
        passive_threads()

        @njit(parallel=True)
        def total(a):
            s = 0.0
            for i in prange(a.shape[0]):
                s += a[i]
            return s

        a = np.ones(2_000_000)
        total(a)
        cpu0 = time.process_time()
        total(a)
        time.sleep(0.05)
        print(round((time.process_time() - cpu0) * 1000))
    """)
    proc = subprocess.run([sys.executable, "-c", script, *([policy] if policy else [])], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    cpu_ms = int(proc.stdout.split()[-1])
    assert (cpu_ms > 30) if spins else (cpu_ms < 15), cpu_ms


def _maps(pid: int) -> str:
    from pathlib import Path

    return Path(f"/proc/{pid}/maps").read_text()


def test_a_served_worker_answers_bulk_requests_without_loading_pandas(tmp_path):
    """pyarrow imports pandas on its first conversion unless told, once, that it is absent (memory.py): a worker of
    `enrich-service serve` answers Arrow, JSON and CSV batches and never maps pandas' libraries. Its geocoder, built
    from the reference CSVs with pandas on a cold cache (the first start here), is the same reference as one built
    in a process where pyarrow has pandas."""
    import pickle

    import numpy as np

    from .conftest import ADDRESS

    cache_dir = cache_dir_sharing_layers(tmp_path / "cache")
    proc, url = start_service({"ENRICH_CACHE_DIR": str(cache_dir)})  # cold: the geocoder is built, with pandas
    proc.terminate()
    proc.wait(timeout=30)
    proc, url = start_service({"ENRICH_CACHE_DIR": str(cache_dir)})  # as a worker usually starts: from the cache
    try:
        csv = b"id,lon,lat\n1,-117.16,32.72\n2,-117.1,32.8\n"
        arrow = httpx.post(f"{url}/v1/pip", content=csv, timeout=60, headers={
            "content-type": "text/csv", "accept": "application/vnd.apache.arrow.stream"})
        answers = [arrow] + [httpx.post(f"{url}/v1/pip", content=body, headers={"content-type": kind}, timeout=60)
                             for kind, body in (("text/csv", csv), ("application/vnd.apache.arrow.stream",
                                                                    arrow.content),
                                                ("application/json", json.dumps({"points": [
                                                    {"id": 1, "lon": -117.16, "lat": 32.72}]}).encode()))]
        assert [r.status_code for r in answers] == [200] * 4, [r.text[:200] for r in answers]
        maps = _maps(proc.pid)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert "pyarrow/libarrow" in maps
    assert "/pandas/_libs" not in maps, "the served worker loaded pandas"

    from enrich_service.geocode.reference import load_reference, resolve_reference
    from enrich_service.settings import Settings

    [cached] = (cache_dir / "geocoder").glob("*.pickle")
    with open(cached, "rb") as f:
        served = pickle.load(f)
    here = load_reference(resolve_reference(Settings(reference_dir=ADDRESS)))
    for name in ("streets", "street_id", "by_base", "street_zips", "pt_label", "exact", "ranges_of",
                 "ranges_by_block", "intersections", "crossings_of", "zip_medians", "pt_zip_list"):
        assert getattr(served, name) == getattr(here, name), name
    for name in ("pt_lon", "pt_lat", "pt_number", "pt_street", "seg_street", "seg_mid"):
        assert np.array_equal(getattr(served, name), getattr(here, name)), name
