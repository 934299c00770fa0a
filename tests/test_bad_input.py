"""Bad input never crashes and never rewrites (issue 16): every case found against a running service, as a test.

Each bad request gets a 4xx in the documented JSON shape ({detail, code, field}) naming the field or column; input
columns come back exactly as sent; CSV cells a spreadsheet would run are escaped; misspelled options are refused.
"""

from __future__ import annotations

import io

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.ipc as ipc
import pytest

from .conftest import ADDRESS, BOUNDARIES, cache_dir_sharing_layers, needs, ready_app

CITY_HALL = (-117.1627, 32.7167)
ARROW = "application/vnd.apache.arrow.stream"
JSON_H = {"content-type": "application/json"}
CSV_H = {"content-type": "text/csv"}
NDJSON_H = {"content-type": "application/x-ndjson"}
DEEP = "[" * 10_000 + "]" * 10_000


@pytest.fixture(scope="module")
@needs("data")
def client():
    env = {"ENRICH_BOUNDARY_DIR": str(BOUNDARIES), "ENRICH_REFERENCE_DIR": str(ADDRESS), "ENRICH_MAX_BATCH": "1000",
           "ENRICH_MAX_BODY_BYTES": str(2_000_000), "ENRICH_API_KEYS": "test-admin-key"}
    with ready_app(env) as c:
        yield c


def refused(r, status: int | tuple, field: str | None = None) -> dict:
    """The documented error shape, the expected status, and the field named."""
    statuses = status if isinstance(status, tuple) else (status,)
    assert r.status_code in statuses, (r.status_code, r.text[:500])
    assert r.headers["content-type"].startswith("application/json"), r.headers["content-type"]
    body = r.json()
    assert isinstance(body["detail"], str) and body["code"] and "field" in body, body
    if field is not None:
        assert body.get("field") == field, body
    return body


