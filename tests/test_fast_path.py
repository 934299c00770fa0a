"""GET /v1/pip answered in front of the framework (server/fast_path.py) is the full route's answer, byte for byte.

Two apps on the same layers: one as served, whose fast answers are counted, and one whose fast path declines every
request, so the full FastAPI route answers it. Every request goes to both: same status, same headers in the same
order (the request id given, so it is the same), same body. The fast path must have answered the ordinary ones
itself, and left every error to the route, so each error is written in one place.
"""

from __future__ import annotations

import contextlib
import logging
import re

import numpy as np
import orjson
import pytest
from pyproj import Transformer

from enrich_service.api import pip
from enrich_service.settings import get_settings

from .conftest import ADDRESS, BOUNDARIES, ready_app, real_points

pytestmark = pytest.mark.data

CITY_HALL = (-117.1627, 32.7167)
ENV = {"ENRICH_BOUNDARY_DIR": str(BOUNDARIES), "ENRICH_REFERENCE_DIR": str(ADDRESS), "ENRICH_API_KEYS": "read-key"}


@pytest.fixture(scope="module")
def apps():
    """(fast client, full-route client, list of the fast path's outcomes: True answered, False declined)."""
    outcomes: list[bool] = []
    real, real_post = pip.get_pip_fast, pip.post_pip_fast

    def counted(index, query):
        response = real(index, query)
        outcomes.append(response is not None)
        return response

    async def counted_post(index, read, headers):
        response = await real_post(index, read, headers)
        outcomes.append(response is not None)
        return response

    async def declined_post(index, read, headers):
        await read()  # the body read, then left to the route: what a declined fast answer does
        return None

    with contextlib.ExitStack() as stack:
        patch = stack.enter_context(pytest.MonkeyPatch.context())
        patch.setattr(pip, "get_pip_fast", counted)
        patch.setattr(pip, "post_pip_fast", counted_post)
        fast = stack.enter_context(ready_app(ENV))
        patch.setattr(pip, "get_pip_fast", lambda index, query: None)
        patch.setattr(pip, "post_pip_fast", declined_post)
        full = stack.enter_context(ready_app(ENV))
        patch.undo()
        yield fast, full, outcomes


def both(apps, query: str, headers: dict | None = None) -> tuple[bool | None, object]:
    """GET /v1/pip?query on both apps; asserts the answers are the same; returns the fast path's outcome and the
    answer."""
    fast, full, outcomes = apps
    headers = {"X-Request-ID": "same-id", **(headers or {})}
    seen = len(outcomes)
    a = fast.get(f"/v1/pip?{query}", headers=headers)
    b = full.get(f"/v1/pip?{query}", headers=headers)
    assert a.status_code == b.status_code, (query, a.text, b.text)
    assert a.headers.raw == b.headers.raw, query
    assert a.content == b.content, query
    return (outcomes[seen] if len(outcomes) > seen else None), a


def test_real_points_are_answered_on_the_fast_path_exactly_as_by_the_route(apps):
    lon, lat = real_points()
    pick = np.random.default_rng(3).choice(len(lon), 150, replace=False)
    inside = 0
    for x, y in zip(lon[pick].tolist(), lat[pick].tolist()):
        taken, r = both(apps, f"lon={x!r}&lat={y!r}")
        assert taken is True and r.status_code == 200
        inside += r.json()["council_district"] is not None
    assert 0 < inside < 150  # points inside and outside the city both compared
    taken, r = both(apps, f"lon={CITY_HALL[0]}&lat={CITY_HALL[1]}")
    assert taken and r.json()["council_district"] == "3"
    assert r.headers["x-request-id"] == "same-id" and len(r.headers["x-enrich-layers-sha256"]) == 64


