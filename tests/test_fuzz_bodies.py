"""Property-based fuzz of the bulk decoders (hypothesis): JSON, CSV, Arrow and NDJSON bodies with random types,
encodings, nesting, duplicate and missing columns, random options and Accept types.

On every input: the answer is never 5xx, an error is the documented JSON shape, and a 200 answers every row sent
(each either tagged or carrying its error). Beyond the OpenAPI fuzz (test_fuzz.py), which cannot describe CSV or
Arrow bodies. CI runs ENRICH_FUZZ_CASES cases per transport (default 50, derandomized); `ENRICH_FUZZ_CASES=2000
.venv/bin/pytest tests/test_fuzz_bodies.py -s` is the larger run (random seeds), its figures in docs/operations.md.
"""

from __future__ import annotations

import io
import os

import msgspec
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.ipc as ipc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .conftest import ADDRESS, BOUNDARIES, ready_app

pytestmark = pytest.mark.data

CASES = int(os.environ.get("ENRICH_FUZZ_CASES", "50"))
FUZZ = settings(max_examples=CASES, deadline=None, database=None, derandomize="ENRICH_FUZZ_CASES" not in os.environ,
                suppress_health_check=list(HealthCheck))
ARROW = "application/vnd.apache.arrow.stream"
ACCEPTS = [None, "application/json", "text/csv", ARROW, "*/*"]
SEEN = {"cases": 0, "server_errors": 0, "statuses": {}}


@pytest.fixture(scope="module")
def client():
    env = {"ENRICH_BOUNDARY_DIR": str(BOUNDARIES), "ENRICH_REFERENCE_DIR": str(ADDRESS), "ENRICH_MAX_BATCH": "500",
           "ENRICH_MAX_BODY_BYTES": str(2_000_000)}
    with ready_app(env) as c:
        yield c
    print(f"\nbody fuzz: {SEEN['cases']} cases, {SEEN['server_errors']} server errors, statuses {SEEN['statuses']}")


# ---- values --------------------------------------------------------------------------------------------------

names = st.sampled_from(["id", "lon", "lat", "date", "name", "zip", "layers", "x", "LON", "", "é", "a b"])
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**80), max_value=2**80),
    st.floats(allow_nan=False, allow_infinity=False), st.floats(min_value=-200, max_value=200),
    st.sampled_from([-117.1627, 32.7167, 0, 9223372036854775807, 2**64 - 1, 1e308]),
    st.text(max_size=20), st.sampled_from(["00123", "TRUE", "=HYPERLINK(\"x\")", "2016-01-01", "1900-01-01",
                                           "-117.16", "nan", "PEÑASQUITOS"]))
json_values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                            st.dictionaries(st.text(max_size=5), inner, max_size=3)),
                           max_leaves=8)
options = st.fixed_dictionaries({}, optional={
    "layers": st.one_of(st.sampled_from(["zip", "council_district,zip", "bogus", "", ["zip"], [1], {"a": 1}]),
                        json_values),
    "as_of": st.one_of(st.sampled_from(["2016-01-01", "1900-01-01", "not a date", "2030-12-31"]), json_values),
    "crs": st.one_of(st.sampled_from(["EPSG:2230", "EPSG:4326", "2230", "IAU_2015:49900", "EPSG:4978", "x"]),
                     json_values),
    "nearest_within_m": st.one_of(st.sampled_from([0, 50, 5000, -1, 1e9]), json_values),
    "asof": st.just("2016-01-01"), "layer": st.just("zip")})


def point_rows():
    good = st.fixed_dictionaries({"id": scalars, "lon": st.floats(-117.3, -116.9), "lat": st.floats(32.5, 33.1)})
    odd = st.dictionaries(names, json_values, max_size=5)
    return st.lists(st.one_of(good, odd, json_values), min_size=1, max_size=12)


