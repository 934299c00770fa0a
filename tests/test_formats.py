"""Files as analysts have them: GeoJSON, form uploads, semicolon/tab/pipe CSVs, Latitude/Longitude headers, US dates,
State Plane feet. The variants are made inside each test from real rows of ../shared/data (transit stops, parking
meters), and every tag is compared with the same points sent the plain way."""

from __future__ import annotations

import asyncio
import csv
import io

import httpx
import numpy as np
import orjson
import pyarrow as pa
import pytest
from pyproj import Transformer

from enrich_service.errors import InvalidInput, NotAcceptable, UnsupportedMediaType
from enrich_service.io.coordinates import coordinate_columns, declared_crs, geometry_columns, row_errors
from enrich_service.io.csv_safety import escape_formulas
from enrich_service.io.dialect import check_date_format, formatted_days, parse_delimiter, sniff_delimiter
from enrich_service.io.geojson import decode_geojson, encode_geojson, looks_like_geojson
from enrich_service.io.media import GEOJSON
from enrich_service.io.multipart import content_disposition, form_options, read_upload
from enrich_service.points import looks_like_state_plane

from .conftest import ADDRESS, BOUNDARIES, POINTS, ready_app

STOPS = POINTS / "transit_stops_datasd.geojson"
METERS = POINTS / "treas_parking_meters_loc_datasd.csv"


def meter_rows(n: int = 300, step: int = 30) -> list[dict]:
    """Every step-th parking meter (spread over the city), as the CSV has them: text cells."""
    with METERS.open(newline="") as f:
        rows = list(csv.DictReader(f))
    return rows[::step][:n]


def write_csv(rows: list[dict], delimiter: str = ",", rename: dict | None = None) -> str:
    out = io.StringIO()
    names = [(rename or {}).get(k, k) for k in rows[0]]
    writer = csv.writer(out, delimiter=delimiter, lineterminator="\r\n")
    writer.writerow(names)
    writer.writerows([list(r.values()) for r in rows])
    return out.getvalue()


def stops_collection(n: int = 200, step: int = 25) -> dict:
    doc = orjson.loads(STOPS.read_bytes())
    doc["features"] = doc["features"][::step][:n]
    return doc


# ---- dialects --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("delimiter", [",", ";", "\t", "|"])
def test_the_delimiter_of_real_meter_rows_is_sniffed(delimiter):
    text = write_csv(meter_rows(), delimiter)
    assert sniff_delimiter(text[:4000]) == delimiter  # the probe cuts a line short: still found


def test_a_one_column_address_file_stays_comma_separated():
    text = "sub_area\n" + "\n".join(f'"{r["sub_area"]}, San Diego"' for r in meter_rows(20))
    assert sniff_delimiter(text) == ","


@pytest.mark.parametrize("value, char", [("semicolon", ";"), ("TAB", "\t"), ("\\t", "\t"), ("|", "|"),
                                         (",", ","), (None, None), ("", None)])
def test_delimiter_option_takes_names_and_characters(value, char):
    assert parse_delimiter(value) == char


def test_an_unknown_delimiter_is_refused_naming_the_option():
    with pytest.raises(InvalidInput) as exc:
        parse_delimiter(":")
    assert exc.value.field == "delimiter" and "semicolon" in exc.value.message


def test_us_dates_of_real_meters_read_with_date_format_and_a_bad_cell_is_its_rows_error():
    rows = meter_rows(50)
    iso = [r["date_inventory"] for r in rows]
    us = [f"{d[5:7]}/{d[8:10]}/{d[:4]}" for d in iso]
    us[3], us[4] = "13/45/2020", ""
    errors: dict = {}
    days = formatted_days(pa.chunked_array([pa.array(us)]), check_date_format("%m/%d/%Y"), "date_inventory",
                          errors)
    expected = np.array(iso, dtype="datetime64[D]")
    keep = np.ones(len(iso), dtype=bool)
    keep[[3, 4]] = False
    assert (days[keep] == expected[keep]).all()
    assert np.isnat(days[3]) and np.isnat(days[4])
    assert errors == {3: ("date_inventory", "'13/45/2020' does not match date_format '%m/%d/%Y'")}


@pytest.mark.parametrize("fmt", ["mm/dd/yyyy", "%Q", "x" * 200])
def test_a_date_format_that_reads_no_date_is_refused(fmt):
    with pytest.raises(InvalidInput) as exc:
        check_date_format(fmt)
    assert exc.value.field == "date_format"


# ---- coordinate columns -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("names, found", [
    (["zone", "lat", "lng"], ("lng", "lat")),
    (["Latitude", "Longitude", "id"], ("Longitude", "Latitude")),
    (["X", "Y"], ("X", "Y")),
    (["LONG", "LAT"], ("LONG", "LAT")),
])
def test_coordinate_columns_are_found_by_their_usual_names(names, found):
    assert coordinate_columns(names, None, None) == found


