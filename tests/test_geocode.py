"""The geocoder on the real reference: normalization, every match level on real addresses, the accuracy floors of
the issue on four ground truths, the bad-input catalogue over HTTP, the cache, the disk index, and PostGIS."""

from __future__ import annotations

import io

import numpy as np
import orjson
import psycopg
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.ipc as ipc
import pytest
import shapely

from .conftest import ADDRESS, BOUNDARIES, POINTS, cache_dir_sharing_layers, needs, ready_app

METERS = POINTS / "treas_parking_meters_loc_datasd.csv"
STOPS = POINTS / "transit_stops_datasd.geojson"
GARDENA = (-117.2013488, 32.7786184)  # 4608 Gardena Avenue, 92110: an address point of the reference
ARROW = "application/vnd.apache.arrow.stream"


@pytest.fixture(scope="module")
@needs("data")
def files():
    from enrich_service.geocode.reference import resolve_reference
    from enrich_service.settings import Settings

    return resolve_reference(Settings(reference_dir=ADDRESS))


@pytest.fixture(scope="module")
def geocoder(files):
    from enrich_service.geocode.matcher import Geocoder
    from enrich_service.geocode.reference import load_reference

    return Geocoder(load_reference(files))


def one(geocoder, address, zip_code=None):
    r = geocoder.geocode([address], [zip_code], use_cache=False)
    return {"lon": r.lon[0], "lat": r.lat[0], "match": r.match[0], "score": r.score[0], "matched": r.matched[0],
            "reason": r.reason.get(0), "flags": r.flags.get(0, "")}


def metres(a, b) -> float:
    from enrich_service.geocode.evaluate import distance_m

    return float(distance_m(a[0], a[1], b[0], b[1]))


# ---- normalization ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("a, b", [
    ("4608 Gardena Avenue", "4608 GARDENA AVE"), ("4608 Gardena Av", "4608 gardena ave."),
    ("100 North Main Street", "100 N MAIN ST"), ("100 Main St North", "100 MAIN ST N"),
    ("100 Fifth Avenue", "100 5TH AV"), ("100 Twenty-First Street", "100 21st St"), ("100 5 Ave", "100 5TH AVE"),
    ("4700 Mount Saint Helens Drive", "4700 MT ST HELENS DR"), ("1 Camino del Rio North", "1 CAM DEL RIO N"),
    ("4608 Gardena Ave Apt 3", "4608 Gardena Ave"), ("4608 Gardena Ave #3B", "4608 GARDENA AVE, UNIT 3B"),
    ("4608 Gardena Ave, San Diego, CA 92110", "4608 GARDENA AVE SAN DIEGO CA 92110-1234"),
    ("7850 Girard Ave La Jolla CA", "7850 GIRARD AVE"), ("1 La Jolla Scenic Dr S", "1 LA JOLLA SCENIC S DR"),
])
def test_spellings_normalize_alike(a, b):
    from enrich_service.geocode.normalize import parse

    pa_, pb = parse(a), parse(b)
    assert (pa_.kind, pa_.number, pa_.street, pa_.zip) == (pb.kind, pb.number, pb.street, pb.zip), (pa_, pb)


@pytest.mark.parametrize("text", ["5th Avenue & Market Street", "5TH AVE and MARKET ST", "Fifth Ave at Market St",
                                  "5th Ave @ Market", "5th Av / Market St"])
def test_intersections_are_recognized(text):
    from enrich_service.geocode.normalize import parse

    p = parse(text)
    assert p.kind == "intersection" and p.street == "5TH AVE" and p.street2.startswith("MARKET"), p


def test_the_batch_shortcut_reads_real_addresses_as_the_full_parser_does(files):
    from enrich_service.geocode.evaluate import mixed_addresses
    from enrich_service.geocode.normalize import parse

    _, distinct = mixed_addresses(files, METERS, STOPS, 10)  # the bench's mix
    memo: dict = {}
    assert [parse(a, None, None, memo).key() for a in distinct] == [parse(a).key() for a in distinct]


def test_what_the_fast_path_cannot_label_goes_to_usaddress_and_says_so():
    from enrich_service.geocode.normalize import parse

    p = parse("Suite 5 1200 Third Ave")
    assert (p.kind, p.number, p.street, p.parser) == ("address", 1200, "3RD AVE", "usaddress")
    assert parse("Hwy 78 & Main St").street == "HWY 78"  # a route number is not an ordinal


