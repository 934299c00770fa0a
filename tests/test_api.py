"""The HTTP API on the real layers: known places, versions by date, CRSs, transports, and every bad input."""

from __future__ import annotations

import io

import httpx
import numpy as np
import orjson
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.ipc as ipc
import pytest
import shapely
from pyproj import Transformer

from .conftest import ADDRESS, BOUNDARIES, ready_app

pytestmark = pytest.mark.data

CITY_HALL = (-117.1627, 32.7167)
ARROW = "application/vnd.apache.arrow.stream"


@pytest.fixture(scope="module")
def client():
    env = {"ENRICH_BOUNDARY_DIR": str(BOUNDARIES), "ENRICH_REFERENCE_DIR": str(ADDRESS), "ENRICH_MAX_BATCH": "1000",
           "ENRICH_MAX_BODY_BYTES": str(2_000_000), "ENRICH_API_KEYS": "test-admin-key"}
    with ready_app(env) as c:
        yield c


def pip(client, points, **options):
    return client.post("/v1/pip", content=orjson.dumps({"points": points, **options}),
                       headers={"content-type": "application/json"})


def test_city_hall_single_point(client):
    r = client.get("/v1/pip", params={"lon": CITY_HALL[0], "lat": CITY_HALL[1]})
    assert r.status_code == 200
    body = r.json()
    assert (body["council_district"], body["neighborhood"], body["zip"]) == ("3", "Downtown", "92101")
    assert body["labels"]["council_district"] == "Council District 3"
    assert body["layers"]["council_district"]["version"] == "2021"


def test_city_hall_in_state_plane_feet(client):
    x, y = Transformer.from_crs(4326, 2230, always_xy=True).transform(*CITY_HALL)
    r = client.get("/v1/pip", params={"lon": x, "lat": y, "crs": "EPSG:2230", "layers": "council_district,zip"})
    assert r.status_code == 200, r.text
    assert (r.json()["council_district"], r.json()["zip"]) == ("3", "92101")
    assert abs(r.json()["lon"] - CITY_HALL[0]) < 1e-6


def test_layers_describe_versions_and_sources(client):
    body = client.get("/v1/layers").json()
    assert body["source"].startswith("dir:")
    cd = body["layers"]["council_district"]["versions"]
    assert [v["version"] for v in cd] == ["2011", "2021"]
    assert cd[0]["effective_to"] == "2022-12-09" and cd[1]["effective_from"] == "2022-12-10"
    assert cd[1]["features"] == 9 and len(cd[1]["bbox"]) == 4
    assert cd[1]["sha256"] == "5ab5537e93463677ee685f25d7fec664f0d1b5e4ded7cede6d6444a8c769fcf6"
    assert cd[1]["source"]["sha256_matches_manifest"] is True


@pytest.fixture(scope="module")
def moved_point(store):
    """A point whose district changed between the 2011 and 2021 lines."""
    old, new = store.versions["council_district"]
    i6 = np.flatnonzero(old.keys == "6")[0]
    j6 = np.flatnonzero(new.keys == "6")[0]
    p = shapely.point_on_surface(shapely.difference(old.geoms[i6], new.geoms[j6]))
    return p.x, p.y


def test_as_of_switches_district_versions(client, moved_point):
    lon, lat = moved_point
    before = client.get("/v1/pip", params={"lon": lon, "lat": lat, "as_of": "2016-05-01"}).json()
    after = client.get("/v1/pip", params={"lon": lon, "lat": lat, "as_of": "2023-01-01"}).json()
    assert before["council_district"] == "6"
    assert after["council_district"] not in ("6", None)
    assert before["layers"]["council_district"]["version"] == "2011"
    assert after["layers"]["council_district"]["version"] == "2021"