def test_lon_and_lat_exactly_are_the_default_even_beside_x_and_y():
    assert coordinate_columns(["x", "y", "lon", "lat"], None, None) == ("lon", "lat")


def test_named_coordinate_columns_are_taken_as_named():
    assert coordinate_columns(["stop_lon", "stop_lat", "lat", "lng"], "stop_lon", "stop_lat") == \
        ("stop_lon", "stop_lat")


def test_ambiguous_coordinate_columns_name_the_candidates_and_the_option():
    with pytest.raises(InvalidInput) as exc:
        coordinate_columns(["lng", "Longitude", "lat"], None, None)
    assert exc.value.field == "lon_col" and "'lng'" in exc.value.message and "'Longitude'" in exc.value.message


def test_without_a_usual_name_the_default_is_looked_for_and_reported_missing():
    assert coordinate_columns(["zone", "stop_lon", "stop_lat"], None, None) == ("lon", "lat")


def test_real_meters_in_state_plane_feet_are_recognised_and_degrees_are_not():
    rows = [r for r in meter_rows(300) if float(r["lat"]) > 32.5]  # placeholder 32.0,-117.0 rows aside
    lon = np.array([float(r["lng"]) for r in rows])
    lat = np.array([float(r["lat"]) for r in rows])
    x, y = Transformer.from_crs(4326, 2230, always_xy=True).transform(lon, lat)
    assert looks_like_state_plane(np.asarray(x), np.asarray(y)).all()
    assert not looks_like_state_plane(lon, lat).any()
    assert not looks_like_state_plane(np.asarray(x) * 0.3048 * 1000, np.asarray(y) * 1000).any()  # elsewhere


# ---- GeoJSON ----------------------------------------------------------------------------------------------------

def test_real_transit_stops_decode_to_their_points_and_properties():
    doc = orjson.loads(STOPS.read_bytes())
    table = decode_geojson(STOPS.read_bytes())
    assert table.num_rows == len(doc["features"]) == 6219 and not row_errors(table)
    # The stops carry lat/lng properties of their own: the geometry's columns step aside, the properties stay.
    assert geometry_columns(table) == ("geometry_lon", "geometry_lat")
    i = 1234
    assert [table.column("geometry_lon")[i].as_py(), table.column("geometry_lat")[i].as_py()] == \
        doc["features"][i]["geometry"]["coordinates"][:2]
    assert table.column("stop_uid")[i].as_py() == doc["features"][i]["properties"]["stop_uid"]
    assert table.column("lat")[i].as_py() == doc["features"][i]["properties"]["lat"]
    assert declared_crs(table) is None  # CRS84: lon/lat
    assert "id" not in table.column_names  # the stops' features have no id
    assert looks_like_geojson(STOPS.read_bytes()[:2000])
    assert not looks_like_geojson(orjson.dumps({"points": [{"lon": 1, "lat": 2, "type": "Feature"}]}))


def test_a_polygon_feature_is_refused_naming_it():
    doc = stops_collection(20)
    doc["features"][7]["geometry"] = {"type": "Polygon", "coordinates": [[[-117.1, 32.7], [-117.0, 32.7],
                                                                          [-117.0, 32.8], [-117.1, 32.7]]]}
    doc["features"][7]["id"] = "parcel-9"
    with pytest.raises(InvalidInput) as exc:
        decode_geojson(orjson.dumps(doc))
    assert exc.value.field == "features[7].geometry" and "Polygon" in exc.value.message
    assert "parcel-9" in exc.value.message


def test_one_bad_feature_is_its_rows_error_and_the_others_decode():
    doc = stops_collection(20)
    doc["features"][2]["geometry"] = None
    doc["features"][5]["geometry"]["coordinates"] = ["-117.1", 32.7]
    doc["features"][9] = "not a feature"
    table = decode_geojson(orjson.dumps(doc))
    errors = row_errors(table)
    assert set(errors) == {2, 5, 9}
    assert errors[2][0] == "geometry" and errors[9][0] == "features"
    x = np.asarray(table.column("geometry_lon").to_numpy(zero_copy_only=False), dtype=float)
    ok = [i for i in range(20) if i not in (2, 5, 9)]
    assert np.isfinite(x[ok]).all() and np.isnan(x[[2, 5, 9]]).all()


def test_mixed_and_nested_properties_become_text_columns():
    doc = stops_collection(3)
    doc["features"][0]["properties"]["tags"] = {"a": 1}
    doc["features"][1]["properties"]["stop_code"] = "10328A"
    table = decode_geojson(orjson.dumps(doc))
    assert table.column("tags").to_pylist() == ['{"a":1}', None, None]
    assert table.column("stop_code").type == pa.string()
    assert table.column("stop_code").to_pylist()[1] == "10328A"
    out = orjson.loads(encode_geojson(table))  # objects given back as objects
    assert out["features"][0]["properties"]["tags"] == {"a": 1}