# ---- match levels on real examples ------------------------------------------------------------------------------

def test_exact_address_point(geocoder):
    got = one(geocoder, "4608 Gardena Avenue, San Diego, CA 92110")
    assert got["match"] == "exact" and got["score"] == 1.0 and (got["lon"], got["lat"]) == GARDENA
    assert got["matched"] == "4608 Gardena Avenue, 92110"


def test_interpolated_along_the_segment_on_the_parity_side(geocoder):
    even, odd = one(geocoder, "4712 Mt St Helens Dr"), one(geocoder, "4713 MT ST HELENS DR")
    assert even["match"] == odd["match"] == "interpolated" and even["score"] == 0.9
    assert "range 4700-4748" in even["matched"]
    # The two sides of the street, each set back from the centerline: about twice the setback apart.
    assert 35 < metres((even["lon"], even["lat"]), (odd["lon"], odd["lat"])) < 60


def test_intersection_lands_where_the_transit_stop_is(geocoder):
    got = one(geocoder, "Voltaire St & Sunset Cliffs Bl")
    assert got["match"] == "intersection" and got["score"] == 0.85
    assert got["matched"].startswith("VOLTAIRE ST & SUNSET CLIFFS BLVD")
    assert metres((got["lon"], got["lat"]), (-117.242984, 32.749740)) < 50  # the stop's coordinates


def test_a_street_between_two_cross_streets_is_the_middle_of_that_block(geocoder):
    block = one(geocoder, "Voltaire St btw Ebers St and Froude St")
    assert block["match"] == "hundred_block" and block["matched"].startswith("VOLTAIRE ST between EBERS ST and")
    corners = [one(geocoder, f"Voltaire St & {cross} St") for cross in ("Ebers", "Froude")]
    halves = [metres((block["lon"], block["lat"]), (c["lon"], c["lat"])) for c in corners]
    assert abs(halves[0] - halves[1]) < 1 and 20 < halves[0] < 150
    one_end = one(geocoder, "Voltaire St between Ebers St and Nowhere St")
    assert one_end["match"] == "intersection" and "does not meet NOWHERE ST" in one_end["reason"]
    # The parking meters' own form; downtown's 4th Avenue is not in the reference.
    assert one(geocoder, "4th Ave btw University and Robinson")["reason"] == "street '4TH AVE' is not in the reference"


def test_hundred_block_is_the_middle_of_the_block_of_meters(geocoder):
    from enrich_service.geocode.evaluate import distance_m, read_meters

    got = one(geocoder, "3900 FALCON ST")
    assert got["match"] == "hundred_block" and got["matched"].startswith("3900 block of FALCON ST")
    meters = read_meters(METERS)
    meters = meters[meters["sub_area"] == "3900 FALCON ST"]
    assert len(meters) >= 3
    assert distance_m(got["lon"], got["lat"], meters["lng"].to_numpy(), meters["lat"].to_numpy()).max() < 100


def test_street_and_zip_levels_say_why(geocoder):
    street = one(geocoder, "Gardena Ave")
    assert street["match"] == "street" and street["reason"] == "no house number" and street["score"] == 0.5
    assert one(geocoder, "Clairemont Dr")["score"] == 0.4  # kilometres long: its middle says less
    far = one(geocoder, "99999 Gardena Ave", "92110")
    assert far["match"] == "street" and "not in the reference" in far["reason"] and far["score"] < 0.5
    zip_only = one(geocoder, "1 Nowhere Rd", "92110")
    assert zip_only["match"] == "zip" and zip_only["score"] == 0.3 and "NOWHERE RD" in zip_only["reason"]
    assert one(geocoder, "1 Nowhere Rd")["match"] == "none"
    apart = one(geocoder, "Clairemont Dr and Balboa Ave")  # both known, their crossing is not in the centerlines
    assert apart["match"] == "street" and apart["score"] == 0.32 and "do not meet" in apart["reason"]  # 0.4 x 0.8


def test_fuzzy_and_partial_names_match_but_score_lower(geocoder):
    typo = one(geocoder, "4608 Gardna Avenue")
    assert typo["match"] == "exact" and "fuzzy_street" in typo["flags"] and 0.8 < typo["score"] < 0.95
    bare = one(geocoder, "4608 Gardena")
    assert bare["match"] == "exact" and bare["flags"] == "street_type_differs" and bare["score"] == 0.95
    other = one(geocoder, "200 WALNUT ST")  # only W WALNUT AV exists: another street, never matched by number
    assert other["match"] == "street" and "street_differs" in other["flags"]