def test_a_points_date_overrides_the_requests_as_of(client, moved_point):
    lon, lat = moved_point
    r = pip(client, [{"id": "old", "lon": lon, "lat": lat, "date": "2016-05-01"},
                     {"id": "default", "lon": lon, "lat": lat}], as_of="2023-01-01", layers=["council_district"])
    rows = r.json()["results"]
    assert rows[0]["council_district"] == "6" and rows[0]["council_district_version"] == "2011"
    assert rows[1]["council_district"] != "6" and rows[1]["council_district_version"] == "2021"


def test_batch_answers_in_input_order_and_reports_bad_rows_only(client):
    points = [
        {"id": 1, "lon": CITY_HALL[0], "lat": CITY_HALL[1]},
        {"id": 2, "lon": "west", "lat": 32.7},
        {"id": 3, "lat": 32.7},
        {"id": 4, "lon": -117.16, "lat": 132.0},
        {"id": 5, "lon": CITY_HALL[1], "lat": CITY_HALL[0]},
        {"id": 6, "lon": 0, "lat": 0},
        {"id": 7, "lon": -117.1610838, "lat": 32.715738},
        {"id": {"nested": True}, "lon": CITY_HALL[0], "lat": CITY_HALL[1]},
        {"id": 9, "lon": -200, "lat": 32.7},
        {"id": 10, "lon": CITY_HALL[0], "lat": CITY_HALL[1], "date": "yesterday"},
    ]
    r = pip(client, points)
    assert r.status_code == 200
    body = r.json()
    rows = body["results"]
    assert [row["id"] for row in rows] == [1, 2, 3, 4, 5, 6, 7, None, 9, 10]
    assert rows[0]["council_district"] == "3" and rows[0]["error"] is None
    assert rows[1]["error"] == "lon: must be a number, got str"
    assert rows[2]["error"] == "lon: missing"
    assert rows[3]["error"].startswith("lat: out of range")
    assert "swapped" in rows[4]["error"] and rows[4]["flags"] == "swapped_lonlat"
    assert rows[5]["error"] is None and rows[5]["flags"] == "zero_coordinates" and rows[5]["zip"] is None
    assert rows[6]["flags"] == "city_centroid" and rows[6]["council_district"] == "3"
    assert rows[7]["error"].startswith("id:")
    assert rows[8]["error"].startswith("lon: out of range")
    assert rows[9]["error"].startswith("date:")
    assert {e["row"]: e["field"] for e in body["errors"]} == {1: "lon", 2: "lon", 3: "lat", 4: "lat", 7: "id",
                                                               8: "lon", 9: "date"}
    for bad in (1, 2, 3, 4, 8):
        assert rows[bad]["council_district"] is None


@pytest.mark.parametrize("params,field", [
    ({"lon": "nan", "lat": 32.7}, "lon"),
    ({"lon": "inf", "lat": 32.7}, "lon"),
    ({"lon": -117.1, "lat": "-inf"}, "lat"),
    ({"lon": -117.1, "lat": 95}, "lat"),
    ({"lon": -190, "lat": 32.7}, "lon"),
    ({"lat": 32.7}, "lon"),
    ({"lon": "abc", "lat": 32.7}, "lon"),
    ({"lon": -117.1, "lat": 32.7, "layers": "council_district,wards"}, "layers"),
    ({"lon": -117.1, "lat": 32.7, "crs": "EPSG:999999"}, "crs"),
    ({"lon": -117.1, "lat": 32.7, "crs": "not a crs"}, "crs"),
    ({"lon": -117.1, "lat": 32.7, "as_of": "2000-01-01"}, "as_of"),
    ({"lon": -117.1, "lat": 32.7, "as_of": "someday"}, "as_of"),
    ({"lon": -117.1, "lat": 32.7, "nearest_within_m": -5}, "nearest_within_m"),
])
def test_single_point_bad_input_names_the_field(client, params, field):
    r = client.get("/v1/pip", params=params)
    assert r.status_code == 422, r.text
    assert r.json()["field"] == field
    assert field in r.json()["detail"] or field == "layers" and "wards" in r.json()["detail"]