def test_the_legacy_crs_member_is_read():
    doc = stops_collection(2)
    doc["crs"] = {"type": "name", "properties": {"name": "urn:ogc:def:crs:EPSG::2230"}}
    assert declared_crs(decode_geojson(orjson.dumps(doc))) == "urn:ogc:def:crs:EPSG::2230"


def test_geojson_answers_keep_every_feature_as_sent_with_results_added():
    doc = stops_collection(5)
    for i, f in enumerate(doc["features"]):
        f["id"] = 100 + i
    table = decode_geojson(orjson.dumps(doc))
    table = table.append_column("zip", pa.array(["92115"] * 5).dictionary_encode()).append_column(
        "zip_rule", pa.array([None] * 5, pa.string()))
    out = orjson.loads(encode_geojson(table))
    assert out["name"] == doc["name"] and out["crs"] == doc["crs"] and len(out["features"]) == 5
    assert out["features"] == [{**sent, "properties": {**sent["properties"], "zip": "92115", "zip_rule": None}}
                               for sent in doc["features"]]


def test_a_table_without_geometry_cannot_be_answered_as_geojson():
    with pytest.raises(NotAcceptable) as exc:
        encode_geojson(pa.table({"id": [1]}))
    assert exc.value.field == "Accept"


# ---- form uploads ------------------------------------------------------------------------------------------------

def form(files: dict, data: dict | None = None) -> tuple[bytes, str]:
    request = httpx.Request("POST", "http://x/", files=files, data=data)
    return request.read(), request.headers["content-type"]


@pytest.mark.parametrize("filename, part_type, kind", [
    ("meters.csv", "application/vnd.ms-excel", "text/csv"),  # what Windows browsers send for a .csv
    ("meters.txt", "text/plain", "text/csv"),
    ("stops.geojson", "application/octet-stream", GEOJSON),  # curl's label for most files
    ("stops.json", "application/json", GEOJSON),
    ("blob", "application/octet-stream", GEOJSON),
])
def test_an_uploaded_file_gets_its_media_type_from_its_name_type_or_bytes(filename, part_type, kind):
    data = orjson.dumps(stops_collection(3)) if kind == GEOJSON else write_csv(meter_rows(5)).encode()
    body, content_type = form({"file": (filename, data, part_type)}, {"layers": "zip"})
    upload = asyncio.run(read_upload(body, content_type))
    assert (upload.media_type, upload.data, upload.filename, upload.fields) == (kind, data, filename,
                                                                                {"layers": "zip"})


def test_a_form_without_a_file_or_with_two_names_the_field():
    body, content_type = form({"layers": (None, "zip")})  # a text part only
    with pytest.raises(InvalidInput) as exc:
        asyncio.run(read_upload(body, content_type))
    assert exc.value.field == "file"
    body, content_type = form({"a": ("a.csv", b"lon,lat\n"), "b": ("b.csv", b"lon,lat\n")})
    with pytest.raises(InvalidInput) as exc:
        asyncio.run(read_upload(body, content_type))
    assert exc.value.field == "b"


def test_an_unreadable_file_kind_is_refused_naming_it():
    body, content_type = form({"file": ("districts.gpkg", b"SQLite format 3\x00")})
    with pytest.raises(UnsupportedMediaType) as exc:
        asyncio.run(read_upload(body, content_type))
    assert "districts.gpkg" in exc.value.message and exc.value.field == "file"


def test_form_fields_are_options_and_an_unknown_or_conflicting_one_is_refused():
    known = ("layers", "as_of", "crs")
    assert form_options({"layers": "zip"}, {"layers": None, "crs": "EPSG:2230"}, known) == \
        {"layers": "zip", "crs": "EPSG:2230"}
    with pytest.raises(InvalidInput) as exc:
        form_options({"asof": "2020-01-01"}, {}, known)
    assert exc.value.field == "asof" and "as_of" in exc.value.message
    with pytest.raises(InvalidInput) as exc:
        form_options({"layers": "zip"}, {"layers": "council_district"}, known)
    assert exc.value.field == "layers"


@pytest.mark.parametrize("filename, answer, disposition", [
    ("stops.geojson", GEOJSON, 'attachment; filename="stops-enriched.geojson"'),
    ("C:\\Users\\me\\meters 2021.csv", "text/csv", 'attachment; filename="meters_2021-enriched.csv"'),
    (None, "text/csv", None),
])
def test_an_upload_is_answered_as_a_download_named_after_it(filename, answer, disposition):
    assert content_disposition(filename, answer) == disposition