@pytest.mark.parametrize("as_of", [None, "2016-05-01"])  # the newest council districts, and the 2011 ones
def test_single_lookups_answer_as_the_rows_of_one_batch(apps, as_of):
    """A single lookup goes through the engine's one-point steps (server and route alike); a batch through its
    array steps. The same points must get the same tags and rules both ways."""
    fast = apps[0]
    lon, lat = real_points()
    pick = np.random.default_rng(5).choice(len(lon), 60, replace=False)
    points = [{"id": int(i), "lon": x, "lat": y} for i, x, y in zip(pick, lon[pick].tolist(), lat[pick].tolist())]
    options = {"as_of": as_of} if as_of else {}
    rows = fast.post("/v1/pip", json={"points": points, **options}).json()["results"]
    layers = ("council_district", "neighborhood", "zip")
    for point, row in zip(points, rows):
        one = fast.get("/v1/pip", params={"lon": point["lon"], "lat": point["lat"], **options}).json()
        assert {name: one[name] for name in layers} == {name: row[name] for name in layers}, point
        assert one["rules"] == {name: row[f"{name}_rule"] for name in layers}, point
    assert {row["council_district"] for row in rows} - {None}  # some points inside the city


def test_a_plain_point_is_one_prepare_finds_valid_and_unflagged():
    """points.plain_lonlat lets a single lookup skip prepare: it must say yes exactly where prepare finds a valid
    row with no error and no flag."""
    from enrich_service.crs import WGS84
    from enrich_service.points import CITY_CENTROID, PointBatch, plain_lonlat, prepare

    cx, cy = CITY_CENTROID
    lon, lat = real_points()
    xs = [0.0, 0.0, 1e-9, cx, cx + 2e-6, cx + 5e-7, 180.0, -180.0, 180.0001, 45.0, float("nan"), float("inf"), -117.1,
          6287000.0, *lon[:200].tolist()]
    ys = [0.0, 1e-9, 0.0, cy, cy, cy - 5e-7, 90.0, -90.0, 32.7, 100.0, 32.7, 32.7, -float("inf"), 1840000.0,
          *lat[:200].tolist()]
    prepared = prepare(PointBatch(ids=None, x=np.array(xs), y=np.array(ys)), WGS84)
    for row, (x, y) in enumerate(zip(xs, ys)):
        clean = bool(prepared.valid[row]) and row not in prepared.errors and row not in prepared.flags
        assert plain_lonlat(x, y) == clean, (x, y)


@pytest.mark.parametrize("options", [
    "layers=council_district,zip",
    "layers=zip,%20zip",
    "layers=",
    "as_of=2016-05-01",
    "as_of=2023-01-01&layers=council_district",
    "crs=EPSG:4326",
    "nearest_within_m=",
])
def test_options_are_read_the_same_way(apps, options):
    taken, r = both(apps, f"lon={CITY_HALL[0]}&lat={CITY_HALL[1]}&{options}")
    assert taken is True and r.status_code == 200, r.text


def test_a_projected_point_and_the_flags_are_the_same(apps):
    x, y = Transformer.from_crs(4326, 2230, always_xy=True).transform(*CITY_HALL)
    taken, r = both(apps, f"lon={x!r}&lat={y!r}&crs=EPSG:2230")
    assert taken and r.json()["zip"] == "92101"
    taken, r = both(apps, "lon=0&lat=0")
    assert taken and r.json()["flags"] == ["zero_coordinates"]
    taken, r = both(apps, "lon=-117.1610838&lat=32.715738")
    assert taken and r.json()["flags"] == ["city_centroid"]


def test_a_nearest_search_is_left_to_the_route_and_answers_the_same(apps):
    taken, r = both(apps, "lon=-117.2870&lat=32.7000&nearest_within_m=3000&layers=zip")
    assert taken is False and r.status_code == 200 and "distance_m" in r.json()


@pytest.mark.parametrize("query,status,field", [
    ("lat=32.7", 422, "lon"),
    ("lon=&lat=32.7", 422, "lon"),
    ("lon=abc&lat=32.7", 422, "lon"),
    ("lon=nan&lat=32.7", 422, "lon"),
    ("lon=-117.1&lat=-inf", 422, "lat"),
    ("lon=-117.1&lat=95", 422, "lat"),
    ("lon=32.7&lat=-117.1", 422, "lat"),
    ("lon=6287000&lat=1840000", 422, "lat"),
    ("lon=-117.1&lat=32.7&asof=2016-01-01", 422, "asof"),
    ("lon=-117.1&lat=32.7&layers=council_district,wards", 422, "layers"),
    ("lon=-117.1&lat=32.7&crs=EPSG:999999", 422, "crs"),
    ("lon=-117.1&lat=32.7&as_of=2000-01-01", 422, "as_of"),
    ("lon=-117.1&lat=32.7&as_of=yesterday", 422, "as_of"),
    ("lon=-117.1&lat=32.7&nearest_within_m=-1", 422, "nearest_within_m"),
    ("", 422, "lon"),
])
def test_bad_input_gets_the_routes_own_error(apps, query, status, field):
    taken, r = both(apps, query)
    assert taken is not True
    assert r.status_code == status and r.json()["field"] == field, r.text


