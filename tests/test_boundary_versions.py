"""One boundary version everywhere (issue 15): validation that catches wrong-but-parseable files, the accepted layer
set a restarted worker or a new replica loads, replicas following it, and X-Enrich-Expect-Layers.

The whole deployment (two replicas of two workers behind nginx, the refresh DAG under load, a worker killed with
kill -9 after a refused file) is in tests/test_scaleout.py; these are the same promises, one service or two.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

import httpx
import orjson
import pytest
import shapely

from enrich_service.errors import ReloadRefused
from enrich_service.index import build_index
from enrich_service.layers.accepted import AcceptedStore
from enrich_service.settings import Settings

from .conftest import BOUNDARIES, REPO, cache_dir_sharing_layers, needs, start_service

if str(REPO / "dags") not in sys.path:  # enrich_pipeline lives beside the DAG files (as Airflow sees it)
    sys.path.append(str(REPO / "dags"))

KEY = {"X-API-Key": "test-admin-key"}
CITY_HALL = {"lon": -117.1627, "lat": 32.7167}
DISTRICTS = "council_districts_2021_datasd.geojson"
NEIGHBORHOODS = "cmty_plan_datasd.geojson"
MANIFEST = REPO / "boundaries" / "manifest.yaml"


def _folder(dest: Path) -> Path:
    """The real layer files, linked (a test replaces one with os.replace, never the original)."""
    dest.mkdir(parents=True, exist_ok=True)
    for f in BOUNDARIES.iterdir():
        (dest / f.name).symlink_to(f)
    return dest


def _write(folder: Path, name: str, doc: dict) -> None:
    tmp = folder / f".{name}.tmp"
    tmp.write_bytes(orjson.dumps(doc))
    os.replace(tmp, folder / name)


def _doc(name: str) -> dict:
    return orjson.loads((BOUNDARIES / name).read_bytes())


def one_key_for_all(doc: dict, field: str, value: str) -> dict:
    for f in doc["features"]:
        f["properties"][field] = value
    return doc


def shifted(doc: dict, metres: float) -> dict:
    """Every geometry moved `metres` east (in UTM 11N), written back in lon/lat: parseable, plausible, wrong."""
    from pyproj import Transformer

    fwd = Transformer.from_crs(4326, 32611, always_xy=True)
    back = Transformer.from_crs(32611, 4326, always_xy=True)

    def move(xy):
        x, y = fwd.transform(xy[:, 0], xy[:, 1])
        return shapely.get_coordinates(shapely.points(*back.transform(x + metres, y)))

    for f in doc["features"]:
        g = shapely.from_geojson(orjson.dumps(f["geometry"]))
        f["geometry"] = orjson.loads(shapely.to_geojson(shapely.transform(g, move)))
    return doc


@pytest.fixture(scope="module")
@needs("data")
def accepted_index(tmp_path_factory):
    """The real files' index: the accepted set the wrong files are compared with."""
    tmp = tmp_path_factory.mktemp("accepted")
    cache = cache_dir_sharing_layers(tmp / "cache")
    return build_index(Settings(boundary_dir=BOUNDARIES, cache_dir=cache, manifest=MANIFEST)), cache


def _refusal(tmp: Path, cache: Path, previous, name: str, doc: dict, manifest: Path = MANIFEST) -> ReloadRefused:
    folder = _folder(tmp / "layers")
    _write(folder, name, doc)
    with pytest.raises(ReloadRefused) as err:
        build_index(Settings(boundary_dir=folder, cache_dir=cache, manifest=manifest), previous=previous)
    return err.value


@pytest.mark.parametrize("what, name, make, check", [
    ("every district says 3", DISTRICTS, lambda: one_key_for_all(_doc(DISTRICTS), "district", 3), "manifest_keys"),
    ("8 of 9 districts missing", DISTRICTS,
     lambda: {**_doc(DISTRICTS), "features": _doc(DISTRICTS)["features"][:1]}, "manifest_keys"),
    ("districts shifted 1 km east", DISTRICTS, lambda: shifted(_doc(DISTRICTS), 1000), "area_change"),
    ("every neighborhood is Downtown", NEIGHBORHOODS,
     lambda: one_key_for_all(_doc(NEIGHBORHOODS), "cpname", "Downtown"), "key_set"),
    ("half the neighborhoods missing", NEIGHBORHOODS,
     lambda: {**_doc(NEIGHBORHOODS), "features": _doc(NEIGHBORHOODS)["features"][::2]}, "key_set"),
    ("neighborhoods shifted 1 km east", NEIGHBORHOODS, lambda: shifted(_doc(NEIGHBORHOODS), 1000), "area_change"),
])
def test_a_wrong_but_parseable_file_is_refused_naming_the_check(tmp_path, accepted_index, what, name, make, check):
    previous, cache = accepted_index
    err = _refusal(tmp_path, cache, previous, name, make())
    assert err.check == check, (what, err.message)
    assert f"check {check} failed" in err.message