def arrow_body(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    with ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    return sink.getvalue()


def read_arrow(content: bytes) -> pa.Table:
    return ipc.open_stream(pa.py_buffer(content)).read_all()


# ---- no 500s: each found case gets its 4xx naming the field --------------------------------------------------------

def test_a_crs_pyproj_knows_but_cannot_use_is_422_naming_crs(client):
    refused(client.get("/v1/pip", params={"lon": 0, "lat": 0, "crs": "IAU_2015:49900"}), 422, "crs")
    refused(client.post("/v1/pip", content=orjson.dumps({"points": [{"lon": 0, "lat": 0}], "crs": "IAU_2015:49900"}),
                        headers=JSON_H), 422, "crs")
    refused(client.post("/v1/pip?crs=IAU_2015:49900", content=b"id,lon,lat\n1,0,0\n", headers=CSV_H), 422, "crs")


@pytest.mark.parametrize("key", ["unknown_field", "layers", "crs", "as_of"])
def test_10000_deep_nesting_is_a_4xx_naming_the_field(client, key):
    body = b'{"points":[{"id":1,"lon":-117.16,"lat":32.71}],"' + key.encode() + b'":' + DEEP.encode() + b"}"
    r = client.post("/v1/pip", content=body, headers=JSON_H)
    refused(r, (400, 422), key)


def test_deep_nesting_inside_a_point_is_that_points_error_or_a_400(client):
    body = b'{"points":[{"id":1,"lon":-117.16,"lat":32.71,"extra":' + DEEP.encode() + b"}]}"
    r = client.post("/v1/pip", content=body, headers=JSON_H)
    assert r.status_code < 500, r.text[:300]


def test_invalid_utf8_in_a_json_id_is_400_naming_id(client):
    body = b'{"points":[{"id":"PE\xd1ASQUITOS","lon":-117.16,"lat":32.71}]}'
    refused(client.post("/v1/pip", content=body, headers=JSON_H), 400, "id")
    body = b'{"records":[{"id":1,"address":"1200 Third Ave","city":"PE\xd1ASQUITOS"}]}'
    refused(client.post("/v1/geocode-join", content=body, headers=JSON_H), 400, "city")


def test_invalid_utf8_in_an_ndjson_line_is_that_rows_error(client):
    body = b'{"id":"a","lon":-117.16,"lat":32.71}\n{"id":"PE\xd1A","lon":-117.16,"lat":32.71}\n'
    r = client.post("/v1/pip", content=body, headers=NDJSON_H)
    assert r.status_code == 200
    lines = [orjson.loads(line) for line in r.content.splitlines()]
    assert lines[0]["council_district"] == "3" and lines[0]["error"] is None
    assert "UTF-8" in lines[1]["error"]


WINDOWS_1252 = "id,name,lon,lat\n1,PEÑASQUITOS,-117.1627,32.7167\n".encode("windows-1252")


def test_csv_in_windows_1252_is_read_when_declared(client):
    r = client.post("/v1/pip", content=WINDOWS_1252, headers={"content-type": "text/csv; charset=windows-1252"})
    assert r.status_code == 200, r.text
    table = pacsv.read_csv(io.BytesIO(r.content))
    assert table.column("name").to_pylist() == ["PEÑASQUITOS"]  # answered in UTF-8
    assert table.column("council_district").to_pylist() == [3]


def test_csv_not_utf8_and_undeclared_is_415_naming_the_column(client):
    body = refused(client.post("/v1/pip", content=WINDOWS_1252, headers=CSV_H), 415, "name")
    assert "UTF-8" in body["detail"] and "charset" in body["detail"] and "row 1" in body["detail"]
    big = b"id,name,lon,lat\n" + b"1,plain,-117.1627,32.7167\n" * 5000 + "2,PEÑASQUITOS,-117.1,32.7\n".encode("cp1252")
    body = refused(client.post("/v1/pip", content=big, headers=CSV_H), 415, "name")
    refused(client.post("/v1/pip", content=WINDOWS_1252, headers={"content-type": "text/csv; charset=klingon"}),
            415, "Content-Type")


@pytest.mark.parametrize("header,field", [("id,lon,lon,lat", "lon"), ("id,lon,lat,id", "id"),
                                          ("id,name,name,lon,lat", "name")])
def test_duplicate_column_names_are_422_naming_the_column(client, header, field):
    row = ",".join({"id": "1", "lon": "-117.1627", "lat": "32.7167", "name": "x"}[h] for h in header.split(","))
    refused(client.post("/v1/pip", content=f"{header}\n{row}\n".encode(), headers=CSV_H), 422, field)
    names = header.split(",")
    table = pa.Table.from_arrays([pa.array([1.0])] * len(names), names=names)
    refused(client.post("/v1/pip", content=arrow_body(table), headers={"content-type": ARROW}), 422, field)


def test_duplicate_address_column_in_geocode_join_is_422(client):
    body = b"id,address,address\n1,4608 Gardena Avenue,1200 Third Avenue\n"
    refused(client.post("/v1/geocode-join", content=body, headers=CSV_H), 422, "address")


def test_int64_max_longitude_in_csv_is_that_rows_error(client):
    body = b"id,lon,lat\n1,9223372036854775807,32.7167\n2,-117.1627,32.7167\n"
    r = client.post("/v1/pip", content=body, headers={**CSV_H, "accept": "application/json"})
    assert r.status_code == 200, r.text
    rows = r.json()["results"]
    assert "lon" in rows[0]["error"] and rows[1]["council_district"] == "3"


@pytest.mark.parametrize("points", [
    b'[{"id": 1, "lon": -117.1627, "lat": 1e400}, {"id": 2, "lon": -117.1627, "lat": 32.7167}]',
    b'{"id": [1, 2], "lon": [-117.1627, -117.1627], "lat": [-1e400, 32.7167]}'])
def test_a_json_number_beyond_a_double_is_that_rows_error(client, points):
    """1e400 is valid JSON that no float holds: it reads as infinity, out of range for that row alone."""
    r = client.post("/v1/pip", content=b'{"points": ' + points + b"}", headers={"content-type": "application/json"})
    assert r.status_code == 200, r.text
    rows = r.json()["results"]
    assert "lat" in rows[0]["error"] and rows[0]["council_district"] is None
    assert rows[1]["council_district"] == "3" and rows[1]["error"] is None
    ndjson = b'{"id":1,"lon":1e400,"lat":32.7167}\n{"id":2,"lon":-117.1627,"lat":32.7167}\n'
    lines = [orjson.loads(line) for line in client.post("/v1/pip", content=ndjson, headers=NDJSON_H).content.splitlines()]
    assert "lon" in lines[0]["error"] and lines[1]["council_district"] == "3"


@pytest.mark.parametrize("big", [b"1e400", b"-1e400", b"9" * 5000, b"-" + b"9" * 5000])
def test_an_id_beyond_any_number_is_that_rows_error(client, big):
    """An id no number holds (a double's range, or more digits than Python reads: 4,300) is its row's error, the
    id null, and the other rows answered: it had come back null with no error (1e400), or failed the whole batch
    with a 400 (5,000 digits). The same in rows, in columns and in NDJSON."""
    bodies = (b'{"points": [{"id": %s, "lon": -117.1627, "lat": 32.7167}, {"id": 2, "lon": -117.1627, "lat": 32.7167}]}'
              % big, b'{"points": {"id": [%s, 2], "lon": [-117.1627, -117.1627], "lat": [32.7167, 32.7167]}}' % big)
    for body in bodies:
        r = client.post("/v1/pip", content=body, headers=JSON_H)
        assert r.status_code == 200, r.text
        rows = r.json()["results"]
        assert rows[0]["id"] is None and "id" in rows[0]["error"] and "range" in rows[0]["error"], rows[0]
        assert rows[0]["council_district"] is None  # a row with an error is reported, not tagged, whatever the field
        assert rows[1]["id"] == 2 and rows[1]["council_district"] == "3" and rows[1]["error"] is None
    ndjson = b'{"id":%s,"lon":-117.1627,"lat":32.7167}\n{"id":2,"lon":-117.1627,"lat":32.7167}\n' % big
    lines = [orjson.loads(line) for line in client.post("/v1/pip", content=ndjson, headers=NDJSON_H).content.splitlines()]
    assert lines[0]["id"] is None and "id" in lines[0]["error"] and lines[1]["error"] is None, lines


@pytest.mark.parametrize("path,noun", [("/v1/pip", "point"), ("/v1/geocode-join", "record")])
@pytest.mark.parametrize("content_type", ["application/json", "application/vnd.apache.arrow.stream", "text/csv",
                                          "application/x-ndjson", "application/geo+json"])
def test_an_empty_body_is_one_422_in_every_format(client, path, noun, content_type):
    """An empty body is said to be empty, whatever its format: it had been "Input data was truncated" (JSON), "Tried
    reading schema message, was null or length 0" (Arrow) or "not a CSV with a header row" (CSV). So is a body of
    whitespace or a byte order mark alone."""
    for empty in (b"", b"  \r\n\t ", b"\xef\xbb\xbf", b"\xef\xbb\xbf\n"):
        r = client.post(path, content=empty, headers={"content-type": content_type, "x-api-key": "test-admin-key"})
        body = refused(r, 422, "body")
        assert body["detail"] == f"body is empty: send at least one {noun}", (empty, body)


@pytest.mark.parametrize("path,noun,header", [("/v1/pip", "point", "id,lon,lat"),
                                              ("/v1/geocode-join", "record", "id,address")])
def test_a_table_without_rows_says_what_to_send(client, path, noun, header):
    """A CSV of a header alone, an empty FeatureCollection and an Arrow stream of no rows: geocode-join had asked for
    a point."""
    import pyarrow as pa

    names = header.split(",")
    empty_table = pa.table({name: pa.array([], pa.string()) for name in names})
    for content_type, body in (("text/csv", header.encode() + b"\n"),
                               ("application/geo+json", b'{"type": "FeatureCollection", "features": []}'),
                               (ARROW, arrow_body(empty_table))):
        r = client.post(path, content=body, headers={"content-type": content_type, "x-api-key": "test-admin-key"})
        detail = refused(r, 422, "body")["detail"]
        assert detail == f"body is empty: send at least one {noun}", (content_type, detail)


@pytest.mark.parametrize("body", [b'{"points": [{"id": 1, "lon": -117.1627, "lat": 32.7167}]}',
                                  b' [{"id": 1, "lon": -117.1627, "lat": 32.7167}]'])
def test_json_sent_as_csv_is_415_saying_so(client, body):
    """A JSON body under Content-Type: text/csv had been read as a CSV whose header is the JSON and with no data
    row: "body is empty: send at least one point". Now a 415 naming Content-Type and the type to send."""
    r = client.post("/v1/pip", content=body, headers=CSV_H)
    detail = refused(r, 415, "Content-Type")["detail"]
    assert "looks like JSON" in detail and "application/json" in detail, detail
    # A CSV whose first column name merely starts with a brace is still a CSV.
    r = client.post("/v1/pip", content=b"{id},lon,lat\n1,-117.1627,32.7167\n", headers={**CSV_H, "accept": "application/json"},
                    params={"id_col": "{id}"})
    assert r.status_code == 200 and r.json()["results"][0]["council_district"] == "3", r.text


@pytest.mark.parametrize("encodings", [["gzip"], ["br"], ["GZIP"], ["deflate, gzip"], ["identity", "gzip"], ["*"]])
@pytest.mark.parametrize("query", ["", "?id_col=id"])  # the fast POST front, the route
def test_a_compressed_body_is_415_naming_content_encoding(client, encodings, query):
    """Bodies are read as sent: a gzip body had been decoded as if it were plain JSON ("invalid character (byte
    0)") or CSV ("the header row is not UTF-8"). Now a 415 naming the header, whatever the encoding's case, in one
    header or two; also when the body happens to be plain (the fast front had answered those); identity is plain."""
    import gzip

    plain = orjson.dumps({"points": [{"id": 1, "lon": CITY_HALL[0], "lat": CITY_HALL[1]}]})
    for body in (gzip.compress(plain), plain):
        headers = [("content-type", "application/json")] + [("content-encoding", e) for e in encodings]
        detail = refused(client.post("/v1/pip" + query, content=body, headers=headers), 415, "Content-Encoding")["detail"]
        named = [c.strip().lower() for e in encodings for c in e.split(",") if c.strip().lower() != "identity"][0]
        assert "uncompressed" in detail and f"Content-Encoding {named}:" in detail, detail
    r = client.post("/v1/pip" + query, content=plain, headers={**JSON_H, "content-encoding": "Identity"})
    assert r.status_code == 200 and r.json()["results"][0]["council_district"] == "3", r.text


@pytest.mark.parametrize("ids", [[1, "a"], ["a", 1], [1, True], [2**70, 1], [1.5, "b", None]])
@pytest.mark.parametrize("path,rows", [("/v1/pip", "points"), ("/v1/geocode-join", "records")])
def test_json_ids_of_mixed_types_answered_as_csv_or_arrow(client, ids, path, rows):
    """A JSON batch whose ids mix types (numbers and strings, as exports do: 1, "s86") had a 500 when answered as
    CSV or Arrow (Arrow cannot type the column); JSON answered it. Such ids come back as text, each as JSON writes
    it, and a column of one type keeps its type."""
    import msgspec

    rows_sent = [{"id": i, "lon": CITY_HALL[0], "lat": CITY_HALL[1], "address": "1200 Third Ave"} for i in ids]
    body = msgspec.json.encode({rows: rows_sent})
    text = [None if i is None else (i if isinstance(i, str) else msgspec.json.encode(i).decode()) for i in ids]
    r = client.post(path, content=body, headers={**JSON_H, "accept": "text/csv", "x-api-key": "test-admin-key"})
    assert r.status_code == 200, r.text[:300]
    got = [line.split(",")[0] for line in r.text.splitlines()[1:]]
    assert got == ["" if t is None else t for t in text], got
    r = client.post(path, content=body, headers={**JSON_H, "accept": ARROW, "x-api-key": "test-admin-key"})
    assert r.status_code == 200, r.text[:300]
    assert read_arrow(r.content).column("id").to_pylist() == text
    same = client.post(path, content=msgspec.json.encode({rows: rows_sent[:1] * 2}),
                       headers={**JSON_H, "accept": ARROW, "x-api-key": "test-admin-key"})
    if not isinstance(ids[0], int) or abs(ids[0]) < 2**63:
        assert read_arrow(same.content).column("id").to_pylist() == [ids[0]] * 2  # one type: kept


@pytest.mark.parametrize("path", ["/v1/pip", "/v1/geocode-join"])
def test_an_id_col_naming_no_column_is_422(client, path):
    """id_col given but not in a table body: the rows had been answered without their ids, silently (a typo such
    as id_col=objectid cost the caller the join back to their records). The default, id, may name no column."""
    csv = b"pole,lon,lat,address\n1-1004,-117.1627,32.7167,1200 Third Ave\n"
    headers = {**CSV_H, "x-api-key": "test-admin-key"}
    detail = refused(client.post(path + "?id_col=objectid", content=csv, headers=headers), 422, "id_col")["detail"]
    assert "objectid" in detail and "pole" in detail, detail
    assert client.post(path + "?id_col=pole", content=csv, headers=headers).status_code == 200
    for default in ("", "?id_col=id"):  # the default names no column here: fine (the client always sends it)
        assert client.post(path + default, content=csv, headers=headers).status_code == 200


def test_a_byte_order_mark_before_ndjson_is_skipped(client):
    """As for JSON, GeoJSON and CSV bodies: the mark had made the first line invalid JSON."""
    body = b'\xef\xbb\xbf{"id":1,"lon":-117.1627,"lat":32.7167}\n{"id":2,"lon":-117.1627,"lat":32.7167}\n'
    lines = [orjson.loads(line) for line in client.post("/v1/pip", content=body, headers=NDJSON_H).content.splitlines()]
    assert [(row["id"], row["council_district"], row["error"]) for row in lines] == [(1, "3", None), (2, "3", None)]


def test_uint64_max_longitude_in_arrow_is_that_rows_error(client):
    table = pa.table({"id": [1, 2], "lon": pa.array([2**64 - 1, 0], pa.uint64()), "lat": [32.7167, 32.7167]})
    r = client.post("/v1/pip", content=arrow_body(table), headers={"content-type": ARROW})
    assert r.status_code == 200, r.text
    out = read_arrow(r.content)
    assert out.column("lon").type == pa.uint64() and out.column("lon").to_pylist() == [2**64 - 1, 0]
    assert "lon" in out.column("error")[0].as_py()


@pytest.mark.parametrize("kind", [pa.struct([("a", pa.int32())]), pa.list_(pa.int32()), pa.binary()])
def test_struct_list_binary_arrow_columns_answered_as_csv_or_json_are_4xx(client, kind):
    value = {"a": 1} if pa.types.is_struct(kind) else [1] if pa.types.is_list(kind) else b"\x00\xff"
    table = pa.table({"id": [1], "lon": [CITY_HALL[0]], "lat": [CITY_HALL[1]], "extra": pa.array([value], kind)})
    refused(client.post("/v1/pip", content=arrow_body(table), headers={"content-type": ARROW, "accept": "text/csv"}),
            406, "extra")
    # JSON answers carry the id only: an odd passthrough column is fine, an id JSON cannot write is named.
    r = client.post("/v1/pip", content=arrow_body(table), headers={"content-type": ARROW,
                                                                     "accept": "application/json"})
    assert r.status_code == 200 and r.json()["results"][0]["council_district"] == "3"
    as_id = table.drop_columns(["id"]).rename_columns(["lon", "lat", "id"])
    refused(client.post("/v1/pip", content=arrow_body(as_id), headers={"content-type": ARROW,
                                                                         "accept": "application/json"}), 422, "id")
    # Arrow answers keep them as they are.
    r = client.post("/v1/pip", content=arrow_body(table), headers={"content-type": ARROW})
    assert r.status_code == 200 and read_arrow(r.content).column("extra").type == kind


# ---- NDJSON: options validated before the status line ---------------------------------------------------------

@pytest.mark.parametrize("query,field", [("layers=bogus", "layers"), ("as_of=1900-01-01", "as_of"),
                                         ("crs=IAU_2015:49900", "crs"), ("asof=2016-01-01", "asof")])
def test_ndjson_bad_option_is_a_4xx_before_any_row(client, query, field):
    body = b'{"id":1,"lon":-117.1627,"lat":32.7167}\n'
    refused(client.post(f"/v1/pip?{query}", content=body, headers=NDJSON_H), 422, field)


# ---- input kept verbatim ---------------------------------------------------------------------------------------

VERBATIM = (b"id,zipcode,flag,big,note,lon,lat\n"
            b"00123,02134,TRUE,1180591620717411303424,\"a, quoted \"\"cell\"\"\",-117.1627,32.7167\n"
            b"007,92101,FALSE,1e3,,-117.1627,32.7167\n")


def test_csv_answer_passes_the_input_columns_through_byte_for_byte(client):
    r = client.post("/v1/pip", content=VERBATIM, headers=CSV_H)
    assert r.status_code == 200, r.text
    lines = r.content.split(b"\n")
    width = len(b"00123,02134,TRUE,1180591620717411303424,\"a, quoted \"\"cell\"\"\",-117.1627,32.7167")
    assert lines[0].startswith(b"id,zipcode,flag,big,note,lon,lat,council_district")
    assert lines[1][:width] == VERBATIM.split(b"\n")[1]
    assert lines[2].startswith(b"007,92101,FALSE,1e3,,-117.1627,32.7167,")


def test_csv_ids_come_back_as_sent_in_json(client):
    r = client.post("/v1/pip", content=VERBATIM, headers={**CSV_H, "accept": "application/json"})
    assert [row["id"] for row in r.json()["results"]] == ["00123", "007"]


def test_json_ids_come_back_exactly_as_sent(client):
    ids = ["00123", 123, 1.5, 2**70, -(2**64), 18446744073709551615, True, None, "", "é"]
    points = [{"id": i, "lon": CITY_HALL[0], "lat": CITY_HALL[1]} for i in ids]
    r = client.post("/v1/pip", content=b'{"points":' + _dumps_big(points) + b"}", headers=JSON_H)
    assert r.status_code == 200, r.text
    import msgspec

    got = [row["id"] for row in msgspec.json.decode(r.content)["results"]]
    assert got == ids and [type(v) for v in got] == [type(v) for v in ids]
    # The usual body (typed decode): a string id stays a string, an int an int, a float a float.
    r = client.post("/v1/pip", content=orjson.dumps({"points": points[:3]}), headers=JSON_H)
    assert [row["id"] for row in r.json()["results"]] == ["00123", 123, 1.5]
    mixed = [{"id": 1, "lon": CITY_HALL[0], "lat": CITY_HALL[1]}, {"id": 2.5, "lon": CITY_HALL[0], "lat": 32.7}]
    assert b'"id":1,' in client.post("/v1/pip", content=orjson.dumps({"points": mixed}), headers=JSON_H).content
    for sent in ([1.0, 2.5], [1.5, True], [3.0, None]):  # a float stays a float, true stays true
        points = [{"id": i, "lon": CITY_HALL[0], "lat": CITY_HALL[1]} for i in sent]
        got = [row["id"] for row in msgspec.json.decode(
            client.post("/v1/pip", content=orjson.dumps({"points": points}), headers=JSON_H).content)["results"]]
        assert got == sent and [type(v) for v in got] == [type(v) for v in sent]


def _dumps_big(value) -> bytes:
    import msgspec

    return msgspec.json.encode(value)


def test_arrow_answer_keeps_every_input_type(client):
    table = pa.table({"id": pa.array(["00123"]), "n": pa.array([2**63 - 1], pa.int64()),
                      "d": pa.array([1.25], pa.float32()), "flag": pa.array([True]),
                      "lon": [CITY_HALL[0]], "lat": [CITY_HALL[1]]})
    out = read_arrow(client.post("/v1/pip", content=arrow_body(table), headers={"content-type": ARROW}).content)
    for name in table.column_names:
        assert out.column(name).type == table.column(name).type and out.column(name).equals(table.column(name))


# ---- CSV formula safety ----------------------------------------------------------------------------------------

FORMULAS = ['=HYPERLINK("http://x","y")', "+cmd|' /C calc'!A0", "-2+3+cmd|' /C calc'!A0", "@SUM(A1)", "\tx", "\rx"]


def test_formula_cells_are_escaped_in_csv_answers(client):
    rows = "".join(f'{i},"{v.replace(chr(34), chr(34) * 2)}",-117.1627,32.7167\n' for i, v in enumerate(FORMULAS))
    r = client.post("/v1/pip", content=("id,note,lon,lat\n" + rows).encode(), headers=CSV_H)
    assert r.status_code == 200, r.text
    table = pacsv.read_csv(io.BytesIO(r.content), convert_options=pacsv.ConvertOptions(
        column_types={"note": pa.string(), "lon": pa.string()}))
    assert table.column("note").to_pylist() == ["'" + v for v in FORMULAS]
    assert set(table.column("lon").to_pylist()) == {"-117.1627"}  # a plain number is not a formula


def test_formula_escaping_modes():
    from enrich_service.io.csv_text import encode_csv

    table = pa.table({"a": ["=1+1", "-5", "x"], "b": ["-5", "@x", "ok"]})
    assert encode_csv(table, "text", ()) == b"a,b\n\"'=1+1\",-5\n-5,\"'@x\"\nx,ok\n"
    assert encode_csv(table, "all", ()) == b"a,b\n\"'=1+1\",\"'-5\"\n\"'-5\",\"'@x\"\nx,ok\n"
    assert encode_csv(table, "off", ()) == b"a,b\n=1+1,-5\n-5,@x\nx,ok\n"
    assert encode_csv(table, "all", ("b",)) == b"a,b\n\"'=1+1\",-5\n\"'-5\",@x\nx,ok\n"


# ---- unknown parameters ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("method,url,body,headers,name,suggestion", [
    ("GET", "/v1/pip?lon=-117.16&lat=32.71&asof=2016-01-01", None, None, "asof", "as_of"),
    ("GET", "/v1/pip?lon=-117.16&lat=32.71&layer=zip", None, None, "layer", "layers"),
    ("POST", "/v1/pip?asof=2016-01-01", b"id,lon,lat\n1,-117.16,32.71\n", CSV_H, "asof", "as_of"),
    ("POST", "/v1/pip", b'{"points":[{"lon":-117.16,"lat":32.71}],"asof":"2016-01-01"}', JSON_H, "asof", "as_of"),
    ("POST", "/v1/pip", b'{"points":[{"lon":-117.16,"lat":"x"}],"layer":"zip"}', JSON_H, "layer", "layers"),
    ("POST", "/v1/pip?lon_column=x", b"id,lon,lat\n1,-117.16,32.71\n", CSV_H, "lon_column", "lon_col"),
    ("GET", "/v1/geocode?address=1200+Third+Ave&layer=zip", None, None, "layer", "layers"),
    ("POST", "/v1/geocode-join", b'{"records":[{"address":"1200 Third Ave"}],"asof":"2016-01-01"}', JSON_H,
     "asof", "as_of"),
    ("POST", "/v1/geocode-join?adress_col=a", b"id,a\n1,1200 Third Ave\n", CSV_H, "adress_col", "address_col"),
    ("GET", "/v1/layers/council_district/features?asof=2016-01-01", None, None, "asof", "as_of"),
])
def test_unknown_parameters_are_refused_with_the_nearest_name(client, method, url, body, headers, name, suggestion):
    r = client.request(method, url, content=body, headers=headers)
    detail = refused(r, 422, name)["detail"]
    assert detail == f"{name}: unknown parameter; did you mean {suggestion}?"


