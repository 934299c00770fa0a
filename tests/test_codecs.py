"""JSON rows are built column-wise in Arrow for speed: they must parse to exactly what per-row dicts would give."""

from __future__ import annotations

import numpy as np
import orjson
import pyarrow as pa
import pytest

from enrich_service.codecs import json_rows

NASTY = ['plain', 'quo"te', 'back\\slash', 'new\nline', 'tab\t', '\x01ctl', 'Café Ñ 東京', '', None]


@pytest.mark.parametrize("ids", [
    list(range(9)),
    [f"P-{i}" for i in range(9)],
    NASTY,
    [1, "two", 3.5, None, True, False, 2**64 - 1, -0.0, "x"],  # mixed: encoded value by value
    [None] * 9,
])
def test_json_rows_parse_to_the_per_row_dicts(ids):
    dist = pa.array([1.25, None, 0.0, 1e20, 3.0, None, 7.5, 0.1 + 0.2, 2.0])
    key = pa.DictionaryArray.from_arrays(pa.array([0, 1, None, 2, 0, 1, 2, None, 0], pa.int32()),
                                         pa.array(["3", 'Mission "Valley"', "Café"]))
    flags = pa.array([None, None, "city_centroid", None, None, None, None, None, "zero_coordinates"])
    errors = pa.array(NASTY)
    columns = [("id", ids), ("council_district", key), ("d_m", dist), ("flags", flags), ("error", errors)]
    body = bytes(json_rows(columns, b"\n"))
    rows = [orjson.loads(line) for line in body.split(b"\n")[:-1]]
    want = [{"id": ids[i], "council_district": key[i].as_py(), "d_m": dist[i].as_py(), "flags": flags[i].as_py(),
             "error": errors[i].as_py()} for i in range(9)]
    assert rows == want
    assert list(rows[0]) == ["id", "council_district", "d_m", "flags", "error"]  # key order kept


def test_non_finite_floats_become_null_as_orjson_writes_them():
    body = bytes(json_rows([("x", pa.array([np.nan, np.inf, -np.inf, 1.5], from_pandas=False))], b","))
    assert orjson.loads(b"[" + body[:-1] + b"]") == [{"x": None}, {"x": None}, {"x": None}, {"x": 1.5}]


def test_decode_points_takes_plain_bodies_whole_and_still_names_each_odd_row():
    from enrich_service.codecs import MAX_ID_CHARS, decode_points

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