def test_without_an_accepted_set_the_manifest_checks_still_catch_a_shift(tmp_path, accepted_index):
    _, cache = accepted_index
    err = _refusal(tmp_path, cache, None, DISTRICTS, shifted(_doc(DISTRICTS), 1000))
    assert err.check in ("city_coverage", "known_places"), err.message


def test_a_redistricting_goes_through_the_manifest_as_a_new_version(tmp_path, accepted_index):
    """The 2011 lines presented as the 2021 file are refused (a changed version); the same lines as a new manifest
    version with its own file and effective date are accepted, and dates pick the version."""
    previous, cache = accepted_index
    err = _refusal(tmp_path / "a", cache, previous, DISTRICTS, _doc("council_districts_2011_datasd.geojson"))
    assert err.check == "area_change", err.message

    folder = _folder(tmp_path / "b" / "layers")
    _write(folder, "council_districts_2031.geojson", _doc("council_districts_2011_datasd.geojson"))
    text = MANIFEST.read_text().replace(
        "  neighborhood:\n",
        "      - version: \"2031\"\n        effective_from: 2031-01-01\n"
        "        file: council_districts_2031.geojson\n        sha256: " + "0" * 64 + "\n"
        "        keys: [\"1\", \"2\", \"3\", \"4\", \"5\", \"6\", \"7\", \"8\", \"9\"]\n"
        "  neighborhood:\n", 1)
    manifest = tmp_path / "manifest.yaml"
    manifest.write_text(text)
    index = build_index(Settings(boundary_dir=folder, cache_dir=cache, manifest=manifest), previous=previous)
    assert [v.version for v in index.store.versions["council_district"]] == ["2011", "2021", "2031"]
    assert index.layers_sha256 != previous.layers_sha256


def _readyz(url: str) -> dict:
    with httpx.Client(timeout=30) as c:  # a new connection: the kernel may hand it to either worker
        return c.get(f"{url}/readyz").json()


