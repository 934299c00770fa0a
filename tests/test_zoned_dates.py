"""Which district lines a row's date picks: San Diego calendar days, whatever the transport.

The 2021 lines are in force from 2022-12-10 (boundaries/manifest.yaml), a San Diego day: 2022-12-10T07:00:00Z is
still 2022-12-09 at 23:00 in San Diego, so it takes the 2011 lines. The point below is in district 1 on the 2011
lines and in district 6 on the 2021 lines.
"""

from __future__ import annotations

import datetime as dt
import io

import orjson
import pyarrow as pa
import pyarrow.ipc as ipc
import pytest

from .conftest import ADDRESS, BOUNDARIES, needs, ready_app

LON, LAT = -117.22312715117752, 32.86948674738745
ARROW = "application/vnd.apache.arrow.stream"
# date -> (version, district) at the point above
CASES = {
    "2022-12-10T07:00:00Z": ("2011", "1"),         # 23:00 on the 9th in San Diego
    "2022-12-09T23:00:00-08:00": ("2011", "1"),    # the same instant
    "2022-12-10T07:59:59.999999+00:00": ("2011", "1"),
    "2022-12-10T08:00:00Z": ("2021", "6"),         # midnight in San Diego
    "2022-12-10T00:30:00+0100": ("2011", "1"),     # 15:30 on the 9th in San Diego
    "2022-12-10T07:00:00": ("2021", "6"),          # no zone: already a San Diego clock time
    "2022-12-10": ("2021", "6"),
    "2022-12-09": ("2011", "1"),
}


@pytest.fixture(scope="module")
@needs("data")
def client():
    env = {"ENRICH_BOUNDARY_DIR": str(BOUNDARIES), "ENRICH_REFERENCE_DIR": str(ADDRESS), "ENRICH_MAX_BATCH": "1000"}
    with ready_app(env) as c:
        yield c


def _expect(rows: list[dict]) -> None:
    got = {r["id"]: (r["council_district_version"], r["council_district"]) for r in rows}
    assert got == {str(i): CASES[d] for i, d in enumerate(CASES)}, got


def _points() -> list[dict]:
    return [{"id": str(i), "lon": LON, "lat": LAT, "date": d} for i, d in enumerate(CASES)]


def _csv_rows(text: str) -> list[dict]:
    import csv
    return list(csv.DictReader(io.StringIO(text)))


