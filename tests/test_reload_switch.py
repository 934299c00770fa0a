"""Reload under load with a real change: the versions swapped in answer the probe points differently.

Each reload swaps in a 2021 districts file whose districts 6 and 7 trade labels (or trade them back), with a new
sha256 each time. Geometry is untouched, so City Hall (district 3, the manifest's sanity point) still passes and
every reload is accepted; but a point in district 6 answers "7" in every other version. While GETs and JSON batches
run, every answer is checked against the version it names (its sha256): the labels must be that version's. A
reload that kept the old index, or answered from one index while naming another, fails here. Requests that start
after a reload is answered (and before the next is sent) must name the version just swapped in. The last switch is
made by SIGHUP, the operator's other way in.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import orjson
import pytest
import shapely

from enrich_service.layers.sources import sha256_of

from .conftest import BOUNDARIES, start_service

KEY = {"X-API-Key": "test-admin-key"}
DISTRICTS_2021 = "council_districts_2021_datasd.geojson"
CITY_HALL = (-117.1627, 32.7167)


def relabelled(original: bytes, n: int) -> bytes:
    """Version n of the file: districts 6 and 7 trade labels when n is odd; a distinct file (sha256) every time."""
    doc = orjson.loads(original)
    doc["name"] = f"council_districts_relabelled_{n}"
    if n % 2:
        for f in doc["features"]:
            d = str(f["properties"]["district"])
            if d in ("6", "7"):
                f["properties"]["district"] = int({"6": "7", "7": "6"}[d])
    return orjson.dumps(doc)


def write(path: Path, content: bytes) -> str:
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(content)
    os.replace(tmp, path)
    return sha256_of(path)


@pytest.fixture()
def service(tmp_path):
    for f in BOUNDARIES.iterdir():
        if f.name == DISTRICTS_2021:
            (tmp_path / f.name).write_bytes(f.read_bytes())
        else:
            (tmp_path / f.name).symlink_to(f)
    proc, url = start_service({"ENRICH_BOUNDARY_DIR": str(tmp_path), "ENRICH_LOG_LEVEL": "WARNING"})
    yield proc, url, tmp_path / DISTRICTS_2021
    proc.terminate()
    proc.wait(timeout=30)


@pytest.mark.skip(reason="hangs since issue 15's validation: a districts file whose 6 and 7 trade labels is refused "
                         "(area_change), so the reloads this test waits for never happen; the change must come as a "
                         "new manifest version (issue 17 stays open for it)")
def test_every_answer_during_reloads_matches_the_version_it_names(service, store):
    proc, url, path = service
    v = store.versions["council_district"][1]
    p6 = shapely.point_on_surface(v.geoms[np.flatnonzero(v.keys == "6")[0]])
    p7 = shapely.point_on_surface(v.geoms[np.flatnonzero(v.keys == "7")[0]])
    probes = [(p6.x, p6.y), (p7.x, p7.y), CITY_HALL]
    straight, swapped = ["6", "7", "3"], ["7", "6", "3"]

    original = path.read_bytes()
    initial = sha256_of(path)
    expect = {initial: straight}  # generation 0 serves the original file
    batch = orjson.dumps({"points": [{"id": i, "lon": probes[i % 3][0], "lat": probes[i % 3][1]} for i in range(300)],
                          "layers": ["council_district"]})
    log: list[tuple[float, float, str, dict]] = []  # (start, end, sha256 named, {probe index: keys answered})
    problems: list[str] = []
    stop = threading.Event()

    def load(worker: int) -> None:
        with httpx.Client(base_url=url, timeout=60) as client:
            i = 0
            while not stop.is_set():
                t0 = time.monotonic()
                if (i + worker) % 3 == 0:
                    r = client.post("/v1/pip", content=batch, headers={"content-type": "application/json"})
                    if r.status_code != 200:
                        problems.append(f"batch {r.status_code}: {r.text[:200]}")
                    else:
                        sha = orjson.loads(r.headers["x-enrich-layers"])["council_district"]["sha256"]
                        rows = r.json()["results"]
                        keys = [row["council_district"] for row in rows]
                        log.append((t0, time.monotonic(), sha, {k: set(keys[k::3]) for k in range(3)}))
                else:
                    k = i % 3
                    r = client.get("/v1/pip", params={"lon": probes[k][0], "lat": probes[k][1],
                                                      "layers": "council_district"})
                    if r.status_code != 200:
                        problems.append(f"GET {r.status_code}: {r.text[:200]}")
                    else:
                        body = r.json()
                        log.append((t0, time.monotonic(), body["layers"]["council_district"]["sha256"],
                                    {k: {body["council_district"]}}))
                i += 1

    swaps: list[tuple[float, float, str]] = []  # (reload sent, reload answered / seen, sha256 now serving)
    with ThreadPoolExecutor(3) as pool:
        workers = [pool.submit(load, w) for w in range(3)]
        time.sleep(0.5)
        with httpx.Client(base_url=url, headers=KEY, timeout=120) as admin:
            for n in range(1, 4):
                sha = write(path, relabelled(original, n))
                expect[sha] = swapped if n % 2 else straight
                t0 = time.monotonic()
                r = admin.post("/v1/admin/reload")
                assert r.status_code == 200, r.text
                swaps.append((t0, time.monotonic(), sha))
                time.sleep(0.4)
            # The last switch by SIGHUP: no answer to wait for, so the readiness generation tells when it is in.
            generation = admin.get("/readyz").json()["generation"]
            sha = write(path, relabelled(original, 4))
            expect[sha] = straight
            t0 = time.monotonic()
            proc.send_signal(signal.SIGHUP)
            deadline = time.monotonic() + 60
            while admin.get("/readyz").json()["generation"] == generation:
                assert time.monotonic() < deadline, "SIGHUP did not reload"
                time.sleep(0.05)
            swaps.append((t0, time.monotonic(), sha))
            time.sleep(0.4)
        stop.set()
        for w in workers:
            w.result()

    assert not problems, problems[:5]
    assert len(log) > 100
    # Every answer is its named version's answer.
    for _, _, sha, answers in log:
        assert sha in expect, f"an answer names a version never swapped in: {sha}"
        want = {k: {expect[sha][k]} for k in answers}
        assert answers == want, (sha, answers, want)
    # After each switch, requests name the new version (none from an index the reload replaced).
    for (_, answered, sha), nxt in zip(swaps, swaps[1:] + [(float("inf"), 0, None)]):
        seen = {s for start, end, s, _ in log if start >= answered and end <= nxt[0]}
        assert seen <= {sha}, (sha, seen)
    assert {s for _, _, s, _ in log} >= {sha for _, _, sha in swaps}, "some version was never seen serving"