def test_a_south_bay_street_needs_its_zip(geocoder):
    # Downtown's 15th Street is not in the reference; South Bay's "15TH (SB) ST" is, and only its ZIP finds it.
    assert one(geocoder, "800 15th St")["match"] == "none"
    got = one(geocoder, "800 15th St, San Diego CA 92154")
    assert got["match"] == "hundred_block" and got["matched"].endswith("92154")


# ---- accuracy floors (the targets) -------------------------------------------------------------------------

def test_held_back_address_points_land_within_100_m(files):
    from enrich_service.geocode.evaluate import held_back_points

    e = held_back_points(files)
    assert len(e.addresses) > 600 and e.covered.sum() > 450
    assert e.covered_within >= 0.95, e.table()
    assert e.match_rate > 0.95
    interpolated = e.error_m[e.result.match == "interpolated"]
    assert np.median(interpolated) < 30, e.table()


def test_exact_matches_never_lie_farther_than_250_m(geocoder, files):
    from enrich_service.geocode.evaluate import reference_points

    e = reference_points(geocoder, files)
    assert (e.result.match == "exact").mean() > 0.99
    assert e.exact_max_m <= 250, e.table()


def test_parking_meter_blocks_and_transit_intersections(geocoder):
    from enrich_service.geocode.evaluate import parking_meters, transit_intersections

    meters = parking_meters(geocoder, METERS)
    assert meters.covered.sum() >= 25 and meters.covered_within >= 0.95, meters.table()
    stops = transit_intersections(geocoder, STOPS)
    assert stops.covered.sum() >= 700 and stops.covered_within >= 0.95, stops.table()
    # Uncovered addresses still get the best lower level, and say so.
    lower = np.isin(meters.result.match, ["street", "zip"])
    assert lower.sum() > 1000 and all(i in meters.result.reason for i in np.flatnonzero(lower)[:200])


# ---- cache and reference index -----------------------------------------------------------------------------------

def test_result_cache_answers_repeats_and_is_dropped_when_the_reference_changes(geocoder):
    from enrich_service.geocode.cache import cache_for
    from enrich_service.geocode.matcher import Geocoder

    cache = cache_for("digest-a")
    cached = Geocoder(geocoder.ref, cache)
    first = cached.geocode(["4608 Gardena Avenue", "4712 Mt St Helens Dr"])
    again = cached.geocode(["4608 Gardena Avenue", "4712 Mt St Helens Dr"])
    assert cache.hits == 2 and cache.misses == 2 and np.array_equal(first.lon, again.lon)
    assert cache_for("digest-a") is cache
    fresh = cache_for("digest-b")  # a new reference sha256
    assert fresh is not cache and len(fresh) == 0


def test_reference_index_is_cached_on_disk_by_sha256(files, tmp_path):
    from enrich_service.geocode.reference import load_reference_cached

    built = load_reference_cached(files, tmp_path)
    [path] = list((tmp_path / "geocoder").glob("*.pickle"))
    assert path.name.startswith(files.sha256[:32])
    again = load_reference_cached(files, tmp_path)
    assert again.street_id == built.street_id and len(again.intersections) == len(built.intersections)
    # the lines come back from their WKB array (Reference.__getstate__) as the same lines, of the same type
    assert shapely.equals_exact(again.seg_geom, built.seg_geom, tolerance=0).all()
    assert (shapely.get_type_id(again.seg_geom) == shapely.get_type_id(built.seg_geom)).all()
    path.write_bytes(b"not a pickle")
    assert load_reference_cached(files, tmp_path).street_id == built.street_id  # rebuilt, not fatal


@needs("data")
def test_zip_shares_inside_the_city_are_cached_on_disk_and_read_back_the_same(tmp_path):
    from enrich_service.geocode import CITY_LIMITS, ZIP_LAYER, inside_share
    from enrich_service.layers.store import LayerStore
    from enrich_service.settings import Settings

    store = LayerStore.load(Settings().manifest, BOUNDARIES, tmp_path)
    zips, city = store.versions[ZIP_LAYER][-1], store.versions[CITY_LIMITS][-1]
    computed = inside_share(zips, city)
    assert inside_share(zips, city, tmp_path).tolist() == computed.tolist()  # built, then written
    [path] = (tmp_path / "zip-share").glob("*.pickle")
    assert inside_share(zips, city, tmp_path).tolist() == computed.tolist()  # read back
    share = dict(zip(map(str, zips.keys), computed.tolist()))
    assert share["92025"] < 0.5 < share["92101"]  # Escondido's mostly outside, downtown's inside