def deep(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


@st.composite
def json_bodies(draw):
    rows = draw(point_rows())
    body = msgspec.json.encode({"points": rows, **draw(options)})
    mangle = draw(st.sampled_from(["none", "none", "deep", "bad_utf8", "latin1", "truncate", "dup_key"]))
    if mangle == "deep":
        body = body[:-1] + b',"' + draw(st.sampled_from([b"layers", b"crs", b"as_of", b"zzz"])) + b'":' + \
            deep(draw(st.sampled_from([10, 2000, 10_000]))) + b"}"
    elif mangle == "bad_utf8":
        at = draw(st.integers(0, len(body)))
        body = body[:at] + b"\xff\xd1" + body[at:]
    elif mangle == "latin1":
        body = body.decode().replace("é", "\u00e9").encode("latin-1", "replace")
    elif mangle == "truncate":
        body = body[:draw(st.integers(0, len(body)))]
    elif mangle == "dup_key":
        body = body.replace(b'"lon":', b'"lon":1,"lon":', 1)
    return body, len(rows)


@st.composite
def csv_bodies(draw):
    header = draw(st.lists(names, min_size=1, max_size=6))
    if draw(st.booleans()):
        header = ["id", "lon", "lat"] + header
    cell = st.one_of(st.text(max_size=12), st.sampled_from(["-117.1627", "32.7167", "00123", "TRUE", "2^70",
                                                            "1180591620717411303424", "9223372036854775807",
                                                            "=1+1", "@x", "PEÑASQUITOS", '"q"', "", "2016-01-01"]))
    rows = draw(st.lists(st.lists(cell, min_size=len(header), max_size=len(header) + draw(st.sampled_from([0, 0, 1]))),
                         min_size=1, max_size=10))
    quote = lambda v: '"' + v.replace('"', '""') + '"' if any(c in v for c in ',"\r\n') else v  # noqa: E731
    text = "\n".join(",".join(quote(v) for v in row) for row in [header] + rows) + "\n"
    encoding = draw(st.sampled_from(["utf-8", "utf-8", "windows-1252", "utf-16", "latin-1"]))
    body = text.encode(encoding, "replace")
    declared = draw(st.sampled_from([None, encoding, "utf-8", "klingon"]))
    content_type = "text/csv" + (f"; charset={declared}" if declared else "")
    return body, len(rows), content_type


arrow_types = st.sampled_from([pa.int64(), pa.uint64(), pa.float64(), pa.float32(), pa.string(), pa.binary(),
                               pa.bool_(), pa.null(), pa.date32(), pa.struct([("a", pa.int32())]),
                               pa.list_(pa.int32()), pa.decimal128(10, 2), pa.large_string()])


def arrow_values(kind: pa.DataType, n: int):
    if pa.types.is_null(kind):
        return st.just([None] * n)
    sample = {
        "int64": st.integers(-(2**63), 2**63 - 1), "uint64": st.integers(0, 2**64 - 1),
        "double": st.floats(allow_nan=True), "float": st.floats(width=32), "string": st.text(max_size=8),
        "large_string": st.text(max_size=8), "binary": st.binary(max_size=8), "bool": st.booleans(),
        "date32[day]": st.dates(), "decimal128(10, 2)": st.decimals(-10**6, 10**6, places=2, allow_nan=False),
    }.get(str(kind))
    if sample is None:
        sample = st.just({"a": 1}) if pa.types.is_struct(kind) else st.lists(st.integers(-5, 5), max_size=3)
    return st.lists(st.one_of(st.none(), sample), min_size=n, max_size=n)


@st.composite
def arrow_bodies(draw):
    n = draw(st.integers(1, 10))
    cols = draw(st.lists(st.tuples(names, arrow_types), min_size=1, max_size=6))
    if draw(st.booleans()):
        cols = [("lon", pa.float64()), ("lat", pa.float64())] + cols
    arrays = []
    for name, kind in cols:
        values = draw(arrow_values(kind, n))
        if name in ("lon", "lat") and pa.types.is_floating(kind) and draw(st.booleans()):
            values = [-117.1627 if name == "lon" else 32.7167] * n
        arrays.append(pa.array(values, kind))
    table = pa.Table.from_arrays(arrays, names=[name for name, _ in cols])
    sink = io.BytesIO()
    with ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    body = sink.getvalue()
    if draw(st.integers(0, 9)) == 0:
        body = body[:draw(st.integers(0, len(body)))]
    return body, n


@st.composite
def ndjson_bodies(draw):
    lines = draw(st.lists(st.one_of(
        st.fixed_dictionaries({"id": scalars, "lon": st.floats(-117.3, -116.9), "lat": st.floats(32.5, 33.1)}).map(
            msgspec.json.encode),
        json_values.map(msgspec.json.encode), st.binary(max_size=20).filter(lambda b: b"\n" not in b and b.strip()),
        st.just(b'{"id":"PE\xd1A","lon":-117.1,"lat":32.7}'), st.just(deep(5000))), min_size=1, max_size=10))
    return b"\n".join(lines) + b"\n", len(lines)


# ---- the property ---------------------------------------------------------------------------------------------

def check(r, n: int, kind: str) -> None:
    SEEN["cases"] += 1
    SEEN["statuses"][r.status_code] = SEEN["statuses"].get(r.status_code, 0) + 1
    if r.status_code >= 500:
        SEEN["server_errors"] += 1
    assert r.status_code < 500, r.text[:2000]
    if r.status_code != 200:
        body = r.json()
        assert isinstance(body["detail"], str) and isinstance(body["code"], str), body
        return
    media = r.headers["content-type"].split(";")[0]
    if media == "application/json":
        doc = msgspec.json.decode(r.content)
        assert doc["count"] == len(doc["results"]) == n
        named = {e["row"] for e in doc["errors"]}
        for i, row in enumerate(doc["results"]):
            assert row["error"] is None or i in named
    elif media == ARROW:
        table = ipc.open_stream(pa.py_buffer(r.content)).read_all()
        assert table.num_rows == n and "error" in table.column_names
    elif media == "text/csv":
        table = pacsv.read_csv(io.BytesIO(r.content), read_options=pacsv.ReadOptions(autogenerate_column_names=True),
                               parse_options=pacsv.ParseOptions(newlines_in_values=True),
                               convert_options=pacsv.ConvertOptions(strings_can_be_null=False))
        assert table.num_rows == n + 1  # the header row, then one line per row sent
    else:
        assert media == "application/x-ndjson", media
        lines = [msgspec.json.decode(line) for line in r.content.splitlines()]
        assert len(lines) == n or (lines and "error" in lines[-1] and "id" not in lines[-1]), lines[-3:]
        for line in lines:
            assert isinstance(line, dict)


@FUZZ
@given(body=json_bodies(), accept=st.sampled_from(ACCEPTS[:2] + ["*/*"]),
       query=st.sampled_from(["", "?layers=zip", "?asof=2016-01-01", "?crs=IAU_2015:49900"]))
def test_json_bodies(client, body, accept, query):
    data, n = body
    r = client.post("/v1/pip" + query, content=data,
                    headers={"content-type": "application/json", **({"accept": accept} if accept else {})})
    check(r, n, "json")


@FUZZ
@given(body=csv_bodies(), accept=st.sampled_from(ACCEPTS),
       query=st.sampled_from(["", "?layers=zip", "?date_col=date", "?id_col=name", "?crs=2230", "?lon_col=x"]))
def test_csv_bodies(client, body, accept, query):
    data, n, content_type = body
    r = client.post("/v1/pip" + query, content=data,
                    headers={"content-type": content_type, **({"accept": accept} if accept else {})})
    check(r, n, "csv")


@FUZZ
@given(body=arrow_bodies(), accept=st.sampled_from(ACCEPTS),
       query=st.sampled_from(["", "?layers=zip", "?date_col=date", "?id_col=name", "?id_col=lon"]))
def test_arrow_bodies(client, body, accept, query):
    data, n = body
    r = client.post("/v1/pip" + query, content=data,
                    headers={"content-type": ARROW, **({"accept": accept} if accept else {})})
    check(r, n, "arrow")


@FUZZ
@given(body=ndjson_bodies(), query=st.sampled_from(["", "?layers=zip", "?as_of=1900-01-01", "?crs=2230"]))
def test_ndjson_bodies(client, body, query):
    data, n = body
    r = client.post("/v1/pip" + query, content=data, headers={"content-type": "application/x-ndjson"})
    check(r, n, "ndjson")


@FUZZ
@given(body=csv_bodies(), accept=st.sampled_from(ACCEPTS))
def test_geocode_join_csv_bodies(client, body, accept):
    data, n, content_type = body
    data = data.replace(b"name", b"address", 1) if b"address" not in data else data
    r = client.post("/v1/geocode-join", content=data,
                    headers={"content-type": content_type, **({"accept": accept} if accept else {})})
    check(r, n, "csv")
