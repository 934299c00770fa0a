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

from enrich_service.errors import InvalidInput, UnsupportedMediaType
from enrich_service.io.coordinates import coordinate_columns, looks_like_state_plane
from enrich_service.io.dialect import check_date_format, formatted_days, parse_delimiter, sniff_delimiter
from enrich_service.io.geojson import GEOJSON, decode_geojson, encode_geojson, looks_like_geojson
from enrich_service.io.multipart import read_upload

from .conftest import POINTS

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


def test_named_coordinate_columns_are_taken_as_named():
    assert coordinate_columns(["stop_lon", "stop_lat", "lat", "lng"], "stop_lon", "stop_lat") == \
        ("stop_lon", "stop_lat")


def test_ambiguous_coordinate_columns_name_the_candidates_and_the_option():
    with pytest.raises(InvalidInput) as exc:
        coordinate_columns(["lon", "Longitude", "lat"], None, None)
    assert exc.value.field == "lon_col" and "'lon'" in exc.value.message and "'Longitude'" in exc.value.message


def test_no_coordinate_column_names_the_option():
    with pytest.raises(InvalidInput) as exc:
        coordinate_columns(["zone", "stop_lon", "stop_lat"], None, None)
    assert exc.value.field == "lon_col" and "stop_lon" in exc.value.message


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
    geo = decode_geojson(STOPS.read_bytes())
    assert len(geo.x) == len(doc["features"]) == 6219 and not geo.errors
    i = 1234
    assert [geo.x[i], geo.y[i]] == doc["features"][i]["geometry"]["coordinates"][:2]
    # The stops carry lat/lng properties of their own: the geometry's columns step aside, the properties stay.
    assert (geo.lon_col, geo.lat_col) == ("geometry_lon", "geometry_lat")
    assert geo.table.column("stop_uid")[i].as_py() == doc["features"][i]["properties"]["stop_uid"]
    assert geo.table.column("lat")[i].as_py() == doc["features"][i]["properties"]["lat"]
    assert geo.crs is None  # CRS84: lon/lat
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
    geo = decode_geojson(orjson.dumps(doc))
    assert set(geo.errors) == {2, 5, 9}
    assert geo.errors[2][0] == "geometry" and geo.errors[9][0] == "features"
    ok = [i for i in range(20) if i not in (2, 5, 9)]
    assert np.isfinite(geo.x[ok]).all() and np.isnan(geo.x[[2, 5, 9]]).all()


def test_mixed_and_nested_properties_become_text_columns():
    doc = stops_collection(3)
    doc["features"][0]["properties"]["tags"] = {"a": 1}
    doc["features"][1]["properties"]["stop_code"] = "10328A"
    geo = decode_geojson(orjson.dumps(doc))
    assert geo.table.column("tags").to_pylist() == ['{"a":1}', None, None]
    assert geo.table.column("stop_code").type == pa.string()
    assert geo.table.column("stop_code").to_pylist()[1] == "10328A"


def test_the_legacy_crs_member_is_read():
    doc = stops_collection(2)
    doc["crs"] = {"type": "name", "properties": {"name": "urn:ogc:def:crs:EPSG::2230"}}
    assert decode_geojson(orjson.dumps(doc)).crs == "urn:ogc:def:crs:EPSG::2230"


def test_geojson_answers_keep_every_feature_as_sent_with_results_added():
    doc = stops_collection(5)
    geo = decode_geojson(orjson.dumps(doc))
    results = pa.table({"zip": ["92115"] * 5, "zip_rule": ["interior"] * 5})
    out = orjson.loads(encode_geojson(geo.table.append_column("zip", results["zip"]).append_column(
        "zip_rule", results["zip_rule"]), geo.table.num_columns, geo))
    assert out["name"] == doc["name"] and len(out["features"]) == 5
    for sent, got in zip(doc["features"], out["features"]):
        assert got["geometry"] == sent["geometry"]
        assert got["properties"] == {**sent["properties"], "zip": "92115", "zip_rule": "interior"}


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
