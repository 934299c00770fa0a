"""JSON rows are built column-wise in Arrow for speed: they must parse to exactly what per-row dicts would give."""

from __future__ import annotations

import msgspec
import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from enrich_service.io.json_rows import json_columns, json_rows

NASTY = ['plain', 'quo"te', 'back\\slash', 'new\nline', 'tab\t', '\x01ctl', 'Café Ñ 東京', '', None]


@pytest.mark.parametrize("dictionary", [False, True])
@pytest.mark.parametrize("ids", [
    list(range(9)),
    [f"P-{i}" for i in range(9)],
    NASTY,
    [1, "two", 3.5, None, True, False, 2**64 - 1, -0.0, "x"],  # mixed: encoded value by value
    [None] * 9,
])
def test_json_rows_parse_to_the_per_row_dicts(ids, dictionary):
    dist = pa.array([1.25, None, 0.0, 1e20, 3.0, None, 7.5, 0.1 + 0.2, 2.0])
    key = pa.DictionaryArray.from_arrays(pa.array([0, 1, None, 2, 0, 1, 2, None, 0], pa.int32()),
                                         pa.array(["3", 'Mission "Valley"', "Café"]))
    flags = pa.array([None, None, "city_centroid", None, None, None, None, None, "zero_coordinates"])
    errors = pa.array(NASTY)
    if dictionary:  # as the service sends flags and errors
        flags, errors = pc.dictionary_encode(flags), pc.dictionary_encode(errors)
    columns = [("id", ids), ("council_district", key), ("d_m", dist), ("flags", flags), ("error", errors)]
    body = bytes(json_rows(columns, b"\n", tail=b"\n"))
    rows = [orjson.loads(line) for line in body.split(b"\n")[:-1]]
    want = [{"id": ids[i], "council_district": key[i].as_py(), "d_m": dist[i].as_py(), "flags": flags[i].as_py(),
             "error": errors[i].as_py()} for i in range(9)]
    assert rows == want
    assert list(rows[0]) == ["id", "council_district", "d_m", "flags", "error"]  # key order kept


@pytest.mark.parametrize("parallel", [False, True])
def test_dictionary_columns_side_by_side_write_what_orjson_writes_for_each_row(parallel, monkeypatch):
    # The service's answers: runs of dictionary columns (keys, rules, flags, errors), joined per distinct
    # combination. Enough rows and distinct values that the combinations are numbered both ways (table and sort);
    # the rows copied by the serial kernel and by the parallel one.
    if parallel:
        monkeypatch.setattr("enrich_service.io.json_rows.SERIAL_BELOW", 0)
    rng = np.random.default_rng(5)
    n = 20_000
    names = ["plain", 'quo"te', "new\nline", "Café Ñ 東京", ""] + [f"v{i}" for i in range(3000)]
    columns: list = [("id", list(range(n)))]
    for k, card in enumerate([4, 3000, 2000, 2, 7]):
        codes = rng.integers(0, card, n)
        valid = rng.random(n) > 0.2
        arr = pa.DictionaryArray.from_arrays(pa.array(codes, mask=~valid), pa.array(names[:card]))
        columns.append((f"c{k}", arr))
        if k == 2:
            columns.append(("d_m", pa.array(rng.random(n))))  # a value per row splits the run
    body = bytes(json_rows(columns, b",", head=b"[", tail=b"]"))
    rows = [{name: (values[i] if isinstance(values, list) else values[i].as_py()) for name, values in columns}
            for i in range(n)]
    assert orjson.loads(body) == rows
    no_floats = [c for c in columns if c[0] != "d_m"]
    assert bytes(json_rows(no_floats, b"\n", tail=b"\n")) == b"".join(
        orjson.dumps({k: v for k, v in row.items() if k != "d_m"}) + b"\n" for row in rows)


@pytest.mark.parametrize("parallel", [False, True])
@pytest.mark.parametrize("ids", [list(range(9)), NASTY, [1, "two", 3.5, None, True, False, 2**64 - 1, -0.0, "x"]])
def test_json_columns_hold_what_the_rows_hold_column_by_column(ids, parallel, monkeypatch):
    # shape=columns: the same values as json_rows writes, one array per column, the keys in order; each column
    # copied by the serial and the parallel kernel.
    if parallel:
        monkeypatch.setattr("enrich_service.io.json_rows.SERIAL_BELOW", 0)
    key = pa.DictionaryArray.from_arrays(pa.array([0, 1, None, 2, 0, 1, 2, None, 0], pa.int32()),
                                         pa.array(["3", 'Mission "Valley"', "Café"]))
    columns = [("id", ids), ("council_district", key),
               ("d_m", pa.array([1.25, None, 0.0, 1e20, 3.0, np.nan, 7.5, 0.1 + 0.2, 2.0], from_pandas=False)),
               ("flags", pc.dictionary_encode(pa.array(NASTY))), ("error", pa.array(NASTY)),
               ("none", pa.nulls(9))]
    body = json_columns(columns, head=b'{"results":', tail=b',"count":9}')
    doc = orjson.loads(body)
    rows = orjson.loads(bytes(json_rows(columns, b",", head=b"[", tail=b"]")))
    assert list(doc["results"]) == [name for name, _ in columns] and doc["count"] == 9
    assert doc["results"] == {name: [row[name] for row in rows] for name, _ in columns}
    assert doc["results"]["d_m"][5] is None  # NaN is not JSON: null, as in the rows