def _arrow(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    with ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    return sink.getvalue()


def test_zoned_timestamps_pick_the_san_diego_day_in_json_and_ndjson(client):
    r = client.post("/v1/pip?layers=council_district", content=orjson.dumps({"points": _points()}),
                    headers={"content-type": "application/json"})
    assert r.status_code == 200, r.text
    _expect(r.json()["results"])
    body = b"\n".join(orjson.dumps(p) for p in _points())
    r = client.post("/v1/pip?layers=council_district", content=body, headers={"content-type": "application/x-ndjson"})
    assert r.status_code == 200, r.text
    _expect([orjson.loads(line) for line in r.content.splitlines()])


def test_zoned_timestamps_pick_the_san_diego_day_in_csv(client):
    csv = "id,lon,lat,date\n" + "".join(f"{i},{LON},{LAT},{d}\n" for i, d in enumerate(CASES))
    r = client.post("/v1/pip?layers=council_district&date_col=date", content=csv,
                    headers={"content-type": "text/csv"})
    assert r.status_code == 200, r.text
    _expect(_csv_rows(r.text))


def test_arrow_timestamps_with_a_zone_pick_the_san_diego_day(client):
    instants = [dt.datetime(2022, 12, 10, 7, tzinfo=dt.UTC), dt.datetime(2022, 12, 10, 8, tzinfo=dt.UTC)]
    for tz in ("UTC", "America/New_York"):
        table = pa.table({"id": ["a", "b"], "lon": [LON, LON], "lat": [LAT, LAT],
                          "date": pa.array(instants, pa.timestamp("us", tz="UTC")).cast(pa.timestamp("us", tz=tz))})
        r = client.post("/v1/pip?layers=council_district&date_col=date", content=_arrow(table),
                        headers={"content-type": ARROW})
        assert r.status_code == 200, r.text
        out = ipc.open_stream(pa.py_buffer(r.content)).read_all().to_pylist()
        assert [(o["council_district_version"], str(o["council_district"])) for o in out] == \
            [("2011", "1"), ("2021", "6")], (tz, out)


@pytest.mark.parametrize("as_of, district", [("2022-12-10T07:00:00Z", "1"), ("2022-12-09T23:00:00-08:00", "1"),
                                             ("2022-12-10T08:00:00Z", "6"), ("2022-12-10", "6")])
def test_as_of_with_a_zone_is_a_san_diego_day(client, as_of, district):
    r = client.get("/v1/pip", params={"lon": LON, "lat": LAT, "layers": "council_district", "as_of": as_of})
    assert r.status_code == 200, r.text
    assert r.json()["council_district"] == district
    r = client.post("/v1/pip", content=orjson.dumps({"points": [{"id": 1, "lon": LON, "lat": LAT}], "as_of": as_of,
                                                     "layers": ["council_district"]}),
                    headers={"content-type": "application/json"})
    assert r.status_code == 200, r.text
    assert r.json()["results"][0]["council_district"] == district


@pytest.mark.parametrize("as_of", ["2016-W01-1", "20160101", "2016-01-01%00", "2016-01-01\x00", "2016-1-1",
                                   "2016-01-01junk", "2016-13-01"])
def test_as_of_is_a_date_or_an_iso_timestamp_only(client, as_of):
    for r in (client.get("/v1/pip", params={"lon": LON, "lat": LAT, "as_of": as_of}),
              client.post("/v1/pip", content=orjson.dumps({"points": [{"id": 1, "lon": LON, "lat": LAT}],
                                                           "as_of": as_of}),
                          headers={"content-type": "application/json"}),
              client.post("/v1/pip", params={"as_of": as_of}, content=f"id,lon,lat\n1,{LON},{LAT}\n",
                          headers={"content-type": "text/csv"})):
        assert r.status_code == 422, (as_of, r.status_code, r.text)
        assert r.json()["field"] == "as_of", r.json()


def test_row_dates_in_other_shapes_are_that_rows_error(client):
    points = [{"id": 1, "lon": LON, "lat": LAT, "date": "20221210"}, {"id": 2, "lon": LON, "lat": LAT,
                                                                       "date": "2022-12-10"}]
    r = client.post("/v1/pip?layers=council_district", content=orjson.dumps({"points": points}),
                    headers={"content-type": "application/json"})
    assert r.status_code == 200, r.text
    rows = r.json()["results"]
    assert rows[0]["council_district"] is None and "date" in rows[0]["error"], rows[0]
    assert rows[1]["council_district"] == "6"


def test_geocode_join_dates_are_san_diego_days_too(client):
    # 4712 Mt St Helens Dr: district 6 on the 2011 lines, 2 on the 2021 lines.
    stamps = ["2022-12-10T07:00:00Z", "2022-12-10T08:00:00Z"]
    records = [{"id": s, "address": "4712 Mt St Helens Dr", "date": s} for s in stamps]
    r = client.post("/v1/geocode-join", content=orjson.dumps({"records": records, "layers": ["council_district"]}),
                    headers={"content-type": "application/json"})
    assert r.status_code == 200, r.text
    assert [(x["council_district"], x["council_district_version"]) for x in r.json()["results"]] == \
        [("6", "2011"), ("2", "2021")]
    instants = [dt.datetime.fromisoformat(s) for s in stamps]
    table = pa.table({"id": stamps, "address": ["4712 Mt St Helens Dr"] * 2,
                      "date": pa.array(instants, pa.timestamp("ms", tz="UTC"))})
    r = client.post("/v1/geocode-join?layers=council_district&date_col=date", content=_arrow(table),
                    headers={"content-type": ARROW})
    assert r.status_code == 200, r.text
    out = ipc.open_stream(pa.py_buffer(r.content)).read_all()
    assert out.column("council_district_version").to_pylist() == ["2011", "2021"]
    assert out.column("date").type == pa.timestamp("ms", tz="UTC")  # the input column comes back as sent


# ---- a column named date is the row's date in every transport ------------------------------------------------------

def test_a_date_column_is_used_by_every_transport_unless_date_col_names_another(client):
    dates = ["2022-12-09", "2022-12-10"]
    expect = [("2011", "1"), ("2021", "6")]
    csv = "id,lon,lat,date\n" + "".join(f"{i},{LON},{LAT},{d}\n" for i, d in enumerate(dates))
    r = client.post("/v1/pip?layers=council_district", content=csv, headers={"content-type": "text/csv"})
    assert r.status_code == 200, r.text
    assert [(x["council_district_version"], x["council_district"]) for x in _csv_rows(r.text)] == expect
    table = pa.table({"id": [0, 1], "lon": [LON, LON], "lat": [LAT, LAT],
                      "date": pa.array([dt.date.fromisoformat(d) for d in dates], pa.date32())})
    r = client.post("/v1/pip?layers=council_district", content=_arrow(table), headers={"content-type": ARROW})
    assert r.status_code == 200, r.text
    out = ipc.open_stream(pa.py_buffer(r.content)).read_all().to_pylist()
    assert [(o["council_district_version"], str(o["council_district"])) for o in out] == expect
    # date_col names another column: that one counts, and `date` is an ordinary input column
    csv = "id,lon,lat,date,opened\n" + "".join(f"{i},{LON},{LAT},someday,{d}\n" for i, d in enumerate(dates))
    r = client.post("/v1/pip?layers=council_district&date_col=opened", content=csv,
                    headers={"content-type": "text/csv"})
    assert r.status_code == 200, r.text
    rows = _csv_rows(r.text)
    assert [(x["council_district_version"], x["council_district"]) for x in rows] == expect
    assert [x["date"] for x in rows] == ["someday", "someday"]
    # geocode-join: a CSV `date` column as its JSON records' `date` key
    csv = "id,address,date\n1,4712 Mt St Helens Dr,2015-06-01\n2,4712 Mt St Helens Dr,2023-01-01\n"
    r = client.post("/v1/geocode-join?layers=council_district", content=csv, headers={"content-type": "text/csv"})
    assert r.status_code == 200, r.text
    assert [(x["council_district"], x["council_district_version"]) for x in _csv_rows(r.text)] == \
        [("6", "2011"), ("2", "2021")]


def test_date_col_names_the_date_key_of_json_bodies_too(client):
    points = [{"id": i, "lon": LON, "lat": LAT, "date": "someday", "opened": d}
              for i, d in enumerate(["2022-12-09", "2022-12-10"])]
    r = client.post("/v1/pip?layers=council_district&date_col=opened", content=orjson.dumps({"points": points}),
                    headers={"content-type": "application/json"})
    assert r.status_code == 200, r.text
    assert [(x["council_district_version"], x["council_district"]) for x in r.json()["results"]] == \
        [("2011", "1"), ("2021", "6")]
    records = [{"id": d, "address": "4712 Mt St Helens Dr", "opened": d} for d in ("2015-06-01", "2023-01-01")]
    r = client.post("/v1/geocode-join?layers=council_district&date_col=opened",
                    content=orjson.dumps({"records": records}), headers={"content-type": "application/json"})
    assert r.status_code == 200, r.text
    assert [(x["council_district"], x["council_district_version"]) for x in r.json()["results"]] == \
        [("6", "2011"), ("2", "2021")]


def test_the_client_sends_san_diego_days_for_zoned_timestamps():
    import pandas as pd

    from enrich_service.client import _iso_dates

    assert _iso_dates(pd.Series(pd.to_datetime(["2022-12-10T07:00:00Z", "2022-12-10T08:00:00Z", None]))) == \
        ["2022-12-09", "2022-12-10", None]
    # zones that differ from row to row (pandas refuses the column), naive clock times, dates, junk
    assert _iso_dates(pd.Series(["2022-12-10T07:00:00Z", "2022-12-09T23:00:00-08:00", None, "2022-12-10",
                                 "junk", "2022-12-10T07:00:00"])) == \
        ["2022-12-09", "2022-12-09", None, "2022-12-10", None, "2022-12-10"]
    assert _iso_dates(pd.Series([dt.date(2022, 12, 10), None])) == ["2022-12-10", None]
