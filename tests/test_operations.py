"""Operations: API keys, metrics, request ids, limits, and reloads, including under load and with a corrupt file."""

from __future__ import annotations

import os
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import orjson
import pytest

from enrich_service.layers.sources import sha256_of

from .conftest import BOUNDARIES, start_service

pytestmark = pytest.mark.data

KEY = {"X-API-Key": "test-admin-key"}
CITY_HALL = {"lon": -117.1627, "lat": 32.7167}
DISTRICTS_2021 = "council_districts_2021_datasd.geojson"


@pytest.fixture()
def boundary_dir(tmp_path: Path) -> Path:
    """The real layer files, with the 2021 districts as a copy the test may rewrite (the rest linked)."""
    for f in BOUNDARIES.iterdir():
        if f.name == DISTRICTS_2021:
            shutil.copy(f, tmp_path / f.name)
        else:
            (tmp_path / f.name).symlink_to(f)
    return tmp_path


def rewrite(path: Path, content: bytes) -> str:
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(content)
    os.replace(tmp, path)
    return sha256_of(path)


def variant(original: bytes, n: int) -> bytes:
    """The same districts, a different file (and sha256): a new version as far as provenance goes."""
    doc = orjson.loads(original)
    doc["name"] = f"council_districts_variant_{n}"
    return orjson.dumps(doc)


@pytest.fixture()
def service(boundary_dir):
    proc, url = start_service({"ENRICH_BOUNDARY_DIR": str(boundary_dir), "ENRICH_LOG_LEVEL": "WARNING"})
    yield url, boundary_dir
    proc.terminate()
    proc.wait(timeout=30)


def district_sha(response: httpx.Response) -> str:
    return response.json()["layers"]["council_district"]["sha256"]


def test_admin_needs_the_key_and_read_routes_are_open(service):
    url, _ = service
    assert httpx.post(f"{url}/v1/admin/reload").status_code == 401
    r = httpx.post(f"{url}/v1/admin/reload", headers={"X-API-Key": "test-admin-keyX"})
    assert r.status_code == 401 and r.json()["field"] == "X-API-Key"
    assert httpx.get(f"{url}/v1/pip", params=CITY_HALL).status_code == 200
    r = httpx.post(f"{url}/v1/admin/reload", headers=KEY, timeout=60)
    assert r.status_code == 200 and r.json()["generation"] == 1