def test_state_plane_feet_sent_as_degrees_are_row_errors_that_name_the_crs_option():
    from enrich_service.points import WGS84, PointBatch, prepare

    rows = [r for r in meter_rows(40) if float(r["lat"]) > 32.5]
    x, y = Transformer.from_crs(4326, 2230, always_xy=True).transform(
        np.array([float(r["lng"]) for r in rows]), np.array([float(r["lat"]) for r in rows]))
    x, y = np.asarray(x), np.asarray(y)
    y[0] = 5e7  # far from San Diego in any CRS: only out of range
    prepared = prepare(PointBatch(ids=None, x=x, y=y), WGS84)
    assert prepared.errors[0] == ("lat", "out of range [-90, 90]")
    assert all(prepared.errors[i] == ("lat", "out of range [-90, 90]; the numbers look like State Plane feet: send "
                                             "crs=EPSG:2230") for i in range(1, len(rows)))


# ---- over HTTP -------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def client():
    env = {"ENRICH_BOUNDARY_DIR": str(BOUNDARIES), "ENRICH_REFERENCE_DIR": str(ADDRESS), "ENRICH_MAX_BATCH": "1000",
           "ENRICH_MAX_BODY_BYTES": str(2_000_000)}
    with ready_app(env) as c:
        yield c


LAYERS = ("council_district", "neighborhood", "zip")
ARROW = "application/vnd.apache.arrow.stream"


def plain_tags(client, lon, lat, dates=None, **query) -> list[dict]:
    """The tags of these points sent the plain way: a JSON body of {id, lon, lat}."""
    points = [{"id": i, "lon": float(x), "lat": float(y)} for i, (x, y) in enumerate(zip(lon, lat))]
    if dates is not None:
        for p, d in zip(points, dates):
            p["date"] = d
    r = client.post("/v1/pip", params={"layers": ",".join(LAYERS), **query}, content=orjson.dumps({"points": points}),
                    headers={"content-type": "application/json"})
    assert r.status_code == 200, r.text
    return [{k: row[k] for k in LAYERS} for row in r.json()["results"]]


def tags_of(rows: list[dict]) -> list[dict]:
    return [{k: row[k] for k in LAYERS} for row in rows]


def meter_lonlat(rows):
    return [float(r["lng"]) for r in rows], [float(r["lat"]) for r in rows]


def pip(client, content, content_type, accept=None, **query):
    headers = {"content-type": content_type, **({"accept": accept} if accept else {})}
    return client.post("/v1/pip", params={"layers": ",".join(LAYERS), **query}, content=content, headers=headers)


def read_csv_answer(r, delimiter: str = ",") -> list[dict]:
    assert r.status_code == 200, r.text
    return list(csv.DictReader(io.StringIO(r.text), delimiter=delimiter))


def read_arrow_answer(r) -> pa.Table:
    assert r.status_code == 200, r.text
    return pa.ipc.open_stream(pa.py_buffer(r.content)).read_all()


def stops_lonlat(doc):
    return [f["geometry"]["coordinates"][0] for f in doc["features"]], \
        [f["geometry"]["coordinates"][1] for f in doc["features"]]


def test_geojson_stops_come_back_as_the_same_features_with_their_tags(client):
    doc = stops_collection(200)
    expected = plain_tags(client, *stops_lonlat(doc))
    assert len({e["council_district"] for e in expected}) > 3  # the sample spans the city (and outside it)
    r = pip(client, orjson.dumps(doc), GEOJSON)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith(GEOJSON)
    out = r.json()
    assert out["type"] == "FeatureCollection" and len(out["features"]) == 200
    for sent, got, tags in zip(doc["features"], out["features"], expected):
        assert got["geometry"] == sent["geometry"]
        assert {k: got["properties"][k] for k in sent["properties"]} == sent["properties"]
        assert {k: got["properties"][k] for k in LAYERS} == tags
        assert got["properties"]["error"] is None


def test_geojson_sent_as_plain_json_is_read_as_geojson(client):
    doc = stops_collection(30)
    r = pip(client, orjson.dumps(doc), "application/json")
    assert r.status_code == 200, r.text
    assert [tuple(f["properties"][k] for k in LAYERS) for f in r.json()["features"]] == \
        [tuple(t.values()) for t in plain_tags(client, *stops_lonlat(doc))]


@pytest.mark.parametrize("accept", ["text/csv", ARROW])
def test_geojson_stops_answered_as_csv_or_arrow(client, accept):
    doc = stops_collection(100)
    expected = plain_tags(client, *stops_lonlat(doc))
    r = pip(client, orjson.dumps(doc), GEOJSON, accept=accept)
    rows = read_csv_answer(r) if accept == "text/csv" else read_arrow_answer(r).to_pylist()
    assert tags_of(rows) == [{k: v or ("" if accept == "text/csv" else None) for k, v in e.items()}
                             for e in expected]
    # The properties as columns, and the geometry's coordinates beside them (the stops have lat/lng of their own).
    assert [str(row["stop_uid"]) for row in rows] == [f["properties"]["stop_uid"] for f in doc["features"]]
    assert float(rows[7]["geometry_lon"]) == doc["features"][7]["geometry"]["coordinates"][0]