@pytest.mark.parametrize("body,status,field", [
    (b'{"points": [', 400, "body"),
    (b'{"points": [{"id": 1, "lon": NaN, "lat": 32.7}]}', 400, "body"),
    (b'[1, 2]', 422, "body"),
    (b'{"layers": ["zip"]}', 422, "points"),
    (b'{"points": []}', 422, "points"),
    (b'{"points": "many"}', 422, "points"),
    (b'{"points": [{"lon": -117.1, "lat": 32.7}], "layers": ["wards"]}', 422, "layers"),
    (b'{"points": [{"lon": -117.1, "lat": 32.7}], "layers": []}', 422, "layers"),
    (b'{"points": [{"lon": -117.1, "lat": 32.7}], "crs": "EPSG:0"}', 422, "crs"),
    (b'{"points": [{"lon": -117.1, "lat": 32.7}], "as_of": "1999-12-31", "layers": ["council_district"]}', 422,
     "as_of"),
    (orjson.dumps({"points": [{"lon": -117.1, "lat": 32.7}] * 1001}), 413, "points"),
    (b'{"points": [{"lon": -117.1, "lat": 32.7, "id": "' + b"x" * 2_000_001 + b'"}]}', 413, "body"),
])
def test_batch_bad_input_gets_a_4xx_naming_the_field(client, body, status, field):
    r = client.post("/v1/pip", content=body, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    assert r.json()["field"] == field


def test_swapped_state_plane_feet_are_that_rows_error_and_flag(client):
    """x and y swapped in EPSG:2230 feet land far from the city and came back all null with no word; now the row says
    they look swapped (as lon/lat swapped do), and the rows sent the right way round are answered."""
    x, y = 6_280_938.2, 1_841_777.8  # City Hall in State Plane feet (zone 6)
    points = [{"id": 1, "lon": x, "lat": y}, {"id": 2, "lon": y, "lat": x}]
    r = client.post("/v1/pip", content=orjson.dumps({"points": points, "crs": "EPSG:2230"}),
                    headers={"content-type": "application/json"})
    assert r.status_code == 200, r.text
    rows = r.json()["results"]
    assert rows[0]["council_district"] == "3" and rows[0]["error"] is None and rows[0]["flags"] is None, rows[0]
    assert "swapped" in rows[1]["error"] and rows[1]["flags"] == "swapped_xy" and rows[1]["zip"] is None, rows[1]
    # Without crs: each way round the error says they look like State Plane feet, and which way round.
    r = client.post("/v1/pip", content=orjson.dumps({"points": points}), headers={"content-type": "application/json"})
    rows = r.json()["results"]
    assert "State Plane feet: send crs=EPSG:2230" in rows[0]["error"], rows[0]
    assert "State Plane feet with x and y swapped" in rows[1]["error"], rows[1]


def test_wrong_media_type_is_415_and_unacceptable_accept_is_406(client):
    r = client.post("/v1/pip", content=b"<points/>", headers={"content-type": "application/xml"})
    assert r.status_code == 415 and r.json()["field"] == "Content-Type"
    r = client.post("/v1/pip", content=orjson.dumps({"points": [{"lon": -117.1, "lat": 32.7}]}),
                    headers={"content-type": "application/json", "accept": "image/png"})
    assert r.status_code == 406 and r.json()["field"] == "Accept"


@pytest.mark.parametrize("accept, answered", [
    ("text/csv;q=0.1, application/json", "application/json"),  # the higher quality wins, not the first listed
    ("application/json;q=0, text/csv", "text/csv"),  # q=0: not acceptable at all
    ("*/*;q=0.5, text/csv", "text/csv"),
    ("text/csv;q=0.5, */*;q=0.9", "application/json"),  # */*: the request's own type
    ("application/json, text/csv", "application/json"),  # equal quality: the first listed
    ("text/csv; q=1.0, application/json; q=1", "text/csv"),
    ("text/csv;q=abc, application/json", "application/json"),  # a malformed weight: that range is ignored
    ("text/csv;q=, application/json", "application/json"),
    ("text/csv;q=1.5, application/json", "application/json"),
    ("text/*", "text/csv"),  # a subtype wildcard: the first answer of that type
    ("text/*;q=0.5, application/json;q=0.4", "text/csv"),
    # GeoJSON cannot answer a JSON batch (no table to give features): the next acceptable type answers
    ("application/geo+json;q=0.2, application/json;q=0.1", "application/json"),
    ("application/geo+json, text/csv", "text/csv"),
])
def test_accept_quality_values_choose_the_answer(client, accept, answered):
    """Accept's q-values are honoured (RFC 9110 12.5.1): they had been ignored, the first listed type winning."""
    for path, query in (("/v1/pip", ""), ("/v1/pip", "?id_col=id")):  # the fast POST front and the route
        r = client.post(path + query, content=orjson.dumps({"points": [{"id": 1, "lon": CITY_HALL[0], "lat": CITY_HALL[1]}]}),
                        headers={"content-type": "application/json", "accept": accept})
        assert r.status_code == 200 and r.headers["content-type"].startswith(answered), (query, r.headers, r.text[:200])


@pytest.mark.parametrize("accept,status", [("application/json;q=0", 406), ("text/csv", 406), ("image/*", 406),
                                           ("text/html, */*;q=0.8", 200), ("application/*", 200), (None, 200),
                                           ("application/json;q=0.5", 200)])
def test_a_single_lookup_answers_json_when_accept_takes_it(client, accept, status):
    """GET /v1/pip and GET /v1/geocode answer JSON only: an Accept that refuses JSON is a 406 naming Accept, on the
    fast path as on the route (they had answered JSON whatever Accept said); a browser's Accept is fine."""
    for path in (f"/v1/pip?lon={CITY_HALL[0]}&lat={CITY_HALL[1]}",  # the fast path
                 f"/v1/pip?lon={CITY_HALL[0]}&lat={CITY_HALL[1]}&nearest_within_m=5",  # the route's: a nearest search
                 "/v1/geocode?address=1200+Third+Ave"):
        r = client.get(path, headers={"accept": accept} if accept else {})
        assert r.status_code == status, (accept, r.text[:200])
        if status == 406:
            assert r.json()["field"] == "Accept"


@pytest.mark.parametrize("accept", ["application/json;q=0", "text/csv;q=0, application/json;q=0", "image/png, */*;q=0"])
def test_an_accept_refusing_every_answer_is_406(client, accept):
    r = client.post("/v1/pip", content=orjson.dumps({"points": [{"lon": CITY_HALL[0], "lat": CITY_HALL[1]}]}),
                    headers={"content-type": "application/json", "accept": accept})
    assert r.status_code == 406 and r.json()["field"] == "Accept", r.text


def _without_results(doc: dict) -> dict:
    return {k: v for k, v in doc.items() if k != "results"}


def _as_columns(rows: list[dict]) -> dict:
    return {name: [row[name] for row in rows] for name in rows[0]}


def test_a_json_answer_in_columns_holds_the_rows_values_chosen_by_parameter_or_accept(client):
    # City hall, a row dated under the 2011 lines, a bad coordinate (that row's error) and a zero point (a flag).
    points = [{"id": "a", "lon": CITY_HALL[0], "lat": CITY_HALL[1]},
              {"id": 2, "lon": -117.1949, "lat": 32.8244, "date": "2015-06-01"},
              {"id": None, "lon": "x", "lat": 32.7}, {"id": 4, "lon": 0, "lat": 0}]
    body = orjson.dumps({"points": points})
    rows = client.post("/v1/pip", content=body, headers={"content-type": "application/json"}).json()
    assert rows["results"][0]["zip"] == "92101" and rows["errors"][0]["row"] == 2, rows
    for query, accept in (("?shape=columns", None), ("", "application/json; shape=columns"),
                          ("", 'text/html;q=0.9, application/json;shape="columns"')):
        r = client.post(f"/v1/pip{query}", content=body,
                        headers={"content-type": "application/json", **({"accept": accept} if accept else {})})
        assert r.status_code == 200 and r.headers["content-type"] == "application/json", r.text
        doc = r.json()
        assert doc["results"] == _as_columns(rows["results"]), (query, accept)
        assert list(doc["results"]) == list(rows["results"][0])  # the columns in the rows' key order
        assert _without_results(doc) == _without_results(rows)
    # Accept's shape belongs to its JSON entry: a CSV answer chosen first is not refused for it
    r = client.post("/v1/pip", content=b"id,lon,lat\n1,-117.1627,32.7167\n",
                    headers={"content-type": "text/csv", "accept": "text/csv, application/json; shape=columns"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv"), r.text
    # rows stays the default, and can be asked for by name; a CSV body answered in JSON columns
    assert client.post("/v1/pip?shape=rows", content=body, headers={"content-type": "application/json"}).json() \
        == rows
    csv_body = b"id,lon,lat\n1,-117.1627,32.7167\n2,,32.7\n"
    csv_rows = client.post("/v1/pip", content=csv_body,
                           headers={"content-type": "text/csv", "accept": "application/json"}).json()
    r = client.post("/v1/pip?shape=columns", content=csv_body,
                    headers={"content-type": "text/csv", "accept": "application/json"})
    assert r.json()["results"] == _as_columns(csv_rows["results"]), r.text
    assert r.json()["results"]["error"] == [None, "lon: missing"]
    # an Arrow body's id column is written as it is: numbers stay numbers, as in the rows
    arrow_body = _arrow(pa.table({"id": pa.array([7, None], pa.int64()), "lon": [CITY_HALL[0], -117.25],
                                  "lat": [CITY_HALL[1], 32.85]}))
    arrow_rows = client.post("/v1/pip", content=arrow_body,
                             headers={"content-type": ARROW, "accept": "application/json"}).json()
    r = client.post("/v1/pip?shape=columns", content=arrow_body,
                    headers={"content-type": ARROW, "accept": "application/json"})
    assert r.json()["results"] == _as_columns(arrow_rows["results"]) and r.json()["results"]["id"] == [7, None]


def test_points_sent_as_columns_are_answered_as_the_same_points_sent_as_rows(client):
    points = [{"id": "a", "lon": CITY_HALL[0], "lat": CITY_HALL[1]}, {"id": 2, "lon": None, "lat": 32.7},
              {"id": 3, "lon": -117.1949, "lat": 32.8244}]
    rows = client.post("/v1/pip?layers=zip,council_district", content=orjson.dumps({"points": points}),
                       headers={"content-type": "application/json"}).json()
    columns = {k: [p[k] for p in points] for k in ("id", "lon", "lat")}
    for shape in ("rows", "columns"):
        r = client.post(f"/v1/pip?shape={shape}", content=orjson.dumps({"points": columns,
                                                                         "layers": ["zip", "council_district"]}),
                        headers={"content-type": "application/json"})
        assert r.status_code == 200, r.text
        want = rows if shape == "rows" else {**rows, "results": _as_columns(rows["results"])}
        assert r.json() == want
    assert rows["results"][1]["error"] == "lon: missing" and rows["results"][0]["zip"] == "92101"
    r = client.post("/v1/pip", content=orjson.dumps({"points": {"lon": [1.0, 2.0], "lat": [3.0]}}),
                    headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["field"] == "lat", r.text


def test_geocode_join_answers_json_columns_too(client):
    records = {"records": [{"id": 1, "address": "4712 Mt St Helens Dr"}, {"id": "b", "address": "1200 Third Ave"},
                           {"id": 3, "address": ""}]}
    rows = client.post("/v1/geocode-join", content=orjson.dumps(records),
                       headers={"content-type": "application/json"}).json()
    doc = client.post("/v1/geocode-join?shape=columns", content=orjson.dumps(records),
                      headers={"content-type": "application/json"}).json()
    assert doc["results"] == _as_columns(rows["results"]) and _without_results(doc) == _without_results(rows)
    assert doc["results"]["council_district"][0] and doc["results"]["id"] == [1, "b", 3]


@pytest.mark.parametrize("query, accept, status", [
    ("shape=wide", None, 422), ("shape=", None, 422), ("", "application/json; shape=table", 422),
    ("shape=columns", "text/csv", 406), ("shape=columns", ARROW, 406),
])
def test_a_bad_or_unanswerable_shape_is_refused_naming_it(client, query, accept, status):
    r = client.post(f"/v1/pip?{query}", content=b"id,lon,lat\n1,-117.1627,32.7167\n",
                    headers={"content-type": "text/csv", **({"accept": accept} if accept else {})})
    assert r.status_code == status and r.json()["field"] == "shape", r.text


def test_a_bulk_answer_says_where_its_time_went(client):
    # Server-Timing: read, decode, tag, encode, each with the process's CPU time over it (bench/pip.py prints them).
    for content_type, body in (("text/csv", b"id,lon,lat\n1,-117.1627,32.7167\n"),
                               ("application/json", orjson.dumps({"points": [{"lon": -117.1627, "lat": 32.7167}]}))):
        r = client.post("/v1/pip", content=body, headers={"content-type": content_type})
        assert r.status_code == 200, r.text
        stages = [part.strip().split(";") for part in r.headers["server-timing"].split(",")]
        assert [s[0] for s in stages] == ["read", "decode", "tag", "encode"], stages
        for _, dur, desc in stages:
            assert float(dur.removeprefix("dur=")) >= 0 and desc.startswith('desc="cpu '), stages


def _arrow(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    return sink.getvalue().to_pybytes()


def test_arrow_in_arrow_out_keeps_the_input_columns(client):
    table = pa.table({"id": ["a", "b", "c"], "lon": [CITY_HALL[0], None, -117.25],
                      "lat": [CITY_HALL[1], 32.7, 32.85], "permit": [10, 11, 12]})
    r = client.post("/v1/pip?layers=council_district,zip", content=_arrow(table), headers={"content-type": ARROW})
    assert r.status_code == 200, r.text
    out = ipc.open_stream(r.content).read_all()
    assert out.column_names[:4] == ["id", "lon", "lat", "permit"]
    assert out.column("council_district").to_pylist() == ["3", None, "1"]
    assert out.column("error").to_pylist()[1] == "lon: missing"
    assert orjson.loads(r.headers["x-enrich-layers"])["zip"]["version"] == "2010"


def test_arrow_bad_bodies(client):
    r = client.post("/v1/pip", content=b"\x00garbage\xff", headers={"content-type": ARROW})
    assert r.status_code == 400 and r.json()["field"] == "body"
    r = client.post("/v1/pip", content=_arrow(pa.table({"id": [1], "easting": [1.0], "lat": [32.7]})),
                    headers={"content-type": ARROW})
    assert r.status_code == 422 and r.json()["field"] == "lon"
    r = client.post("/v1/pip", content=_arrow(pa.table({"lon": [[1.0]], "lat": [32.7]})),
                    headers={"content-type": ARROW})
    assert r.status_code == 422 and r.json()["field"] == "lon"


def test_csv_answer_is_the_input_with_columns_appended(client):
    body = b"permit,X,Y\nP1,-117.1627,32.7167\nP2,oops,32.7\nP3,-117.25,32.85\n"
    r = client.post("/v1/pip?lon_col=X&lat_col=Y&layers=council_district", content=body,
                    headers={"content-type": "text/csv"})
    assert r.status_code == 200, r.text
    out = pacsv.read_csv(io.BytesIO(r.content))
    assert out.column_names[:3] == ["permit", "X", "Y"]
    assert out.column("council_district").to_pylist() == [3, None, 1]
    assert "oops" in out.column("error").to_pylist()[1]


def test_ndjson_streams_one_line_per_point(client):
    lines = [orjson.dumps({"id": i, "lon": CITY_HALL[0], "lat": CITY_HALL[1]}) for i in range(5)]
    lines.insert(2, b"{not json")
    r = client.post("/v1/pip?layers=zip", content=b"\n".join(lines) + b"\n",
                    headers={"content-type": "application/x-ndjson"})
    assert r.status_code == 200
    rows = [orjson.loads(line) for line in r.content.splitlines()]
    assert len(rows) == 6
    assert [row["zip"] for row in rows] == ["92101", "92101", None, "92101", "92101", "92101"]
    assert "not valid JSON" in rows[2]["error"]


def test_large_ndjson_stream_answers_a_client_that_sends_everything_first(live_service):
    # httpx (like curl and requests) sends the whole body before reading the answer: a server that answers while
    # still reading deadlocks once the socket buffers fill (a few MB). 200k rows make ~40 MB of answer.
    rng = np.random.default_rng(5)
    x, y = rng.uniform(-117.25, -117.0, 200_000), rng.uniform(32.7, 32.95, 200_000)
    body = b"".join(orjson.dumps({"id": i, "lon": a, "lat": b}) + b"\n"
                    for i, (a, b) in enumerate(zip(x.tolist(), y.tolist())))
    with httpx.Client(timeout=120) as http:
        r = http.post(f"{live_service}/v1/pip?layers=council_district", content=body,
                      headers={"content-type": "application/x-ndjson"})
    assert r.status_code == 200 and "content-length" not in r.headers
    rows = r.content.splitlines()
    assert len(rows) == 200_000
    assert orjson.loads(rows[-1])["id"] == 199_999
    assert sum(orjson.loads(row)["council_district"] is not None for row in rows[:1000]) > 500


def test_health_and_readiness(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz").json()
    assert ready["status"] == "ready" and "council_district" in ready["versions"]
    # a public route shows file and folder names, never the server's paths; the admin route keeps them
    assert ready["source"].split(":")[0] in ("dir", "accepted") and "/" not in orjson.dumps(ready).decode(), ready
    admin = client.get("/v1/admin/layers", headers={"X-API-Key": "test-admin-key"})
    assert admin.status_code == 200 and admin.json()["source"] == f"dir:{BOUNDARIES.resolve()}", admin.text


def test_health_and_readiness_answer_head_as_load_balancers_send_it(client):
    """Some load balancers and uptime checkers probe with HEAD: it had been a 405. The same status as GET, no body."""
    for path in ("/healthz", "/readyz"):
        r = client.head(path)
        assert r.status_code == 200 and r.content == b"", (path, r.status_code, r.text[:200])


def test_openapi_documents_the_routes(client):
    spec = client.get("/openapi.json").json()
    assert {"/v1/pip", "/v1/layers", "/healthz", "/readyz", "/v1/admin/reload"} <= set(spec["paths"])
    assert ARROW in spec["paths"]["/v1/pip"]["post"]["requestBody"]["content"]


def test_bulk_routes_document_every_registered_format_and_exactly_the_parameters_they_accept(client):
    """Both bulk routes come from one factory: a request body per registered media type, and their query
    parameters, the ones strict_query accepts (any other is refused, naming it)."""
    from enrich_service.io.formats import FORMATS

    spec = client.get("/openapi.json").json()
    common = {"layers", "as_of", "nearest_within_m", "id_col", "lon_col", "lat_col", "date_col", "prefix", "delimiter",
              "charset", "shape"}
    for path, params in (("/v1/pip", common | {"crs", "date_format"}),
                         ("/v1/geocode-join", common | {"address_col", "city_col", "zip_col", "min_match"})):
        post = spec["paths"][path]["post"]
        assert set(post["requestBody"]["content"]) == set(FORMATS) | {"multipart/form-data"}, path
        assert {p["name"] for p in post["parameters"]} == params, path
        r = client.post(f"{path}?idcol=x", content=b"id,lon,lat\n1,-117.1627,32.7167\n",
                        headers={"content-type": "text/csv"})
        assert r.status_code == 422 and r.json()["field"] == "idcol" and "id_col" in r.json()["detail"], r.text
    assert {p["name"] for p in spec["paths"]["/v1/geocode"]["get"]["parameters"]} == \
        {"address", "city", "zip", "layers", "as_of", "nearest_within_m", "min_match"}


@pytest.mark.parametrize("method,path,body", [
    ("GET", "/v1/pip?lon=-117.1627&lat=32.7167&", None),
    ("GET", "/v1/geocode?address=1200+Third+Ave&", None),
    ("POST", "/v1/pip?", b"id,lon,lat\n1,-117.1627,32.7167\n"),
    ("POST", "/v1/geocode-join?", b"id,address\n1,1200 Third Ave\n"),
])
@pytest.mark.parametrize("value", ["5001", "-1", "nan", "far"])
def test_every_route_reads_nearest_within_m_the_same_way(client, method, path, body, value):
    r = client.request(method, f"{path}nearest_within_m={value}", content=body,
                       headers={"content-type": "text/csv"} if body else {})
    assert r.status_code == 422, r.text
    assert r.json()["field"] == "nearest_within_m"
    assert ("between 0 and 5000" if value != "far" else "not a number") in r.json()["detail"]


def test_json_bodies_take_options_they_leave_out_from_the_query_and_refuse_a_conflict(client):
    records = {"records": [{"id": 1, "address": "4712 Mt St Helens Dr"}]}
    # geocode-join: layers and as_of from the query string (the 2011 lines put this address in district 6)
    r = client.post("/v1/geocode-join?layers=council_district&as_of=2015-06-01", content=orjson.dumps(records),
                    headers={"content-type": "application/json"})
    assert r.status_code == 200, r.text
    row = r.json()["results"][0]
    assert row["council_district"] == "6" and "zip" not in row and "neighborhood" not in row, row
    assert r.json()["layers"]["council_district"]["version"] == "2011"
    # the same value in both places is one option; different values are refused, naming the option
    same = {**records, "layers": ["council_district"], "as_of": "2015-06-01"}
    r = client.post("/v1/geocode-join?layers=council_district&as_of=2015-06-01", content=orjson.dumps(same),
                    headers={"content-type": "application/json"})
    assert r.status_code == 200 and r.json()["results"][0]["council_district"] == "6", r.text
    for query, body, name in (("layers=zip", {"layers": ["council_district"]}, "layers"),
                              ("as_of=2023-01-01", {"as_of": "2015-06-01"}, "as_of"),
                              ("min_match=exact", {"min_match": "zip"}, "min_match")):
        r = client.post(f"/v1/geocode-join?{query}", content=orjson.dumps({**records, **body}),
                        headers={"content-type": "application/json"})
        assert r.status_code == 422 and r.json()["field"] == name, (query, r.text)
    # /v1/pip's JSON body follows the same rule
    points = {"points": [{"id": 1, "lon": CITY_HALL[0], "lat": CITY_HALL[1]}], "layers": ["zip"]}
    r = client.post("/v1/pip?layers=council_district", content=orjson.dumps(points),
                    headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["field"] == "layers", r.text
    r = client.post("/v1/pip?layers=zip&crs=4326", content=orjson.dumps({**points, "crs": "EPSG:4326"}),
                    headers={"content-type": "application/json"})
    assert r.status_code == 200 and r.json()["results"][0]["zip"], r.text