def test_another_expected_layer_set_gets_the_routes_409_and_the_same_set_is_answered(apps):
    sha = apps[0].get("/v1/pip", params=dict(zip(("lon", "lat"), CITY_HALL))).headers["x-enrich-layers-sha256"]
    query = f"lon={CITY_HALL[0]}&lat={CITY_HALL[1]}"
    taken, r = both(apps, query, {"X-Enrich-Expect-Layers": sha.upper()})
    assert taken is True and r.status_code == 200
    taken, r = both(apps, query, {"X-Enrich-Expect-Layers": "0" * 64})
    assert taken is not True and r.status_code == 409 and r.json()["field"] == "X-Enrich-Expect-Layers"


def test_the_read_key_is_enforced_the_same_way(apps, monkeypatch):
    monkeypatch.setenv("ENRICH_READ_REQUIRES_KEY", "true")
    get_settings.cache_clear()
    try:
        query = f"lon={CITY_HALL[0]}&lat={CITY_HALL[1]}"
        for headers in ({}, {"X-API-Key": "wrong"}, {"X-API-Key": ""}):
            taken, r = both(apps, query, headers)
            assert taken is None and r.status_code == 401 and r.json()["field"] == "X-API-Key", r.text
            assert r.headers["www-authenticate"] == "ApiKey"
        taken, r = both(apps, query, {"X-API-Key": "read-key"})
        assert taken is True and r.status_code == 200
    finally:
        monkeypatch.delenv("ENRICH_READ_REQUIRES_KEY")
        get_settings.cache_clear()


def test_a_request_id_is_made_when_none_is_given(apps):
    fast = apps[0]
    ids = {fast.get("/v1/pip", params=dict(zip(("lon", "lat"), CITY_HALL))).headers["x-request-id"]
           for _ in range(3)}
    assert len(ids) == 3 and all(len(i) == 32 for i in ids)
    long_id = "x" * 300
    assert fast.get("/v1/pip", params=dict(zip(("lon", "lat"), CITY_HALL)),
                    headers={"X-Request-ID": long_id}).headers["x-request-id"] == long_id[:128]


def test_fast_answers_are_counted_and_logged(apps, caplog):
    fast, _, outcomes = apps
    sample = 'enrich_requests_total{method="GET",route="/v1/pip",status="200"}'
    points = 'enrich_points_tagged_total{layer="zip"}'

    def value(name: str) -> float:
        line = next((ln for ln in fast.get("/metrics").text.splitlines() if ln.startswith(name + " ")), None)
        return float(line.rsplit(" ", 1)[1]) if line else 0.0

    before, tagged = value(sample), value(points)
    seen = len(outcomes)
    with caplog.at_level(logging.INFO, logger="enrich_service.access"):
        for _ in range(3):
            fast.get("/v1/pip", params={"lon": CITY_HALL[0], "lat": CITY_HALL[1], "layers": "zip"},
                     headers={"X-Request-ID": "counted"})
    assert outcomes[seen:] == [True] * 3
    assert value(sample) - before == 3 and value(points) - tagged == 3
    lines = [r for r in caplog.records if r.name == "enrich_service.access" and getattr(r, "request_id", "") == "counted"]
    assert len(lines) == 3
    assert {(r.getMessage(), r.method, r.route, r.status) for r in lines} == {("request", "GET", "/v1/pip", 200)}
    assert all(r.ms >= 0 for r in lines)