def test_a_csv_answered_as_geojson_is_a_point_per_row(client):
    rows = meter_rows(80)
    r = pip(client, write_csv(rows).encode(), "text/csv", accept=GEOJSON, lon_col="lng", lat_col="lat")
    assert r.status_code == 200, r.text
    features = r.json()["features"]
    assert [f["properties"]["pole"] for f in features] == [row["pole"] for row in rows]
    assert features[3]["geometry"]["coordinates"] == pytest.approx([float(rows[3]["lng"]), float(rows[3]["lat"])])
    assert tags_of([f["properties"] for f in features]) == plain_tags(client, *meter_lonlat(rows))


def test_a_polygon_is_refused_naming_the_feature_and_a_bad_point_is_its_rows_error(client):
    doc = stops_collection(20)
    doc["features"][4]["geometry"] = {"type": "MultiPolygon", "coordinates": []}
    r = pip(client, orjson.dumps(doc), GEOJSON)
    assert r.status_code == 422 and r.json()["field"] == "features[4].geometry", r.text
    assert "MultiPolygon" in r.json()["detail"]

    doc = stops_collection(20)
    doc["features"][4]["geometry"] = None
    r = pip(client, orjson.dumps(doc), GEOJSON)
    assert r.status_code == 200, r.text
    props = [f["properties"] for f in r.json()["features"]]
    assert props[4]["error"].startswith("geometry:") and props[4]["council_district"] is None
    others = [i for i in range(20) if i != 4]
    lon, lat = stops_lonlat({"features": [doc["features"][i] for i in others]})
    assert tags_of([props[i] for i in others]) == plain_tags(client, lon, lat)


@pytest.mark.parametrize("delimiter", [";", "\t", "|"])
def test_semicolon_tab_and_pipe_csvs_are_read_as_the_comma_csv(client, delimiter):
    rows = meter_rows(120)
    comma = read_csv_answer(pip(client, write_csv(rows).encode(), "text/csv", lon_col="lng", lat_col="lat"))
    r = pip(client, write_csv(rows, delimiter).encode(), "text/csv", lon_col="lng", lat_col="lat")
    assert r.text.startswith(delimiter.join(["zone", "area", "sub_area"]))  # answered in the file's own dialect
    other = read_csv_answer(r, delimiter)
    assert other == comma and tags_of(other)[5]["council_district"]
    # Set by the option, the same; a wrong one is refused naming it.
    named = pip(client, write_csv(rows, delimiter).encode(), "text/csv", lon_col="lng", lat_col="lat",
                delimiter={";": "semicolon", "\t": "tab", "|": "pipe"}[delimiter])
    assert read_csv_answer(named, delimiter) == comma
    assert pip(client, b"lon,lat\n", "text/csv", delimiter="colon").json()["field"] == "delimiter"


def test_a_semicolon_csv_with_decimal_commas_is_read_as_its_numbers(client):
    rows = meter_rows(40)
    for r in rows:  # as a spreadsheet in a decimal-comma locale writes them
        r["lat"], r["lng"] = r["lat"].replace(".", ","), r["lng"].replace(".", ",")
    r = pip(client, write_csv(rows, ";").encode(), "text/csv", accept="application/json")
    assert r.status_code == 200 and not r.json()["errors"], r.text
    for row in rows:
        row["lat"], row["lng"] = row["lat"].replace(",", "."), row["lng"].replace(",", ".")
    assert tags_of(r.json()["results"]) == plain_tags(client, *meter_lonlat(rows))


def test_a_windows_1252_semicolon_csv_keeps_its_text(client):
    rows = meter_rows(10)
    for r in rows:
        r["sub_area"] += " (Peñasquitos; east)"  # the delimiter inside a cell: quoted both ways
    body = write_csv(rows, ";").encode("cp1252")
    out = read_csv_answer(pip(client, body, "text/csv; charset=windows-1252", lon_col="lng", lat_col="lat"), ";")
    assert [r["sub_area"] for r in out] == [r["sub_area"] for r in rows]


@pytest.mark.parametrize("rename", [{"lng": "Longitude", "lat": "Latitude"}, {"lng": "LON", "lat": "Lat"},
                                    {"lng": "x", "lat": "Y"}, {}])
def test_coordinate_columns_are_found_without_naming_them(client, rename):
    rows = meter_rows(60)
    out = read_csv_answer(pip(client, write_csv(rows, rename=rename).encode(), "text/csv"))
    assert tags_of(out) == [{k: v or "" for k, v in t.items()} for t in plain_tags(client, *meter_lonlat(rows))]