def test_no_reference_configured_means_no_geocoder(tmp_path, store):
    from enrich_service.errors import NotReady
    from enrich_service.geocode import build_geocoder
    from enrich_service.geocode.join import geocoder_of
    from enrich_service.index import ServiceIndex
    from enrich_service.settings import Settings

    assert build_geocoder(Settings(reference_dir=None, cache_dir=tmp_path), store) is None
    index = ServiceIndex(store=store, engine=None, built_at=None, build_seconds=0, geocoder=None)
    with pytest.raises(NotReady, match="ENRICH_REFERENCE_DIR"):
        geocoder_of(index)


# ---- PostGIS -------------------------------------------------------------------------------------------------------

def test_reference_loads_into_postgis_with_the_same_street_keys(pg_dsn, files):
    from enrich_service.geocode.postgis import load_reference_postgis

    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA IF NOT EXISTS geocode_test")
        load_reference_postgis(conn, files, schema="geocode_test")
        # A user's view on a reference table survives a reload: the tables are refilled in place, never dropped.
        conn.execute("CREATE VIEW geocode_test.my_points AS SELECT street_key, number FROM "
                     "geocode_test.geocode_address_points")
        tables = load_reference_postgis(conn, files, schema="geocode_test")  # idempotent
        assert tables == ["geocode_address_points", "geocode_street_segments"]
        assert conn.execute("SELECT count(*) FROM geocode_test.my_points").fetchone()[0] == 7285
        counts = conn.execute("SELECT name, rows, sha256 FROM geocode_test.geocode_reference ORDER BY name").fetchall()
        assert counts == [("address_points", 7285, files.points.sha256), ("street_segments", 20497,
                                                                          files.segments.sha256)]
        x, y = conn.execute("""SELECT ST_X(geom), ST_Y(geom) FROM geocode_test.geocode_address_points
            WHERE street_key = 'GARDENA AVE' AND number = 4608""").fetchone()
        assert (x, y) == pytest.approx(GARDENA)
        # The spelled-out points and the abbreviated centerlines share keys: a SQL join finds the segment.
        near = conn.execute("""SELECT min(ST_Distance(p.geom::geography, s.geom::geography))
            FROM geocode_test.geocode_address_points p JOIN geocode_test.geocode_street_segments s
              ON s.street_key = p.street_key AND p.number BETWEEN s.llowaddr AND s.lhighaddr
            WHERE p.street_key = 'MT ACADIA BLVD'""").fetchone()[0]
        assert near is not None and near < 60
        conn.execute("DROP SCHEMA geocode_test CASCADE")


# ---- over HTTP -----------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
@needs("data")
def client():
    env = {"ENRICH_BOUNDARY_DIR": str(BOUNDARIES), "ENRICH_REFERENCE_DIR": str(ADDRESS), "ENRICH_MAX_BATCH": "1000",
           "ENRICH_API_KEYS": "test-admin-key"}
    with ready_app(env) as c:
        yield c


def join(client, records, **options):
    return client.post("/v1/geocode-join", content=orjson.dumps({"records": records, **options}),
                       headers={"content-type": "application/json"})