def test_read_routes_can_be_closed_by_a_setting(boundary_dir):
    proc, url = start_service({"ENRICH_BOUNDARY_DIR": str(boundary_dir), "ENRICH_READ_REQUIRES_KEY": "true"})
    try:
        assert httpx.get(f"{url}/v1/pip", params=CITY_HALL).status_code == 401
        assert httpx.get(f"{url}/v1/pip", params=CITY_HALL, headers=KEY).status_code == 200
        assert httpx.get(f"{url}/healthz").status_code == 200  # probes stay open
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def metric(text: str, sample: str) -> float:
    """The value of one sample line (`name{labels}`) of a /metrics page; 0 when absent."""
    for line in text.splitlines():
        if line.startswith(sample + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_metrics_and_request_ids(service):
    url, _ = service
    gets, points = 'enrich_requests_total{method="GET",route="/v1/pip",status="200"}', \
        'enrich_points_tagged_total{layer="council_district"}'
    before = httpx.get(f"{url}/metrics").text
    r = httpx.get(f"{url}/v1/pip", params=CITY_HALL, headers={"X-Request-ID": "trace-me-42"})
    assert r.headers["x-request-id"] == "trace-me-42"
    assert len(httpx.get(f"{url}/healthz").headers["x-request-id"]) == 32  # made when not given
    httpx.post(f"{url}/v1/pip", json={"points": [CITY_HALL] * 10})
    text = httpx.get(f"{url}/metrics").text
    # What these requests added, whatever earlier requests to the same service counted.
    assert metric(text, gets) - metric(before, gets) == 1
    assert metric(text, points) - metric(before, points) == 11
    assert "enrich_request_seconds_bucket" in text
    assert "enrich_index_build_seconds" in text
    assert 'enrich_layer_version_info{layer="council_district",sha256="5ab5537e' in text


def test_a_corrupt_file_is_refused_and_the_old_index_keeps_serving(service):
    url, folder = service
    before = httpx.get(f"{url}/v1/pip", params=CITY_HALL).json()
    original = (folder / DISTRICTS_2021).read_bytes()
    rewrite(folder / DISTRICTS_2021, original[: len(original) // 2])  # a half-written download
    r = httpx.post(f"{url}/v1/admin/reload", headers=KEY, timeout=60)
    assert r.status_code == 409
    assert "council_district" in r.json()["detail"] and "still serving generation 0" in r.json()["detail"]
    after = httpx.get(f"{url}/v1/pip", params=CITY_HALL).json()
    assert after["council_district"] == "3" and district_sha(httpx.get(f"{url}/v1/pip", params=CITY_HALL)) == \
        before["layers"]["council_district"]["sha256"]
    assert httpx.get(f"{url}/readyz").json()["generation"] == 0
    assert "enrich_reloads_total{outcome=\"refused\"} 1.0" in httpx.get(f"{url}/metrics").text


def test_reload_under_load_fails_no_request_and_switches_exactly_at_the_swap(service):
    url, folder = service
    path = folder / DISTRICTS_2021
    original = path.read_bytes()
    batch = orjson.dumps({"points": [{"id": i, "lon": -117.16 + (i % 50) * 0.002, "lat": 32.70 + (i // 50) * 0.01}
                                     for i in range(1000)], "layers": ["council_district", "zip"]})
    log: list[tuple[float, float, int, str | None]] = []  # (start, end, status, district sha256)
    stop = threading.Event()

    def load(worker: int) -> None:
        with httpx.Client(base_url=url, timeout=60) as client:
            i = 0
            while not stop.is_set():
                t0 = time.monotonic()
                if (i + worker) % 4 == 0:
                    r = client.post("/v1/pip", content=batch, headers={"content-type": "application/json"})
                    sha = orjson.loads(r.headers["x-enrich-layers"])["council_district"]["sha256"] \
                        if r.status_code == 200 else None
                else:
                    r = client.get("/v1/pip", params=CITY_HALL)
                    sha = district_sha(r) if r.status_code == 200 else None
                log.append((t0, time.monotonic(), r.status_code, sha))
                i += 1

    swaps: list[tuple[float, float, str]] = []  # (reload sent, reload answered, sha256 now serving)
    current = initial = sha256_of(path)
    with ThreadPoolExecutor(4) as pool:
        workers = [pool.submit(load, w) for w in range(4)]
        time.sleep(0.5)
        with httpx.Client(base_url=url, headers=KEY, timeout=120) as admin:
            for n in range(6):
                corrupt = n == 3
                new_sha = rewrite(path, b'{"type": "FeatureCollection", "features": [' if corrupt
                                  else variant(original, n))
                t0 = time.monotonic()
                r = admin.post("/v1/admin/reload")
                t1 = time.monotonic()
                if corrupt:
                    assert r.status_code == 409
                else:
                    assert r.status_code == 200, r.text
                    current = new_sha
                swaps.append((t0, t1, current))
                time.sleep(0.3)
        stop.set()
        for w in workers:
            w.result()

    statuses = np.array([s for _, _, s, _ in log])
    assert len(log) > 200 and (statuses == 200).all(), f"{(statuses != 200).sum()} failed of {len(log)}"
    # Exactly at the swap: a request sees the version of the last reload answered before it started, or of a
    # reload in flight while it ran; never an older one, never one not yet swapped in when it finished.
    for start, end, _, sha in log:
        done = [s[2] for s in swaps if s[1] <= start]
        in_flight = {s[2] for s in swaps if s[0] <= end and s[1] >= start}
        assert sha in {done[-1] if done else initial} | in_flight


def test_workers_share_the_connections_and_sighup_reloads_every_worker():
    """--workers 2: connections opened together spread over both workers (each listens on its own socket), and
    SIGHUP to the supervisor reloads each worker's index in place rather than restarting the workers."""
    import signal

    proc, url = start_service({"ENRICH_LOG_LEVEL": "WARNING"}, workers=2)
    # A worker listens only once its index is built: wait until both are (new connections until two pids answered)
    deadline, listening = time.monotonic() + 60, set()
    while len(listening) < 2 and time.monotonic() < deadline:
        with httpx.Client(timeout=30) as probe:
            listening.add(probe.get(f"{url}/readyz").json()["worker_pid"])
    clients = [httpx.Client(base_url=url, limits=httpx.Limits(max_connections=1), timeout=30) for _ in range(16)]
    try:
        with ThreadPoolExecutor(16) as pool:  # 16 keep-alive connections at once, as a proxy's pool opens them
            list(pool.map(lambda c: c.get("/healthz"), clients))
        ready = [c.get("/readyz").json() for c in clients]
        assert all(r["status"] == "ready" for r in ready)  # a worker takes connections only once it is ready
        pids = {r["worker_pid"] for r in ready}
        assert len(pids) == 2, f"every connection went to one worker: {pids}"
        assert {r["generation"] for r in ready} == {0}

        proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            seen = [c.get("/readyz").json() for c in clients]
            if all(s.get("generation") == 1 for s in seen):
                break
            time.sleep(0.2)
        assert [s.get("generation") for s in seen] == [1] * 16
        assert {s["worker_pid"] for s in seen} == pids, "SIGHUP restarted the workers instead of reloading them"
        assert proc.poll() is None

        # The admin route lands on one worker, which has the supervisor reload them all before it answers.
        r = clients[0].post("/v1/admin/reload", headers=KEY)
        assert r.status_code == 200 and r.json()["generation"] == 2, r.text
        deadline = time.monotonic() + 30  # the other worker builds alongside; it may finish a moment later
        while time.monotonic() < deadline:
            generations = [c.get("/readyz").json()["generation"] for c in clients]
            if generations == [2] * 16:
                break
            time.sleep(0.2)
        assert generations == [2] * 16

        proc.kill()  # the supervisor killed outright: its workers must not serve on, orphaned
        deadline = time.monotonic() + 30
        while any(Path(f"/proc/{pid}").exists() for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not any(Path(f"/proc/{pid}").exists() for pid in pids)
    finally:
        for c in clients:
            c.close()
        proc.terminate()
        proc.wait(timeout=30)


def test_concurrent_bulk_requests_on_numbas_workqueue_layer_are_all_answered():
    # Without libgomp or tbb (a slim image), numba runs parallel kernels on its workqueue layer, which terminates
    # the process when two threads call them at once: two bulk requests did exactly that (the grid lookup, the
    # JSON row copy). The calls now take turns there; every answer must come back, right, and the service live.
    proc, url = start_service({"NUMBA_THREADING_LAYER": "workqueue", "ENRICH_LOG_LEVEL": "WARNING"})
    try:
        rng = np.random.default_rng(7)
        n = 60_000  # above the grid's serial threshold: the parallel kernels run
        x, y = rng.uniform(-117.28, -116.95, n), rng.uniform(32.53, 33.12, n)
        body = orjson.dumps({"points": [{"id": i, "lon": a, "lat": b}
                                        for i, (a, b) in enumerate(zip(x.tolist(), y.tolist()))],
                             "layers": ["council_district", "zip"]})

        def post(_):
            r = httpx.post(f"{url}/v1/pip", content=body, headers={"content-type": "application/json"},
                           timeout=120)
            r.raise_for_status()
            return [(row["council_district"], row["zip"]) for row in r.json()["results"]]

        with ThreadPoolExecutor(6) as pool:
            answers = list(pool.map(post, range(12)))
        assert proc.poll() is None, "the service died"
        assert len(answers[0]) == n and all(a == answers[0] for a in answers)
        assert sum(cd is not None for cd, _ in answers[0]) > n // 4  # real tags, not an answer of nulls
        one = httpx.get(f"{url}/v1/pip", params={**CITY_HALL, "layers": "council_district"}, timeout=10).json()
        assert one["council_district"] == "3"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