def test_options_in_the_query_apply_to_a_json_body(client):
    r = client.post("/v1/pip?layers=zip", content=orjson.dumps({"points": [{"lon": CITY_HALL[0], "lat": CITY_HALL[1]}]}),
                    headers=JSON_H)
    assert list(r.json()["layers"]) == ["zip"]


def test_the_portal_csv_file_escapes_formulas_too(tmp_path):
    """The DAG's CSV writer goes through the same function (run apart: test_dags.py owns this process's Airflow)."""
    import subprocess
    import sys

    from .conftest import REPO

    script = f"""
import sys, pyarrow as pa, pyarrow.parquet as pq
sys.path.insert(0, {str(REPO / "dags")!r})
from enrich_pipeline.publish import write_csv
pq.write_table(pa.table({{"note": {FORMULAS!r} + ["ok"], "amount": [-5.5] * 7, "code": ["-5"] * 7}}),
               {str(tmp_path / "in.parquet")!r})
write_csv({str(tmp_path / "in.parquet")!r}, {str(tmp_path / "out.csv")!r})
print("airflow" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    table = pacsv.read_csv(tmp_path / "out.csv", convert_options=pacsv.ConvertOptions(
        column_types={"note": pa.string(), "code": pa.string()}))
    assert table.column("note").to_pylist() == ["'" + v for v in FORMULAS] + ["ok"]
    assert table.column("amount").to_pylist() == [-5.5] * 7 and table.column("code").to_pylist() == ["-5"] * 7


# ---- the smaller items -----------------------------------------------------------------------------------------

@pytest.mark.data
def test_point_lookups_answer_while_the_geocoder_reference_is_missing(tmp_path):
    env = {"ENRICH_BOUNDARY_DIR": str(BOUNDARIES), "ENRICH_REFERENCE_DIR": str(tmp_path / "nowhere"),
           "ENRICH_CACHE_DIR": str(cache_dir_sharing_layers(tmp_path / "cache"))}
    with ready_app(env) as c:
        r = c.get("/v1/pip", params={"lon": CITY_HALL[0], "lat": CITY_HALL[1]})
        assert r.status_code == 200 and r.json()["council_district"] == "3"
        refused(c.get("/v1/geocode", params={"address": "1200 Third Avenue"}), 503)


def test_the_geocode_cache_is_bounded_in_bytes():
    from enrich_service.geocode.cache import ResultCache, entry_bytes

    cache = ResultCache("x", max_entries=10**6, max_bytes=100_000)
    result = (-117.1, 32.7, "address", 1.0, "1200 THIRD AVE", None)
    for batch in range(50):
        cache.put_many({(f"{batch} {i} " + "x" * 250, None): result for i in range(20)})
        assert cache.bytes <= 100_000
    assert 50 < len(cache) < 1000 and cache.bytes == sum(entry_bytes(k, v[0]) for k, v in cache._data.items())
    assert cache.get(("49 19 " + "x" * 250, None)) == result  # the newest are kept
    cache.put_many({("y" * 1_000_000, None): result})  # past what an address can be: never cached
    assert cache.get(("y" * 1_000_000, None)) is None and cache.bytes <= 100_000


def test_over_long_addresses_are_refused_per_row_and_never_cached(client):
    before = client.get("/v1/layers").json()["geocode_reference"]["cache"]["bytes"]
    records = [{"id": 1, "address": "4608 Gardena Avenue", "zip": "92110"}] + \
        [{"id": i, "address": f"{i} " + "9" * 500_000} for i in range(2, 5)]
    r = client.post("/v1/geocode-join", content=orjson.dumps({"records": records}), headers=JSON_H)
    assert r.status_code == 200, r.text[:300]
    rows = r.json()["results"]
    assert rows[0]["match"] == "exact" and rows[0]["council_district"] == "2"
    assert all(row["match"] == "none" and "longer than" in row["reason"] for row in rows[1:])
    after = client.get("/v1/layers").json()["geocode_reference"]["cache"]
    assert after["bytes"] - before < 10_000, after  # three 0.5 MB keys would be 1.5 MB


def test_a_body_that_stalls_is_answered_408():
    import asyncio

    from starlette.requests import Request

    from enrich_service.api.common import read_body
    from enrich_service.errors import BodyTimeout
    from enrich_service.settings import Settings

    async def receive():
        await asyncio.sleep(0.05)
        if not sent:
            sent.append(1)
            return {"type": "http.request", "body": b"id,lon", "more_body": True}
        await asyncio.sleep(10)

    sent: list = []
    request = Request({"type": "http", "method": "POST", "headers": [], "path": "/"}, receive)
    with pytest.raises(BodyTimeout) as caught:
        asyncio.run(read_body(request, Settings(body_timeout_s=0.3)))
    from enrich_service.errors import status_of

    assert status_of(caught.value) == 408 and caught.value.field == "body"


@pytest.mark.parametrize("content_type,query", [(b"application/json", b""), (b"text/csv", b""),
                                                (b"application/json", b"id_col=id")])
def test_a_client_that_leaves_mid_body_is_logged_as_499_not_a_500(client, caplog, content_type, query):
    """A client gone before its body is complete is not a server error: it had been logged as a 500 with a traceback
    (starlette's ClientDisconnect). Now one access line with nginx's 499 (client closed request) and no error log;
    on the fast POST front (a JSON body, no query string) and on the route alike."""
    import asyncio
    import logging

    chunks = [{"type": "http.request", "body": b'{"points": [{"id": 1, ', "more_body": True},
              {"type": "http.disconnect"}]

    async def receive():  # the client holds the connection 0.3 s, then leaves
        if len(chunks) == 1:
            await asyncio.sleep(0.3)
        return chunks.pop(0) if chunks else {"type": "http.disconnect"}

    async def send(message):
        pass

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/v1/pip", "raw_path": b"/v1/pip", "query_string": query, "root_path": "",
             "headers": [(b"content-type", content_type), (b"content-length", b"5000"),
                         (b"x-api-key", b"test-admin-key"), (b"host", b"test")],
             "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80)}
    with caplog.at_level(logging.INFO):
        asyncio.run(client.app(scope, receive, send))
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text[-2000:]
    access = [r for r in caplog.records if r.name == "enrich_service.access"]
    assert [r.status for r in access] == [499], caplog.text[-2000:]
    # Timed from the request's start: the fast front's reading counts (it had logged ~1 ms for 300 ms).
    assert access[0].ms >= 250, access[0].ms


def test_a_client_that_never_finishes_its_headers_is_disconnected():
    import socket
    import threading
    import time

    import uvicorn

    from enrich_service.server.slow_clients import PROTOCOL

    from .conftest import _free_port, settings_env

    async def app(scope, receive, send):
        if scope["type"] == "http":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"ok"})

    port = _free_port()
    with settings_env({"ENRICH_HEADER_TIMEOUT_S": "0.5"}):
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, http=PROTOCOL, log_config=None,
                                               lifespan="off"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        try:
            deadline = time.monotonic() + 10
            while not server.started:
                assert time.monotonic() < deadline
                time.sleep(0.05)
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:  # a whole request: answered
                s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                assert s.recv(100).startswith(b"HTTP/1.1 200")
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:  # a trickle: closed
                s.sendall(b"GET / HTTP/1.1\r\nHo")
                started = time.monotonic()
                assert s.recv(100) == b""
                assert time.monotonic() - started < 3
        finally:
            server.should_exit = True
            thread.join(10)


def test_a_failed_cache_write_leaves_no_part_file(tmp_path):
    from enrich_service.server.disk_cache import cached

    value, from_cache = cached(tmp_path / "x.pkl", lambda: (lambda: None))  # a lambda cannot be pickled
    assert not from_cache and callable(value)
    assert list(tmp_path.iterdir()) == []


def test_file_paths_are_shown_on_admin_routes_only(client):
    public = client.get("/v1/layers")
    assert public.status_code == 200 and str(BOUNDARIES) not in public.text and '"path"' not in public.text
    refused(client.get("/v1/admin/layers"), 401)
    admin = client.get("/v1/admin/layers", headers={"X-API-Key": "test-admin-key"})
    assert admin.status_code == 200 and str(BOUNDARIES) in admin.text
    from enrich_service.errors import redact_paths

    assert redact_paths("cannot read /srv/data/boundaries/zips.geojson: gone") == "cannot read zips.geojson: gone"


@pytest.mark.data
def test_work_after_a_timed_out_stage_never_starts(monkeypatch):
    """The request timeout answers 504 and the stages after the one running (tagging, encoding) are not started."""
    import time

    from enrich_service.bulk import tag_points as pip_routes
    from enrich_service.io import csv_text as codecs

    slow_decode, tagged = codecs.decode_csv, []

    def decode_slowly(*args):
        time.sleep(1.0)
        return slow_decode(*args)

    monkeypatch.setattr(codecs, "decode_csv", decode_slowly)
    monkeypatch.setattr(pip_routes, "tag_batch", lambda *a: tagged.append(1))
    env = {"ENRICH_BOUNDARY_DIR": str(BOUNDARIES), "ENRICH_REQUEST_TIMEOUT_S": "0.3"}
    with ready_app(env) as c:
        r = c.post("/v1/pip", content=b"id,lon,lat\n1,-117.1627,32.7167\n", headers=CSV_H)
        assert r.status_code == 504 and r.json()["code"] == "timeout"
        time.sleep(0.5)
    assert tagged == []



@pytest.mark.data
def test_a_timed_out_request_stops_its_running_work(monkeypatch):
    """The stage already running when the request times out stops too: matching 3,000 addresses at 2 ms each would
    take 6 s; the 504 comes at the timeout and the matching stops within a few hundred addresses of it (it ran to
    the end, and the 504 waited for it, before)."""
    import threading
    import time

    from enrich_service.geocode.matcher import Geocoder


    match, calls, lock = Geocoder.match, [0], threading.Lock()

    def match_slowly(self, parsed):
        with lock:
            calls[0] += 1
        time.sleep(0.002)
        return match(self, parsed)

    monkeypatch.setattr(Geocoder, "match", match_slowly)
    records = [{"id": i, "address": f"{1000 + i} Gardena Avenue"} for i in range(3000)]
    env = {"ENRICH_BOUNDARY_DIR": str(BOUNDARIES), "ENRICH_REFERENCE_DIR": str(ADDRESS),
           "ENRICH_REQUEST_TIMEOUT_S": "0.3", "ENRICH_MAX_BATCH": "10000"}  # (the module's client sets 1000)
    with ready_app(env) as c:
        r = c.post("/v1/geocode-join", content=orjson.dumps({"records": records}), headers=JSON_H)
        assert r.status_code == 504 and r.json()["code"] == "timeout"
        at_answer = calls[0]
        time.sleep(1.5)  # long enough for 750 more matches had the work gone on
        after = calls[0]
    assert at_answer < 3000 and after - at_answer <= 300, (at_answer, after)


def test_input_columns_named_like_results_are_kept_and_the_results_prefixed(client):
    """A caller's own `zip` and `error` columns come back as sent; the answers are enrich_zip, enrich_zip_rule,
    enrich_error (or the `prefix` asked for), in CSV and Arrow answers alike."""
    import csv

    body = b"id,lon,lat,zip,error\n1,-117.1627,32.7167,02134,none here\n"
    r = client.post("/v1/pip?layers=council_district,zip", content=body, headers=CSV_H)
    assert r.status_code == 200, r.text
    rows = list(csv.DictReader(io.StringIO(r.content.decode())))
    assert rows[0]["zip"] == "02134" and rows[0]["error"] == "none here"
    assert rows[0]["enrich_zip"] == "92101" and rows[0]["council_district"] == "3"
    assert "enrich_zip_rule" in rows[0] and rows[0]["enrich_error"] == ""

    table = pa.table({"id": [1], "lon": [-117.1627], "lat": [32.7167], "zip": pa.array([2134], pa.int16())})
    r = client.post("/v1/pip?layers=zip&prefix=sd_", content=arrow_body(table), headers={"content-type": ARROW})
    assert r.status_code == 200, r.text
    answer = read_arrow(r.content)
    assert answer.column("zip").type == pa.int16() and answer.column("zip").to_pylist() == [2134]
    assert answer.column("sd_zip").to_pylist() == ["92101"] and "sd_zip_rule" in answer.column_names
    bad = client.post("/v1/pip?layers=zip&prefix=a-b", content=body, headers=CSV_H)
    assert bad.status_code == 422 and bad.json()["field"] == "prefix"

def test_a_real_csv_comes_back_with_every_cell_as_sent(client):
    """The city's parking meters file (1,000 rows): each input cell comes back exactly, results appended."""
    import csv

    from .conftest import POINTS

    lines = (POINTS / "treas_parking_meters_loc_datasd.csv").read_bytes().splitlines(keepends=True)[:1000]
    body = b"".join(lines)
    r = client.post("/v1/pip?lon_col=lng&lat_col=lat&id_col=pole", content=body, headers=CSV_H)
    assert r.status_code == 200, r.text[:300]
    sent = list(csv.reader(io.StringIO(body.decode())))
    got = list(csv.reader(io.StringIO(r.content.decode())))
    width = len(sent[0])
    assert len(got) == len(sent) and [row[:width] for row in got] == sent
    assert got[0][width:width + 2] == ["council_district", "council_district_rule"]
    assert sum(row[width] == "3" for row in got[1:]) > 100  # downtown meters, tagged


def test_nginx_sets_the_slow_client_limits():
    import re

    from enrich_service.settings import Settings

    from .conftest import REPO

    conf = (REPO / "deploy" / "nginx.conf").read_text()
    seconds = {name: int(value) for name, value in re.findall(r"^\s*(client_header_timeout|client_body_timeout|"
                                                              r"send_timeout)\s+(\d+)s;", conf, re.M)}
    assert seconds.keys() == {"client_header_timeout", "client_body_timeout", "send_timeout"}
    assert seconds["client_header_timeout"] <= Settings().header_timeout_s
    assert seconds["client_body_timeout"] <= Settings().body_timeout_s


@pytest.mark.parametrize("column,accept", [("id", "application/json"), ("id", "text/csv"), ("lon", ARROW),
                                           ("address", ARROW)])
def test_arrow_text_that_is_not_utf8_is_400_naming_the_column(client, column, accept):
    bad = pa.Array.from_buffers(pa.string(), 1, [None, pa.py_buffer(np.array([0, 2], np.int32)),
                                                 pa.py_buffer(b"\xff\xfe")])
    cols = {"id": pa.array(["1"]), "lon": pa.array(["-117.1627"]), "lat": pa.array([CITY_HALL[1]]),
            "address": pa.array(["1200 Third Avenue"])}
    cols[column] = bad
    body = arrow_body(pa.table(cols))
    route = "/v1/geocode-join" if column == "address" else "/v1/pip"
    refused(client.post(route, content=body, headers={"content-type": ARROW, "accept": accept}), 400, column)


def test_a_blank_address_in_a_one_column_csv_is_a_row_not_dropped(client):
    """Found by the body fuzz: the blank line of a one-column CSV is a record (an empty address)."""
    r = client.post("/v1/geocode-join", content=b"address\n1200 Third Avenue\n\n4608 Gardena Avenue\n",
                    headers={**CSV_H, "accept": "application/json"})
    rows = r.json()["results"]
    assert [row["match"] == "none" for row in rows] == [False, True, False] and rows[1]["reason"] == "address is empty"


@pytest.mark.parametrize("method, path, status", [("GET", "/v1/nowhere", 404), ("POST", "/nope", 404),
                                                  ("DELETE", "/v1/pip", 405), ("PUT", "/v1/layers", 405),
                                                  ("HEAD", "/v1/layers", 405)])
def test_routing_errors_have_the_documented_shape(client, method, path, status):
    r = client.request(method, path)
    assert r.status_code == status, r.text
    if method != "HEAD":  # a HEAD answer has no body
        assert refused(r, status)["field"] is None


def test_every_error_body_has_detail_code_and_field(client):
    # a 401 (the header at fault) and a 422 (the parameter): the same three keys
    r = client.post("/v1/admin/reload")
    assert r.status_code == 401 and {"detail", "code", "field"} <= set(r.json()), r.text
    r = client.get("/v1/pip", params={"lon": "x", "lat": 1})
    assert refused(r, 422, "lon")


@pytest.mark.parametrize("path, header", [("/v1/pip", b"id,lon,lat"), ("/v1/geocode-join", b"id,address")])
def test_empty_batches_are_one_clean_422_in_every_transport(client, path, header):
    """README: an empty batch is a 422. An empty NDJSON body answered 200 with nothing, and a header-only CSV
    without its final newline a 400 from Arrow's reader ("straddling object straddles two block boundaries")."""
    for body in (header, header + b"\n", header + b"\r\n"):
        body = refused(client.post(path, content=body, headers=CSV_H), 422, "body")
        assert "empty" in body["detail"], body
    for body in (b"", b"\n", b"\n  \n\r\n"):
        body = refused(client.post(path, content=body, headers=NDJSON_H), 422, "body")
        assert "empty" in body["detail"], body