def test_the_access_log_line_is_the_one_json_shape(apps):
    from enrich_service.server.observability import JSONFormatter, _access_record

    record = _access_record({"request_id": "r1", "method": "GET", "route": "/v1/pip", "status": 200, "ms": 0.3})
    slow = logging.getLogger("enrich_service.access").makeRecord(
        "enrich_service.access", logging.INFO, __file__, 0, "request", (), None,
        extra={"request_id": "r1", "method": "GET", "route": "/v1/pip", "status": 200, "ms": 0.3})
    made, expected = orjson.loads(JSONFormatter().format(record)), orjson.loads(JSONFormatter().format(slow))
    assert made.pop("ts")[:13] == expected.pop("ts")[:13]
    assert made == expected
    assert list(made) == ["level", "logger", "msg", "request_id", "method", "route", "status", "ms"]


def test_a_worker_hands_the_gil_to_its_event_loop_within_a_millisecond(apps):
    """Batches run in threads holding the GIL; at Python's default 5 ms switch interval a single lookup waited up to
    that long per hand-over (main.create_app sets it for every worker)."""
    import sys

    assert sys.getswitchinterval() <= 0.001


def test_the_grid_kernels_release_the_gil():
    """A batch's grid lookup runs in a thread: without nogil its kernel would keep the event loop, and so every single
    lookup on that worker, waiting for as long as it runs."""
    from enrich_service.engine import grid

    assert grid._lookup_serial.targetoptions.get("nogil") is True
    assert grid._lookup_parallel.targetoptions.get("nogil") is True


@pytest.mark.parametrize("query", ["", "lon=1&lat=2", "lon=1&lon=3&lat=2", "lon", "lon=&lat=", "=1&&lat=2", "a=b=c",
                                   "lon=-117.1&lat=32.7&layers=zip,%20council_district", "layers=a+b", "x=%ZZ&y=é",
                                   "a=1;b=2"])
def test_the_fronts_query_split_reads_as_parse_qsl(query):
    from urllib.parse import parse_qsl

    from enrich_service.server.fast_path import _query

    assert _query(query) == dict(parse_qsl(query, keep_blank_values=True))


# ---- POST /v1/pip with a JSON body -----------------------------------------------------------------------------


def both_post(apps, body: bytes | None = None, headers: dict | None = None, query: str = "",
              **kw) -> tuple[bool | None, object]:
    """POST /v1/pip on both apps; asserts the same status, headers (Server-Timing's stage names, not its times)
    and body; returns the fast path's outcome (None: not asked) and the answer."""
    fast, full, outcomes = apps
    headers = {"X-Request-ID": "same-id", "content-type": "application/json", **(headers or {})}
    seen = len(outcomes)
    a = fast.post(f"/v1/pip{query}", content=body, headers=headers, **kw)
    b = full.post(f"/v1/pip{query}", content=body, headers=headers, **kw)
    assert a.status_code == b.status_code, (a.text[:300], b.text[:300])

    def comparable(r):
        return [(k, v if k != b"server-timing" else re.sub(rb";dur=[^,]*", b"", v)) for k, v in r.headers.raw]

    assert comparable(a) == comparable(b)
    assert a.content == b.content
    return (outcomes[seen] if len(outcomes) > seen else None), a


def _points(n: int, start: int = 0) -> list[dict]:
    lon, lat = real_points()
    return [{"id": i, "lon": float(lon[i]), "lat": float(lat[i])} for i in range(start, start + n)]


@pytest.mark.parametrize("body", [
    {"points": _points(1000)},
    {"points": _points(300, 5000), "layers": ["zip", "council_district"], "as_of": "2016-05-01"},
    {"points": [{"id": "a", "lon": 0, "lat": 0}, {"id": "b", "lon": "x", "lat": 32.7}, {"id": None, "lon": -117.16,
                "lat": 32.71}, {"id": True, "lon": 6.2e6, "lat": 1.84e6}]},  # flags, a bad row, State Plane feet
    {"points": _points(50), "crs": "EPSG:2230"},  # degrees read as feet: every row's error, the same in both
    {"points": _points(20), "nearest_within_m": 100},
    {"points": {"id": [1, 2], "lon": [-117.16, -117.1], "lat": [32.71, 32.75]}},  # columns
])
def test_json_batches_are_answered_on_the_fast_path_exactly_as_by_the_route(apps, body):
    taken, r = both_post(apps, orjson.dumps(body))
    assert taken is True and r.status_code == 200
    assert r.headers["x-request-id"] == "same-id" and "x-enrich-layers" in r.headers
    assert [part.split(";")[0] for part in r.headers["server-timing"].split(", ")] == ["read", "decode", "tag",
                                                                                      "encode"]