def test_ambiguous_coordinate_columns_are_refused_naming_the_candidates(client):
    rows = meter_rows(5)
    for r in rows:
        r["longitude"] = r["lng"]
    r = pip(client, write_csv(rows).encode(), "text/csv")
    assert r.status_code == 422 and r.json()["field"] == "lon_col", r.text
    assert "'lng'" in r.json()["detail"] and "'longitude'" in r.json()["detail"]


def test_state_plane_csv_without_crs_gets_the_hint_and_with_it_the_tags(client):
    rows = [r for r in meter_rows(60) if float(r["lat"]) > 32.5]
    x, y = Transformer.from_crs(4326, 2230, always_xy=True).transform(*meter_lonlat(rows))
    body = "x,y\n" + "".join(f"{a},{b}\n" for a, b in zip(x, y))
    r = pip(client, body.encode(), "text/csv", accept="application/json")
    assert r.status_code == 200
    assert all("crs=EPSG:2230" in e["detail"] for e in r.json()["errors"]) and len(r.json()["errors"]) == len(rows)
    fixed = pip(client, body.encode(), "text/csv", accept="application/json", crs="EPSG:2230")
    assert tags_of(fixed.json()["results"]) == plain_tags(client, *meter_lonlat(rows))


def test_us_dates_read_with_date_format_pick_the_same_district_lines_as_iso(client):
    with METERS.open(newline="") as f:
        every = list(csv.DictReader(f))
    rows = every[::50][:200] + [r for r in every if r["date_inventory"] >= "2022-12-10"][:50]
    iso = [r["date_inventory"] for r in rows]
    assert min(iso) < "2022-12-10" < max(iso)  # inventoried under both district lines (2011, 2021)
    for r in rows:
        d = r["date_inventory"]
        r["date_inventory"] = f"{d[5:7]}/{d[8:10]}/{d[:4]}"
    body = write_csv(rows).encode()
    r = pip(client, body, "text/csv", accept="application/json", lon_col="lng", lat_col="lat",
            date_col="date_inventory", date_format="%m/%d/%Y")
    assert r.status_code == 200 and not r.json()["errors"], r.text
    got = r.json()["results"]
    assert [row["council_district_version"] for row in got] == ["2011" if d < "2022-12-10" else "2021" for d in iso]
    assert tags_of(got) == plain_tags(client, *meter_lonlat(rows), dates=iso)
    r = pip(client, body, "text/csv", accept="application/json", lon_col="lng", lat_col="lat",
            date_col="date_inventory")
    first = r.json()["errors"][0]  # without the option: each row says why, and what to set
    assert first["field"] == "date_inventory" and "date_format" in first["detail"]


def test_csv_answered_as_json_numbers_its_rows_when_there_is_no_id_column(client):
    rows = meter_rows(25)
    r = pip(client, write_csv(rows).encode(), "text/csv", accept="application/json")
    assert [row["id"] for row in r.json()["results"]] == list(range(25))
    doc = stops_collection(10)
    for f in doc["features"]:
        f["id"] = f["properties"]["stop_uid"]
    r = pip(client, orjson.dumps(doc), GEOJSON, accept="application/json")
    assert [row["id"] for row in r.json()["results"]] == [f["id"] for f in doc["features"]]


@pytest.mark.parametrize("kind", ["csv", "geojson"])
def test_a_form_upload_is_answered_as_its_file(client, kind):
    if kind == "csv":
        rows = meter_rows(50)
        data, name, expected = write_csv(rows).encode(), "meters.csv", plain_tags(client, *meter_lonlat(rows))
    else:
        doc = stops_collection(50)
        data, name, expected = orjson.dumps(doc), "stops.geojson", plain_tags(client, *stops_lonlat(doc))
    r = client.post("/v1/pip", files={"file": (name, data, "application/octet-stream")},
                    data={"layers": ",".join(LAYERS)})
    assert r.status_code == 200, r.text
    if kind == "csv":
        assert r.headers["content-type"].startswith("text/csv")
        got = [{k: v or None for k, v in row.items()} for row in tags_of(read_csv_answer(r))]
    else:
        assert r.headers["content-type"].startswith(GEOJSON)
        got = tags_of([f["properties"] for f in r.json()["features"]])
    assert got == expected
    assert name.split(".")[0] in r.headers.get("content-disposition", "")


def test_a_form_option_unknown_or_given_twice_is_refused(client):
    r = client.post("/v1/pip", files={"file": ("m.csv", write_csv(meter_rows(3)).encode())}, data={"layer": "zip"})
    assert r.status_code == 422 and r.json()["field"] == "layer", r.text
    r = client.post("/v1/pip?layers=zip", files={"file": ("m.csv", write_csv(meter_rows(3)).encode())},
                    data={"layers": "council_district"})
    assert r.status_code == 422 and r.json()["field"] == "layers", r.text