def test_get_geocode_tags_the_address(client, files):
    r = client.get("/v1/geocode", params={"address": "4608 Gardena Avenue, San Diego, CA 92110"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["match"], body["lon"], body["lat"]) == ("exact", *GARDENA)
    pip = client.get("/v1/pip", params={"lon": GARDENA[0], "lat": GARDENA[1]}).json()
    assert [body[k] for k in ("council_district", "neighborhood", "zip")] == \
        [pip[k] for k in ("council_district", "neighborhood", "zip")] == ["2", "Clairemont Mesa", "92110"]
    assert r.headers["x-enrich-geocode-reference"] == files.sha256
    ref = client.get("/v1/layers").json()["geocode_reference"]
    assert ref["sha256"] == files.sha256 and ref["address_points"]["sha256_matches_manifest"]
    assert client.get("/readyz").json()["versions"]["geocode_reference"][0]["sha256"] == files.sha256


def test_one_bad_record_never_fails_the_batch(client):
    records = [{"id": 1, "address": "4608 Gardena Avenue", "zip": "92110"},
               {"id": 2, "address": ""}, {"id": 3, "address": "x" * 5000}, {"id": 4, "address": 12345},
               {"id": 5, "address": ["4608 Gardena Avenue"]}, {"id": 6, "address": None},
               {"id": 7, "address": "n/a"}, {"id": 8, "address": "PO Box 1234"}, "not a record",
               {"id": 10, "address": "Voltaire St & Sunset Cliffs Bl", "city": {"name": "San Diego"}, "zip": [1]}]
    r = join(client, records, layers=["council_district"])
    assert r.status_code == 200, r.text
    rows = r.json()["results"]
    assert [row["id"] for row in rows] == [1, 2, 3, 4, 5, 6, 7, 8, None, 10]
    assert [row["match"] for row in rows] == ["exact"] + ["none"] * 8 + ["intersection"]
    assert [row["reason"] for row in rows[1:9]] == [
        "address is empty", "address is longer than 300 characters", "address must be text, got int",
        "address must be text, got list", "address is missing", "not an address: 'n/a'",
        "a PO box has no street location", "address is missing"]
    assert rows[8]["error"] == "records: each record must be an object with id and address"
    assert rows[9]["error"] == "city: must be text, got dict"  # reported, and the address still geocoded
    assert rows[0]["council_district"] == "2" and rows[1]["council_district"] is None
    assert all(row["lon"] is None for row in rows[1:9])


def test_flags_for_the_known_bad_cases(client):
    records = [{"id": "centroid", "address": "4608 Gardena Avenue", "lon": -117.1610838, "lat": 32.715738},
               {"id": "zero", "address": "4608 Gardena Avenue", "lon": 0, "lat": 0},
               {"id": "swapped", "address": "4608 Gardena Avenue", "lon": 32.7786184, "lat": -117.2013488},
               {"id": "outside", "address": "1 Nowhere Rd", "zip": "91932"},  # Imperial Beach: not the city
               {"id": "city", "address": "4608 Gardena Avenue", "city": "Chula Vista"}]
    rows = join(client, records).json()["results"]
    assert [row["flags"] for row in rows] == ["input_city_centroid", "input_zero_coordinates",
                                              "input_swapped_lonlat", "other_city,outside_city_limits",
                                              "other_city"]
    # Imperial Beach's ZIP names another city: no San Diego layer says anything about it.
    assert rows[3]["match"] == "zip" and rows[3]["zip"] is None and rows[3]["zip_rule"] == "other_city"
    assert rows[4]["match"] == "exact" and rows[4]["score"] == 0.5  # a San Diego street for a Chula Vista address


def test_records_with_a_date_get_the_layer_versions_in_force_that_day(client):
    # 4712 Mt St Helens Dr moved from council district 6 (2011 lines) to 2 (2021 lines).
    records = [{"id": d, "address": "4712 Mt St Helens Dr", "date": d} for d in ("2015-06-01", "2023-01-01")]
    records += [{"id": "early", "address": "4712 Mt St Helens Dr", "date": "1990-01-01"},
                {"id": "junk", "address": "4712 Mt St Helens Dr", "date": "someday"}]
    rows = join(client, records, layers=["council_district"]).json()["results"]
    assert [(r["council_district"], r["council_district_version"]) for r in rows] == \
        [("6", "2011"), ("2", "2021"), (None, None), (None, None)]
    assert all(r["match"] == "interpolated" for r in rows)  # still geocoded
    assert rows[2]["error"].startswith("date: 1990-01-01 is before the first version of council_district")
    assert rows[3]["error"] == "date: 'someday' is not a date (YYYY-MM-DD)"
    csv = b"id,address,permit_date\n1,4712 Mt St Helens Dr,2015-06-01\n"
    r = client.post("/v1/geocode-join?layers=council_district&date_col=permit_date", content=csv,
                    headers={"content-type": "text/csv"})
    out = pacsv.read_csv(io.BytesIO(r.content))
    assert out.column("council_district").to_pylist() == [6] and out.column("council_district_version").to_pylist() \
        == [2011]


def test_request_errors_name_the_field(client):
    assert join(client, []).json()["field"] == "records"
    r = client.post("/v1/geocode-join", content=b'{"layers": ["zip"]}', headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["field"] == "records"
    r = client.post("/v1/geocode-join", content=b'{"records": "4608 Gardena"}')
    assert r.status_code == 422 and r.json()["field"] == "records"
    r = join(client, [{"address": "4608 Gardena Avenue"}], layers=["nope"])
    assert r.status_code == 422 and r.json()["field"] == "layers"
    r = join(client, [{"address": "4608 Gardena Avenue"}], as_of="yesterday")
    assert r.status_code == 422 and r.json()["field"] == "as_of"
    r = join(client, [{"address": "x"}] * 1001)
    assert r.status_code == 413
    assert client.get("/v1/geocode").status_code == 422
    r = client.post("/v1/geocode-join", content=b"id,street\n1,x\n", headers={"content-type": "text/csv"})
    assert r.status_code == 422 and r.json()["field"] == "address"
    assert client.post("/v1/geocode-join", content=b"{", headers={"content-type": "application/json"}).status_code \
        == 400


def test_csv_arrow_and_ndjson_transports(client):
    csv = b"id,address,zip\n1,4608 Gardena Avenue,92110\n2,4712 Mt St Helens Dr,\n3,,\n"
    r = client.post("/v1/geocode-join?layers=zip", content=csv, headers={"content-type": "text/csv"})
    assert r.status_code == 200, r.text
    out = pacsv.read_csv(io.BytesIO(r.content))
    assert out.column("match").to_pylist() == ["exact", "interpolated", "none"]
    # The caller's own zip column is never replaced: the zip layer's answer gets the prefix.
    assert out.column("zip").to_pylist() == [92110, None, None]
    assert out.column("enrich_zip").to_pylist()[:2] == [92110, 92117]
    assert "enrich_zip_rule" in out.column_names and "zip_rule" not in out.column_names
    r = client.post("/v1/geocode-join?layers=zip&prefix=sd_", content=csv, headers={"content-type": "text/csv"})
    out = pacsv.read_csv(io.BytesIO(r.content))
    assert out.column_names[:3] == ["id", "address", "zip"] and out.column("sd_zip").to_pylist()[:2] == [92110, 92117]
    assert client.post("/v1/geocode-join?prefix=a-b", content=csv, headers={"content-type": "text/csv"}).json()[
        "field"] == "prefix"

    table = pa.table({"rid": ["a", "b"], "addr": ["4608 Gardena Avenue", "Voltaire St & Sunset Cliffs Bl"]})
    sink = pa.BufferOutputStream()
    with ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    r = client.post("/v1/geocode-join?id_col=rid&address_col=addr&layers=council_district",
                    content=sink.getvalue().to_pybytes(), headers={"content-type": ARROW})
    assert r.status_code == 200, r.text
    out = ipc.open_stream(r.content).read_all()
    assert out.column("rid").to_pylist() == ["a", "b"]
    assert out.column("match").to_pylist() == ["exact", "intersection"]
    assert out.column("council_district").to_pylist() == ["2", "2"]

    lines = b'{"id": 1, "address": "4608 Gardena Avenue"}\nnot json\n{"id": 3, "address": ""}\n'
    r = client.post("/v1/geocode-join?layers=zip", content=lines, headers={"content-type": "application/x-ndjson"})
    rows = [orjson.loads(line) for line in r.content.splitlines()]
    assert [row["match"] for row in rows] == ["exact", "none", "none"]
    assert rows[1]["error"].startswith("body: line 2 is not valid JSON")


def test_geocodes_are_counted_by_level(client):
    join(client, [{"address": "4608 Gardena Avenue"}, {"address": ""}])
    metrics = client.get("/metrics").text
    assert 'enrich_geocode_matches_total{level="exact"}' in metrics
    assert 'enrich_geocode_matches_total{level="none"}' in metrics


@pytest.mark.data
def test_a_changed_reference_reloads_with_the_layers_and_empties_the_cache(tmp_path):
    """Reload swaps layers and reference together; a new reference sha256 means a new cache; a broken reference
    file is refused and the old reference keeps answering."""
    import shutil

    for name in ("sd_osm_sangis_address_points_sample.csv", "sd_city_street_segments_addr_ranges.csv"):
        shutil.copy(ADDRESS / name, tmp_path / name)
    points = tmp_path / "sd_osm_sangis_address_points_sample.csv"
    env = {"ENRICH_BOUNDARY_DIR": str(BOUNDARIES), "ENRICH_REFERENCE_DIR": str(tmp_path),
           "ENRICH_API_KEYS": "test-admin-key", "ENRICH_CACHE_DIR": str(cache_dir_sharing_layers(tmp_path / "cache"))}
    admin = {"X-API-Key": "test-admin-key"}
    with ready_app(env) as c:
        ask = lambda: c.get("/v1/geocode", params={"address": "4608 Gardena Avenue"})  # noqa: E731
        assert (ask().json()["lon"], ask().json()["lat"]) == GARDENA
        before = c.get("/v1/layers").json()["geocode_reference"]
        assert before["cache"]["hits"] >= 1 and before["address_points"]["sha256_matches_manifest"]

        # The city moves the point (a corrected address point): new file, new sha256.
        points.write_text(points.read_text().replace("32.7786184,-117.2013488", "32.7790000,-117.2013488"))
        r = c.post("/v1/admin/reload", headers=admin)
        assert r.status_code == 200, r.text
        assert r.json()["versions"]["geocode_reference"][0]["sha256"] != before["sha256"]
        assert ask().json()["lat"] == 32.779  # not the cached answer of the old reference
        after = c.get("/v1/layers").json()["geocode_reference"]
        assert after["cache"]["misses"] == 1 and after["cache"]["hits"] == 0
        assert not after["address_points"]["sha256_matches_manifest"]  # reported, as for a local layer file

        points.write_text("housenumber,street\n1,Main Street\n")  # lacks postcode, lat, lon
        r = c.post("/v1/admin/reload", headers=admin)
        assert r.status_code == 409 and "address points need columns" in r.json()["detail"]
        assert c.get("/v1/layers").json()["geocode_reference"]["sha256"] == after["sha256"]
        assert ask().json()["lat"] == 32.779


def test_no_text_crashes_the_parser_or_the_matcher(geocoder):
    """Arbitrary text, and text built from address words and separators, always comes back as an answer."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from enrich_service.geocode.normalize import parse

    words = st.sampled_from(["4608", "1/2", "Gardena", "Ave", "N", "St", "&", "and", "btw", "between", "#", "Apt",
                             ",", "92110", "San", "Diego", "CA", "PO", "Box", "Fifth", "Twenty", "-", "(SB)", "MT",
                             "@", "/", "1000", "at", "Voltaire", "Ebers", "0", "", " "])
    texts = st.one_of(st.text(max_size=80), st.lists(words, max_size=12).map(" ".join))

    memo: dict = {}  # shared across examples, as across a batch

    @settings(max_examples=400, deadline=None, database=None)
    @given(texts, st.one_of(st.none(), st.text(max_size=12), st.integers()))
    def check(text, zip_code):
        p = parse(text, None, zip_code)
        assert p.kind in ("address", "intersection", "between", "street", "zip", "none")
        assert parse(text, None, zip_code, memo).key() == p.key()  # the batch shortcut reads it the same
        r = geocoder.geocode([text], [zip_code], use_cache=False)
        assert r.match[0] in ("exact", "interpolated", "intersection", "hundred_block", "street", "zip", "none")
        assert 0.0 <= r.score[0] <= 1.0 and (r.match[0] == "none") == np.isnan(r.lon[0])

    check()


def test_a_huge_house_number_answers_its_row_on_every_route(client):
    huge = ["99999999999999999999 Garnet Ave", "18446744073709551616 Gardena Avenue, 92110",
            "99999999999999999XX Garnet Ave"]
    for text in huge:
        r = client.get("/v1/geocode", params={"address": text})
        assert r.status_code == 200 and r.json()["match"] == "street" and r.json()["reason"], (text, r.text)
    csv = ("id,address\n" + "".join(f'{i},"{a}"\n' for i, a in enumerate(huge + ["4608 Gardena Avenue"]))).encode()
    r = client.post("/v1/geocode-join?layers=zip", content=csv, headers={"content-type": "text/csv"})
    assert r.status_code == 200, r.text
    assert pacsv.read_csv(io.BytesIO(r.content)).column("match").to_pylist() == ["street"] * 3 + ["exact"]
    lines = b"".join(orjson.dumps({"id": i, "address": a}) + b"\n"
                     for i, a in enumerate(huge + ["4608 Gardena Avenue"]))
    r = client.post("/v1/geocode-join?layers=zip", content=lines, headers={"content-type": "application/x-ndjson"})
    assert [orjson.loads(line)["match"] for line in r.content.splitlines()] == ["street"] * 3 + ["exact"]