@pytest.mark.data
@pytest.mark.parametrize("ids", [
    list(range(400)),
    [f"P-{i}, {NASTY[i % len(NASTY)]}" for i in range(400)],  # commas, quotes, escapes, unicode
    [None, True, False, 2**64 - 1, -5, "x"] * 66 + [1, 2, 3, 4],
    [None] * 400,
])
def test_a_small_batchs_rows_are_the_bytes_json_rows_writes(engine, ids):
    """small_json_rows, the writer for batches of up to SMALL_ROWS rows, writes byte for byte what json_rows writes
    for the same answer: real points on every layer, with 0/0, NaN, out-of-range and out-of-city rows among them
    (flags, errors, rules, no feature)."""
    from enrich_service.crs import WGS84
    from enrich_service.io.results import result_arrays, small_json_rows
    from enrich_service.points import PointBatch, prepare

    from .conftest import real_points

    lon, lat = (a[:400].copy() for a in real_points())
    lon[:4], lat[:4] = [0.0, np.nan, 500.0, -117.0], [0.0, 32.7, 32.7, 33.5]
    prepared = prepare(PointBatch(ids=ids, x=lon, y=lat), WGS84)
    layers = list(engine.store.versions)
    result = engine.tag(prepared.lon, prepared.lat, prepared.valid, layers)
    want = bytes(json_rows([("id", ids)] + result_arrays(prepared, result), b","))
    got = small_json_rows(ids, prepared, result)
    assert got == want
    assert b'"flags":"zero_coordinates"' in got and b'"error":"lon: out of range' in got


@pytest.mark.data
def test_batches_the_small_writer_leaves_to_json_rows(engine):
    """Float ids (json_rows formats floats its own way), distances and versions, and batches over SMALL_ROWS go to
    json_rows."""
    import datetime as dt

    from enrich_service.crs import WGS84
    from enrich_service.io.results import SMALL_ROWS, small_json_rows
    from enrich_service.points import PointBatch, prepare

    from .conftest import real_points

    def answer(n, ids=None, **kw):
        lon, lat = (a[:n] for a in real_points())
        prepared = prepare(PointBatch(ids=ids or list(range(n)), x=lon, y=lat), WGS84)
        return ids or list(range(n)), prepared, engine.tag(prepared.lon, prepared.lat, prepared.valid, ["zip"], **kw)

    assert small_json_rows(*answer(10)) is not None
    assert small_json_rows(*answer(10, ids=[1.5] * 10)) is None
    assert small_json_rows(*answer(10, nearest_within_m=50.0)) is None
    assert small_json_rows(*answer(10, dates=np.array(["2020-01-01"] * 10, dtype="datetime64[D]"),
                                   as_of=dt.date(2020, 1, 1))) is None
    assert small_json_rows(*answer(SMALL_ROWS + 1)) is None


def test_json_columns_of_no_rows_are_empty_arrays():
    assert orjson.loads(json_columns([("id", []), ("zip", pa.array([], pa.string()).dictionary_encode())])) == \
        {"id": [], "zip": []}


def test_non_finite_floats_become_null_as_orjson_writes_them():
    body = bytes(json_rows([("x", pa.array([np.nan, np.inf, -np.inf, 1.5], from_pandas=False))], b",",
                           head=b"[", tail=b"]"))
    assert orjson.loads(body) == [{"x": None}, {"x": None}, {"x": None}, {"x": 1.5}]