def test_geocode_join_reads_semicolon_csvs_and_form_uploads_and_numbers_rows(client):
    rows = [{"address": r["sub_area"], "zip": ""} for r in meter_rows(30)]
    comma = client.post("/v1/geocode-join", params={"layers": "council_district"},
                        content=write_csv(rows).encode(), headers={"content-type": "text/csv",
                                                                   "accept": "application/json"})
    assert comma.status_code == 200, comma.text
    assert [row["id"] for row in comma.json()["results"]] == list(range(30))
    semi = client.post("/v1/geocode-join", params={"layers": "council_district"},
                       content=write_csv(rows, ";").encode(), headers={"content-type": "text/csv",
                                                                       "accept": "application/json"})
    assert semi.json()["results"] == comma.json()["results"]
    form_r = client.post("/v1/geocode-join", params={"layers": "council_district"},
                         files={"file": ("addresses.csv", write_csv(rows, "\t").encode())},
                         headers={"accept": "application/json"})
    assert form_r.status_code == 200, form_r.text
    assert form_r.json()["results"] == comma.json()["results"]


def test_geocode_join_answers_a_geojson_of_stop_intersections_with_the_geocoded_points(client):
    doc = stops_collection(120, 50)
    for f in doc["features"]:
        f["geometry"] = None  # an address list: the stop's name is an intersection ("Allison Av & Palm Av")
    r = client.post("/v1/geocode-join", params={"layers": "council_district", "address_col": "stop_name"},
                    content=orjson.dumps(doc), headers={"content-type": GEOJSON})
    assert r.status_code == 200, r.text
    out = r.json()["features"]
    assert len(out) == len(doc["features"])
    matched = [f for f in out if f["properties"]["match"] == "intersection"]
    assert len(matched) >= 5, [f["properties"]["reason"] for f in out][:10]
    for f in matched:  # the geocoded point is the feature's geometry, near where the stop is
        (lon, lat), p = f["geometry"]["coordinates"], f["properties"]
        assert abs(lon - p["stop_lon"]) < 0.005 and abs(lat - p["stop_lat"]) < 0.005, (p["stop_name"], lon, lat)
    r = pip(client, orjson.dumps({"points": [{"lon": -117.16, "lat": 32.72}]}), "application/json", accept=GEOJSON)
    assert r.status_code == 406 and r.json()["field"] == "Accept"


# ---- issue 19: what a README-only tester met -------------------------------------------------------------------

BOM = b"\xef\xbb\xbf"


@pytest.mark.parametrize("content_type", [GEOJSON, "application/json"])
def test_a_geojson_body_with_a_byte_order_mark_is_read_as_without_one(client, content_type):
    doc = stops_collection(30)
    r = pip(client, BOM + orjson.dumps(doc), content_type)
    assert r.status_code == 200, r.text
    assert tags_of([f["properties"] for f in r.json()["features"]]) == plain_tags(client, *stops_lonlat(doc))


def test_a_json_points_body_with_a_byte_order_mark_is_read_as_without_one(client):
    rows = meter_rows(20)
    points = [{"id": i, "lon": float(r["lng"]), "lat": float(r["lat"])} for i, r in enumerate(rows)]
    r = pip(client, BOM + orjson.dumps({"points": points}), "application/json")
    assert r.status_code == 200, r.text
    assert tags_of(r.json()["results"]) == plain_tags(client, *meter_lonlat(rows))


def test_an_uploaded_geojson_with_a_byte_order_mark_is_recognised_by_its_bytes():
    data = BOM + orjson.dumps(stops_collection(3))
    body, content_type = form({"file": ("blob", data, "application/octet-stream")})
    assert asyncio.run(read_upload(body, content_type)).media_type == GEOJSON


def cp1252_meters(n: int = 40) -> tuple[list[dict], bytes]:
    """Real meters with an accented street name in one cell, as Excel saves a CSV on Windows (cp1252)."""
    rows = meter_rows(n)
    rows[3]["sub_area"] = "Peñasquitos Café"
    return rows, write_csv(rows).encode("cp1252")


def test_a_cp1252_csv_uploaded_by_a_browser_form_declares_its_charset_as_a_field(client):
    rows, data = cp1252_meters()
    query = {"layers": ",".join(LAYERS), "lon_col": "lng", "lat_col": "lat"}
    r = client.post("/v1/pip", params=query, files={"file": ("meters.csv", data, "application/vnd.ms-excel")})
    assert r.status_code == 415 and "charset" in r.json()["detail"], r.text
    for how in ("form", "query"):
        r = client.post("/v1/pip", params={**query, **({"charset": "windows-1252"} if how == "query" else {})},
                        files={"file": ("meters.csv", data, "application/vnd.ms-excel")},
                        data={"charset": "windows-1252"} if how == "form" else None)
        got = read_csv_answer(r)
        assert [g["sub_area"] for g in got] == [row["sub_area"] for row in rows], how
        assert tags_of(got) == [{k: v or "" for k, v in t.items()} for t in plain_tags(client, *meter_lonlat(rows))]