def test_a_columns_answer_asked_in_accept_is_the_same(apps):
    taken, r = both_post(apps, orjson.dumps({"points": _points(100)}),
                         headers={"accept": "application/json; shape=columns"})
    assert taken is True and len(r.json()["results"]["id"]) == 100


@pytest.mark.parametrize("case, body, headers, query", [
    ("options in the query string", {"points": _points(5)}, {}, "?layers=zip"),
    ("GeoJSON sent as JSON", {"type": "FeatureCollection", "features": [{"type": "Feature", "properties": {"id": 1},
     "geometry": {"type": "Point", "coordinates": [-117.16, 32.71]}}]}, {}, ""),
    ("a CSV answer", {"points": _points(5)}, {"accept": "text/csv"}, ""),
    ("an Arrow answer", {"points": _points(5)}, {"accept": "application/vnd.apache.arrow.stream"}, ""),
    ("an option out of range", {"points": _points(5), "nearest_within_m": -1}, {}, ""),
    ("no points", {"points": []}, {}, ""),
    ("an unknown layer", {"points": _points(5), "layers": ["wards"]}, {}, ""),
    ("an unknown member", {"points": _points(5), "colour": "red"}, {}, ""),
    ("another expected layer set", {"points": _points(5)}, {"x-enrich-expect-layers": "0" * 64}, ""),
])
def test_what_the_fast_path_does_not_answer_the_route_answers_with_the_body_as_sent(apps, case, body, headers,
                                                                                  query):
    taken, r = both_post(apps, orjson.dumps(body), headers=headers, query=query)
    assert taken is not True, case
    assert r.status_code in (200, 406, 409, 413, 422), (case, r.text[:200])


def test_bodies_that_are_not_json_or_too_large_for_the_front_go_to_the_route(apps):
    taken, r = both_post(apps, b'{"points": [', headers={})
    assert taken is False and r.status_code in (400, 422) and r.json()["field"] == "body"
    big = orjson.dumps({"points": _points(1000) * 20})  # over FAST_BODY_BYTES: not read by the front
    taken, r = both_post(apps, big)
    assert taken is None and r.status_code == 200 and r.json()["count"] == 20_000
    taken, r = both_post(apps, (orjson.dumps({"points": _points(3)}),))  # no Content-Length: chunked
    assert taken is None and r.status_code == 200 and r.json()["count"] == 3


def test_the_body_size_limit_holds_on_the_fast_path(apps, monkeypatch):
    """ENRICH_MAX_BODY_BYTES below the front's megabyte: a body over it is the route's 413, as before."""
    monkeypatch.setenv("ENRICH_MAX_BODY_BYTES", "2048")
    get_settings.cache_clear()
    try:
        taken, r = both_post(apps, orjson.dumps({"points": _points(100)}))
        assert taken is None and r.status_code == 413 and r.json()["field"] == "body", r.text
        taken, r = both_post(apps, orjson.dumps({"points": _points(3)}))
        assert taken is True and r.status_code == 200
    finally:
        monkeypatch.delenv("ENRICH_MAX_BODY_BYTES")
        get_settings.cache_clear()


def test_a_body_that_stops_arriving_gets_the_routes_408_not_a_timeout(tmp_path):
    """A client that sends part of its JSON body and stalls gets 408 naming the body after ENRICH_BODY_TIMEOUT_S,
    once, as from the route (the request timeout's 504 is for work that takes too long, not for a body that does
    not come; and the route, handed the body, would have waited a second timeout for the rest)."""
    import socket
    import time

    from .conftest import start_service

    proc, url = start_service({"ENRICH_BODY_TIMEOUT_S": "2"})
    try:
        port = int(url.rsplit(":", 1)[1])
        body = orjson.dumps({"points": _points(3)})
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(b"POST /v1/pip HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                      b"Content-Length: %d\r\n\r\n" % len(body) + body[:20])
            t0 = time.monotonic()
            answer = b""
            while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
        assert orjson.loads(answer.split(b"\r\n\r\n", 1)[1])["field"] == "body"
        assert 2 <= time.monotonic() - t0 < 3.5  # one body timeout, not two
    finally:
        proc.terminate()
        proc.wait(timeout=30)