def test_decode_points_takes_plain_bodies_whole_and_still_names_each_odd_row():
    from enrich_service.io.json_body import MAX_ID_CHARS, decode_points

    rng = np.random.default_rng(3)
    lon, lat = rng.uniform(-117.3, -116.9, 1000), rng.uniform(32.5, 33.1, 1000)
    plain = [{"id": i, "lon": a, "lat": b} for i, (a, b) in enumerate(zip(lon.tolist(), lat.tolist()))]
    batch = decode_points(plain)
    assert batch.errors == {} and batch.ids == list(range(1000)) and batch.dates is None
    assert np.array_equal(batch.x, lon) and np.array_equal(batch.y, lat)

    odd = [dict(p) for p in plain]
    odd[5]["lon"] = True  # bool is an int to Python, not a coordinate
    odd[6]["lat"] = "32.7"
    odd[7]["id"] = "x" * (MAX_ID_CHARS + 1)
    odd[8] = 7
    odd[9]["lon"] = -117  # an int is a number
    odd[10]["date"] = "2020-02-30"
    batch = decode_points(odd)
    assert batch.errors == {5: ("lon", "must be a number, got bool"), 6: ("lat", "must be a number, got str"),
                            7: ("id", f"longer than {MAX_ID_CHARS} characters"),
                            8: ("points", "each point must be an object with id, lon and lat"),
                            10: ("date", "'2020-02-30' is not a date (YYYY-MM-DD)")}
    assert batch.x[9] == -117.0 and np.isnan(batch.x[5]) and np.isnan(batch.y[6]) and batch.ids[8] is None
    assert len(batch.ids[7]) == MAX_ID_CHARS
    same = np.ones(1000, dtype=bool)
    same[[5, 8, 9]] = False
    assert np.array_equal(batch.x[same], lon[same])


def _lenient(body: bytes):
    from enrich_service.io.json_body import decode_points

    doc = orjson.loads(body)
    return {k: doc.get(k) for k in ("layers", "as_of", "crs", "nearest_within_m")}, decode_points(doc["points"])


@pytest.mark.parametrize("typed, body", [
    (True, {"points": [{"id": 1, "lon": -117.1, "lat": 32.7}, {"id": "P-2", "lon": -117, "lat": 33}]}),
    (True, {"points": [{"lon": -117.1, "lat": 32.7, "extra": [1]}, {"id": None, "lon": 1.5, "lat": 2.5, "id2": 3}],
            "layers": ["zip"], "as_of": "2020-01-01", "crs": 2230, "nearest_within_m": 10}),
    (True, {"points": [{"id": 2.5, "lon": 1, "lat": 2, "date": "2019-03-04"}, {"id": -0.0, "lon": 1, "lat": 2},
                       {"id": "x" * 1001, "lon": 1, "lat": 2, "date": None}, {"lon": 1, "lat": 2, "date": "2019-02-30"}],
            "layers": "zip,council_district"}),
    (True, {"points": [{"lon": 1, "lat": 2, "date": None}]}),  # a date key, null: the versions are still reported
    (False, {"points": [{"id": True, "lon": 1, "lat": 2}]}),
    (False, {"points": [{"id": 2**63, "lon": 1, "lat": 2}, {"id": -2**63, "lon": 1, "lat": 2}]}),
    (False, {"points": [{"lon": "1", "lat": 2}, {"lat": 2}, 7, {"lon": None, "lat": False}]}),
    (False, {"points": [{"lon": 1, "lat": 2, "date": 20190304}]}),
])
def test_typed_json_bodies_decode_as_the_lenient_way_does(typed, body):
    from enrich_service.io.json_body import _TYPED_BODY, decode_json

    raw = orjson.dumps(body)
    try:
        _TYPED_BODY.decode(raw)
        took_typed = True
    except Exception:
        took_typed = False
    assert took_typed == typed
    options, batch = decode_json(raw)
    want_options, want = _lenient(raw)
    assert options == want_options
    _assert_same_points(batch, want)


def _assert_same_points(batch, want) -> None:
    """The same points: ids with their types, per-row errors, coordinates and dates."""
    assert batch.ids == want.ids and [type(i) for i in batch.ids] == [type(i) for i in want.ids]
    assert batch.errors == want.errors
    np.testing.assert_array_equal(batch.x, want.x)
    np.testing.assert_array_equal(batch.y, want.y)
    assert (batch.dates is None) == (want.dates is None)
    if want.dates is not None:
        np.testing.assert_array_equal(batch.dates, want.dates)


def _columns_of(points: list[dict]) -> dict:
    keys = dict.fromkeys(k for p in points for k in p)
    return {k: [p.get(k) for p in points] for k in keys}