@pytest.mark.data
def test_replicas_follow_the_accepted_set_and_a_batch_names_its_set(tmp_path):
    """Two replicas share the accepted folder: a reload accepted by one reaches the other within seconds; a request
    expecting another set gets 409; a refused file is refused on a replica and never reaches the other."""
    folder = _folder(tmp_path / "layers")
    env = {"ENRICH_BOUNDARY_DIR": str(folder), "ENRICH_ACCEPTED_DIR": str(tmp_path / "accepted"),
           "ENRICH_FOLLOW_INTERVAL_S": "0.5", "ENRICH_LOG_LEVEL": "WARNING"}
    a, url_a = start_service(env)
    b, url_b = start_service(env)
    try:
        old = _readyz(url_a)["layers_sha256"]
        assert _readyz(url_b)["layers_sha256"] == old and _readyz(url_b)["accepted_sha256"] == old
        r = httpx.get(f"{url_a}/v1/pip", params=CITY_HALL)
        assert r.headers["x-enrich-layers-sha256"] == old

        doc = _doc(DISTRICTS)
        doc["name"] = "re-exported"  # the same lines, another file: a new set that passes every check
        _write(folder, DISTRICTS, doc)
        r = httpx.post(f"{url_a}/v1/admin/reload", headers=KEY, timeout=60)
        assert r.status_code == 200, r.text
        new = r.json()["layers_sha256"]
        assert new != old
        t0 = time.monotonic()
        while _readyz(url_b)["layers_sha256"] != new:
            assert time.monotonic() - t0 < 15, "replica b did not follow the accepted set"
            time.sleep(0.1)

        # one version per run: a batch expecting the old set is refused, not answered from the new one
        body = {"points": [{"id": 1, **CITY_HALL}]}
        r = httpx.post(f"{url_b}/v1/pip", json=body, headers={"X-Enrich-Expect-Layers": old})
        assert r.status_code == 409 and r.json()["code"] == "layers_version_mismatch", r.text
        r = httpx.post(f"{url_b}/v1/pip", json=body, headers={"X-Enrich-Expect-Layers": new})
        assert r.status_code == 200 and r.headers["x-enrich-layers-sha256"] == new
        # the same for an address-only run's geocode-join batches, through the client the DAG uses
        import pyarrow as pa

        from enrich_service.client import EnrichClient, LayersVersionMismatch

        addresses = pa.table({"id": [1], "address": ["4608 Gardena Avenue"]})
        with EnrichClient(url_b) as client:
            with pytest.raises(LayersVersionMismatch):
                client.geocode_table(addresses, expect_layers=old)
            answer, _ = client.geocode_table(addresses, expect_layers=new)
            assert client.last_layers_sha256 == new and answer.column("council_district").to_pylist() == ["2"]

        # a refused file: 409 naming the check, on a; b and a keep serving the accepted set
        _write(folder, DISTRICTS, one_key_for_all(_doc(DISTRICTS), "district", 3))
        r = httpx.post(f"{url_a}/v1/admin/reload", headers=KEY, timeout=60)
        assert r.status_code == 409 and r.json()["check"] == "manifest_keys", r.text
        time.sleep(1.5)
        assert _readyz(url_a)["layers_sha256"] == _readyz(url_b)["layers_sha256"] == new
        refused = AcceptedStore(tmp_path / "accepted").refused()
        assert [v["check"] for v in refused.values()] == ["manifest_keys"]

        # the refresh DAG's wait: each replica asked itself; a set nobody serves fails naming every laggard
        from enrich_pipeline.boundaries import wait_for_replicas

        assert set(wait_for_replicas([url_a, url_b], new, timeout_s=30, probes=2)) == {url_a, url_b}
        with pytest.raises(RuntimeError) as err:
            wait_for_replicas([url_a, url_b], "f" * 64, timeout_s=1, probes=2)
        assert "2 of 2 replicas" in str(err.value) and url_a in str(err.value) and new[:12] in str(err.value)
    finally:
        for p in (a, b):
            p.terminate()
            p.wait(timeout=30)


def test_the_accepted_folder_keeps_the_current_and_previous_files_only(tmp_path):
    store = AcceptedStore(tmp_path / "accepted")
    files = {}
    for n in range(3):
        f = tmp_path / f"f{n}.geojson"
        f.write_text(f"version {n}")
        from enrich_service.layers.sources import sha256_of

        files[n] = store.record({"f.geojson": (f, sha256_of(f))})
    kept = {p.name for p in (tmp_path / "accepted" / "files").iterdir()}
    assert kept == {files[1].files["f.geojson"], files[2].files["f.geojson"]}
    assert store.read().sha256 == files[2].sha256 and store.read().previous == files[1].sha256
    shutil.rmtree(tmp_path / "accepted")
    assert store.read() is None


def test_a_run_pins_the_first_answered_set_and_replicas_come_from_the_connection(tmp_path):
    from types import SimpleNamespace

    from enrich_pipeline.boundaries import replica_urls
    from enrich_pipeline.enrich import pin_layers, pinned_layers

    assert pinned_layers(tmp_path) is None
    assert pin_layers(tmp_path, "a" * 64) == "a" * 64
    assert pin_layers(tmp_path, "b" * 64) == "a" * 64  # a later batch answered from another set loses
    assert pinned_layers(tmp_path) == "a" * 64

    conn = SimpleNamespace(extra_dejson={"replicas": "127.0.0.1:8081, http://127.0.0.1:8082/"})
    assert replica_urls(conn) == ["http://127.0.0.1:8081", "http://127.0.0.1:8082"]
    assert replica_urls(SimpleNamespace(extra_dejson={"replicas": ["localhost:9000"]})) in (
        ["http://127.0.0.1:9000"], ["http://127.0.0.1:9000", "http://[::1]:9000"])
    assert replica_urls(SimpleNamespace(extra_dejson={})) == []
    # An entry without scheme or port takes them from the connection, as the hook's base URL does (not http:8080).
    tls = SimpleNamespace(extra_dejson={"replicas": "10.0.0.5, [::1]:9000"}, schema="https", port=8443)
    assert replica_urls(tls) == ["https://10.0.0.5:8443", "https://[::1]:9000"]
