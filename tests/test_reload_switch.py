"""Reload under load with a real change: the versions swapped in answer the probe points differently.

Each reload swaps in a 2021 districts file whose shared 6/7 edge has moved, or moved back: two 300 m disks on that
edge change hands (one from 7 to 6, one from 6 to 7). That is a boundary shift of about 0.2 % of either district's
area, under the validation's area_change threshold, far from every manifest sanity point, with the same features and
keys; so every reload is accepted, and a point inside each disk answers "6" in one version and "7" in the next. Each
file is a distinct sha256.

While GETs and JSON batches run, every answer is checked against the version it names: the council_district
sha256 in the answer, and the layer set in X-Enrich-Layers-Sha256. The expected keys come from shapely `covers` on
the features of the very file that sha256 was computed from, not from the service. A reload that kept the old
index, or answered from one index while naming another, fails here; requests that start after a reload is answered
(and before the next is sent) must name the version just swapped in. The last switch is made by SIGHUP, the
operator's other way in. Every wait is bounded and the load stops whatever happens, so a refused reload fails with
the service's reason instead of hanging.
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
import pyproj
import pytest
import shapely

from enrich_service.layers.sources import sha256_of

from .conftest import BOUNDARIES, start_service

KEY = {"X-API-Key": "test-admin-key"}
DISTRICTS_2021 = "council_districts_2021_datasd.geojson"
CITY_HALL = (-117.1627, 32.7167)  # district 3, far from the moved edge
MIRA_MESA = (-117.1440, 32.9150)  # district 6 (a manifest sanity point), ~9 km from the moved edge
DISK_M = 300.0
TO_UTM = pyproj.Transformer.from_crs(4326, 32611, always_xy=True)
TO_LONLAT = pyproj.Transformer.from_crs(32611, 4326, always_xy=True)


def _reproject(geom, transformer):
    return shapely.transform(geom, lambda c: np.column_stack(transformer.transform(c[:, 0], c[:, 1])))


def _features(content: bytes) -> list[tuple[str, shapely.Geometry]]:
    return [(str(f["properties"]["district"]), shapely.from_geojson(orjson.dumps(f["geometry"])))
            for f in orjson.loads(content)["features"]]


def moved_edge(original: bytes) -> tuple[bytes, list[tuple[float, float]]]:
    """The file with two disks on the 6/7 edge traded (at 30 % and 70 % of its length), and a point inside each."""
    doc = orjson.loads(original)
    at = {str(f["properties"]["district"]): i for i, f in enumerate(doc["features"])}
    g6, g7 = (shapely.from_geojson(orjson.dumps(doc["features"][at[k]]["geometry"])) for k in ("6", "7"))
    edge = _reproject(shapely.line_merge(shapely.intersection(g6, g7)), TO_UTM)
    assert edge.geom_type == "LineString", f"the 6/7 edge is expected in one piece, got a {edge.geom_type}"
    disk_to_6, disk_to_7 = (_reproject(edge.interpolate(f, normalized=True).buffer(DISK_M), TO_LONLAT)
                            for f in (0.3, 0.7))
    gained_by_6, gained_by_7 = shapely.intersection(disk_to_6, g7), shapely.intersection(disk_to_7, g6)
    new6 = shapely.difference(shapely.union(g6, gained_by_6), disk_to_7)
    new7 = shapely.difference(shapely.union(g7, gained_by_7), disk_to_6)
    for key, geom in (("6", new6), ("7", new7)):
        doc["features"][at[key]]["geometry"] = orjson.loads(shapely.to_geojson(geom))
    # A point well inside each traded piece (60 m from its outline), so the answer does not hang on the edge rule.
    probes = [_reproject(shapely.point_on_surface(_reproject(piece, TO_UTM).buffer(-60)), TO_LONLAT)
              for piece in (gained_by_6, gained_by_7)]
    return orjson.dumps(doc), [(p.x, p.y) for p in probes]


def truth(content: bytes, probes: list[tuple[float, float]]) -> list[str]:
    """The one district whose polygon in this file covers each probe (shapely, independent of the service)."""
    features = _features(content)
    keys = []
    for lon, lat in probes:
        covering = [k for k, g in features if shapely.covers(g, shapely.Point(lon, lat))]
        assert len(covering) == 1, f"probe {lon}, {lat} is covered by {covering} in this file: pick a clearer one"
        keys.append(covering[0])
    return keys


def version(original: bytes, moved: bytes, n: int) -> bytes:
    """File n of the run: the edge moved when n is odd, as published when even; a distinct sha256 each time."""
    doc = orjson.loads(moved if n % 2 else original)
    doc["name"] = f"council_districts_reload_{n}"
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


def test_the_moved_edge_changes_the_probes_and_nothing_the_validation_checks():
    original = (BOUNDARIES / DISTRICTS_2021).read_bytes()
    moved, traded = moved_edge(original)
    probes = [*traded, CITY_HALL, MIRA_MESA]
    assert truth(original, probes) == ["7", "6", "3", "6"]
    assert truth(moved, probes) == ["6", "7", "3", "6"]
    before, after = dict(_features(original)), dict(_features(moved))
    assert sorted(before) == sorted(after)
    for key in ("6", "7"):
        a, b = _reproject(before[key], TO_UTM), _reproject(after[key], TO_UTM)
        assert 0 < shapely.area(shapely.symmetric_difference(a, b)) / a.area < 0.005, key


def test_every_answer_during_reloads_matches_the_version_it_names(service):
    proc, url, path = service
    original = path.read_bytes()
    moved, traded = moved_edge(original)
    probes = [*traded, CITY_HALL, MIRA_MESA]
    n_probes = len(probes)

    expect = {sha256_of(path): truth(original, probes)}  # generation 0 serves the file as published
    district_of_set: dict[str, str] = {}  # X-Enrich-Layers-Sha256 -> the council_district sha256 in that set

    def serving(answer: dict) -> None:
        district_of_set[answer["layers_sha256"]] = answer["versions"]["council_district"][-1]["sha256"]

    batch = orjson.dumps({"points": [{"id": i, "lon": probes[i % n_probes][0], "lat": probes[i % n_probes][1]}
                                     for i in range(200)], "layers": ["council_district"]})
    # (start, end, layer set named, council_district {version, sha256} named, {probe index: keys answered})
    log: list[tuple[float, float, str, dict, dict[int, set[str]]]] = []
    problems: list[str] = []
    stop = threading.Event()

    def load(worker: int) -> None:
        with httpx.Client(base_url=url, timeout=60) as client:
            i = 0
            while not stop.is_set() and len(problems) < 5:
                t0 = time.monotonic()
                if (i + worker) % 3 == 0:
                    r = client.post("/v1/pip", content=batch, headers={"content-type": "application/json"})
                    if r.status_code != 200:
                        problems.append(f"batch {r.status_code}: {r.text[:200]}")
                        continue
                    named = orjson.loads(r.headers["x-enrich-layers"])["council_district"]
                    keys = [row["council_district"] for row in r.json()["results"]]
                    answers = {k: set(keys[k::n_probes]) for k in range(n_probes)}
                else:
                    k = i % n_probes
                    r = client.get("/v1/pip", params={"lon": probes[k][0], "lat": probes[k][1],
                                                      "layers": "council_district"})
                    if r.status_code != 200:
                        problems.append(f"GET {r.status_code}: {r.text[:200]}")
                        continue
                    body = r.json()
                    named, answers = body["layers"]["council_district"], {k: {body["council_district"]}}
                log.append((t0, time.monotonic(), r.headers.get("x-enrich-layers-sha256", "(none)"), named, answers))
                i += 1

    swaps: list[tuple[float, float, str]] = []  # (reload sent, reload answered / seen, district sha256 now serving)
    with ThreadPoolExecutor(3) as pool, httpx.Client(base_url=url, headers=KEY, timeout=120) as admin:
        serving(admin.get("/readyz").json())
        workers = [pool.submit(load, w) for w in range(3)]
        try:
            time.sleep(0.5)
            for n in range(1, 4):
                content = version(original, moved, n)
                sha = write(path, content)
                expect[sha] = truth(content, probes)
                t0 = time.monotonic()
                r = admin.post("/v1/admin/reload")
                assert r.status_code == 200, f"reload {n} refused: {r.text}"
                serving(r.json())
                swaps.append((t0, time.monotonic(), sha))
                time.sleep(0.4)
            # The last switch by SIGHUP: no answer to wait for, so the readiness generation tells when it is in.
            generation = admin.get("/readyz").json()["generation"]
            content = version(original, moved, 4)
            sha = write(path, content)
            expect[sha] = truth(content, probes)
            t0 = time.monotonic()
            proc.send_signal(signal.SIGHUP)
            deadline = time.monotonic() + 60
            while (ready := admin.get("/readyz").json())["generation"] == generation and time.monotonic() < deadline:
                time.sleep(0.05)
            sighup_reloaded = ready["generation"] != generation
            if sighup_reloaded:
                serving(ready)
                swaps.append((t0, time.monotonic(), sha))
                time.sleep(0.4)
        finally:
            stop.set()
        for w in workers:
            w.result()

    assert not problems, problems
    assert len(log) > 50, f"only {len(log)} answers during the reloads"
    assert len(set(map(tuple, expect.values()))) == 2, "the versions swapped in must answer the probes differently"
    # Every answer is the answer of the version it names, in its body and in X-Enrich-Layers-Sha256.
    for _, _, layer_set, named, answers in log:
        sha = named["sha256"]
        assert sha in expect, f"an answer names a council_district file never swapped in: {sha}"
        assert named["version"] == "2021", named
        assert district_of_set.get(layer_set) == sha, \
            f"X-Enrich-Layers-Sha256 {layer_set} does not hold the council_district file {sha} the answer names"
        want = {k: {expect[sha][k]} for k in answers}
        assert answers == want, f"version {sha[:12]} answered {answers}, its file says {want} (probes {probes})"
    # After each switch, requests name the new version (none from an index the reload replaced).
    for (_, answered, sha), nxt in zip(swaps, [*swaps[1:], (float("inf"), 0.0, "")]):
        seen = {named["sha256"] for start, end, _, named, _ in log if start >= answered and end <= nxt[0]}
        assert seen <= {sha}, f"after the switch to {sha[:12]}, answers named {sorted(s[:12] for s in seen)}"
    served = {named["sha256"] for *_, named, _ in log}
    assert served >= {sha for _, _, sha in swaps}, "some version was never seen serving"
    assert sighup_reloaded, "no reload within 60 s of SIGHUP (refused? the service log says)"