def test_a_csv_body_takes_the_charset_parameter_and_an_unknown_one_is_refused_naming_it(client):
    rows, data = cp1252_meters()
    r = pip(client, data, "text/csv", lon_col="lng", lat_col="lat", charset="cp1252")
    assert [g["sub_area"] for g in read_csv_answer(r)] == [row["sub_area"] for row in rows]
    r = pip(client, data, "text/csv", lon_col="lng", lat_col="lat", charset="klingon-8")
    assert r.status_code == 422 and r.json()["field"] == "charset", r.text
    r = pip(client, data, "text/csv; charset=utf-8", lon_col="lng", lat_col="lat", charset="cp1252")
    assert r.status_code == 422 and r.json()["field"] == "charset", r.text


def test_the_charset_parameter_is_documented_beside_delimiter(client):
    params = client.get("/openapi.json").json()["paths"]["/v1/pip"]["post"]["parameters"]
    assert {"delimiter", "charset"} <= {p["name"] for p in params}


@pytest.mark.parametrize("cell", ["-117,1627", "32,7157", "+1,5", "-0,25e3"])
def test_a_decimal_comma_number_is_not_escaped_as_a_formula(cell):
    assert escape_formulas(pa.array([cell, "=A1"])).to_pylist() == [cell, "'=A1"]


@pytest.mark.parametrize("cell", ["-1+2", "=A1", "+1,5+cmd|' /C calc'!A0", "-1,2,3", "@SUM(1,2)"])
def test_a_formula_is_still_escaped(cell):
    assert escape_formulas(pa.array([cell, "-117,16"])).to_pylist() == ["'" + cell, "-117,16"]


def test_a_semicolon_csv_with_decimal_commas_comes_back_with_its_coordinates_as_sent(client):
    rows = meter_rows(30)
    for row in rows:
        row["lng"], row["lat"] = row["lng"].replace(".", ","), row["lat"].replace(".", ",")
    r = pip(client, write_csv(rows, ";").encode(), "text/csv", lon_col="lng", lat_col="lat", delimiter=";")
    got = list(csv.DictReader(io.StringIO(r.text), delimiter=";"))
    assert r.status_code in (200,), r.text
    assert [(g["lng"], g["lat"]) for g in got] == [(row["lng"], row["lat"]) for row in rows]


def test_geocode_join_joins_several_address_columns_in_order_and_names_an_unknown_one(client):
    whole = [{"address": a} for a in ("4712 Mt St Helens Dr", "1200 Third Ave", "3990 Old Town Ave")]
    split = [dict(zip(("number", "street", "suffix"), row["address"].split(" ", 1) + [""])) for row in whole]
    split = [{"number": s["number"], "street": s["street"].rsplit(" ", 1)[0],
              "suffix": s["street"].rsplit(" ", 1)[1]} for s in split]
    query = {"layers": "council_district"}
    json_accept = {"accept": "application/json"}
    one = client.post("/v1/geocode-join", params=query, content=write_csv(whole).encode(),
                      headers={"content-type": "text/csv", **json_accept})
    assert one.status_code == 200, one.text
    assert sum(row["match"] != "none" for row in one.json()["results"]) >= 2, one.text
    several = {**query, "address_col": "number,street,suffix"}
    r = client.post("/v1/geocode-join", params=several, content=write_csv(split).encode(),
                    headers={"content-type": "text/csv", **json_accept})
    assert r.status_code == 200, r.text
    assert r.json()["results"] == one.json()["results"]
    csv_answer = client.post("/v1/geocode-join", params=several, content=write_csv(split).encode(),
                             headers={"content-type": "text/csv"})
    assert list(csv.DictReader(io.StringIO(csv_answer.text)))[0]["number"] == "4712"  # the body's own columns
    r = client.post("/v1/geocode-join", params=several, content=orjson.dumps({"records": split}),
                    headers={"content-type": "application/json"})
    assert r.status_code == 200, r.text
    assert [row["council_district"] for row in r.json()["results"]] == \
        [row["council_district"] for row in one.json()["results"]]
    for body, content_type in ((write_csv(split).encode(), "text/csv"), (orjson.dumps({"records": split}),
                                                                           "application/json")):
        r = client.post("/v1/geocode-join", params={**query, "address_col": "number,stret"}, content=body,
                        headers={"content-type": content_type})
        assert r.status_code == 422 and r.json()["field"] == "address_col" and "stret" in r.json()["detail"], r.text