@pytest.mark.parametrize("typed, points", [
    (True, [{"id": 1, "lon": -117.1, "lat": 32.7}, {"id": "P-2", "lon": -117, "lat": 33}]),
    (True, [{"id": 2.5, "lon": 1, "lat": 2, "date": "2019-03-04"}, {"id": -0.0, "lon": 1, "lat": 2, "date": None},
            {"id": "x" * 1001, "lon": 1, "lat": 2, "date": "2019-02-30"}]),
    (True, [{"lon": 1.5, "lat": 2.5}]),
    (False, [{"id": True, "lon": 1, "lat": 2}, {"id": 2**63, "lon": 1, "lat": 2}]),
    (False, [{"id": 1, "lon": "1", "lat": 2}, {"id": 2, "lon": None, "lat": False}, {"id": 3, "lon": 1, "lat": 2}]),
])
def test_points_sent_as_columns_decode_as_the_same_points_sent_as_rows(typed, points):
    # {"points": {"id": [...], "lon": [...], "lat": [...]}}: the cheap body to write; every per-row check holds.
    from enrich_service.io.json_body import _TYPED_BODY, decode_json

    raw = msgspec.json.encode({"points": _columns_of(points), "layers": "zip"})
    try:
        _TYPED_BODY.decode(raw)
        took_typed = True
    except msgspec.MsgspecError:
        took_typed = False
    assert took_typed == typed
    options, batch = decode_json(raw)
    want_options, want = decode_json(msgspec.json.encode({"points": points, "layers": "zip"}))
    assert options == want_options and options["layers"] == "zip"
    _assert_same_points(batch, want)


@pytest.mark.parametrize("points, field, says", [
    ({"lon": [1.0, 2.0], "lat": [3.0]}, "lat", "has 1 values"),
    ({"id": [1], "lon": [1.0, 2.0], "lat": [3.0, 4.0]}, "id", "has 1 values"),
    ({"lon": [1.0], "lat": [2.0], "idd": [1]}, "idd", "did you mean id?"),
    ({"lon": [1.0]}, "lat", "is missing"),
    ({"lon": 1.0, "lat": [2.0]}, "lon", "must be an array"),
])
def test_points_as_columns_of_other_lengths_or_unknown_keys_are_refused_naming_the_column(points, field, says):
    from enrich_service.errors import InvalidInput
    from enrich_service.io.json_body import decode_json

    with pytest.raises(InvalidInput) as exc:
        decode_json(orjson.dumps({"points": points}))
    assert exc.value.field == field and says in exc.value.message


@pytest.mark.parametrize("body, field", [(b"[1, 2]", "body"), (b'{"layers": "zip"}', "points"),
                                         (b'{"points": 3}', "points"), (b"{nope", "body")])
def test_json_bodies_without_a_points_list_are_refused_naming_the_field(body, field):
    from enrich_service.errors import EnrichError
    from enrich_service.io.json_body import decode_json

    with pytest.raises(EnrichError) as info:
        decode_json(body)
    assert info.value.field == field


NAN = float("nan")


@pytest.mark.parametrize("body, ids, x, y, errors, dates", [
    # The four bodies the typed decoder refuses, which the comparison above can only check against decode_points
    # itself: here each is held to what is written out by hand.
    ({"points": [{"id": True, "lon": 1, "lat": 2}]}, [True], [1.0], [2.0], {}, None),  # an odd id is echoed
    ({"points": [{"id": 2**63, "lon": 1, "lat": 2}, {"id": -2**63, "lon": 1, "lat": 2}]},
     [2**63, -2**63], [1.0, 1.0], [2.0, 2.0], {}, None),
    ({"points": [{"lon": "1", "lat": 2}, {"lat": 2}, 7, {"lon": None, "lat": False}]},
     [None] * 4, [NAN] * 4, [2.0, 2.0, NAN, NAN],
     {0: ("lon", "must be a number, got str"), 1: ("lon", "missing"),
      2: ("points", "each point must be an object with id, lon and lat"), 3: ("lon", "missing")}, None),
    ({"points": [{"lon": 1, "lat": 2, "date": 20190304}]}, [None], [1.0], [2.0],
     {0: ("date", "must be a date string YYYY-MM-DD, got int")}, ["NaT"]),
])
def test_lenient_json_bodies_decode_to_the_expected_columns(body, ids, x, y, errors, dates):
    from enrich_service.io.json_body import decode_json

    options, batch = decode_json(orjson.dumps(body))
    assert options == {"layers": None, "as_of": None, "crs": None, "nearest_within_m": None}
    assert batch.ids == ids and [type(i) for i in batch.ids] == [type(i) for i in ids]
    assert batch.errors == errors
    np.testing.assert_array_equal(batch.x, np.array(x))
    np.testing.assert_array_equal(batch.y, np.array(y))
    if dates is None:
        assert batch.dates is None
    else:
        np.testing.assert_array_equal(batch.dates, np.array(dates, dtype="datetime64[D]"))
