"""`enrich-service enrich`: every format in and out on real rows, CSV dialects, geocoding, --url, stdout, one-line
errors naming the option, and a file of millions of rows in bounded memory."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from .conftest import ADDRESS, BOUNDARIES, DATA, POINTS, settings_env

STOPS = POINTS / "transit_stops_datasd.geojson"
METERS = POINTS / "treas_parking_meters_loc_datasd.csv"
COLLISIONS = DATA / "datasets" / "pd_collisions_2017_datasd.csv"
LAYERS = "council_district,zip"
ENV = {"ENRICH_BOUNDARY_DIR": str(BOUNDARIES), "ENRICH_REFERENCE_DIR": str(ADDRESS)}


@pytest.fixture
def run(index, monkeypatch, capsys):
    """main() in process on the module's index (built once); returns (exit code, stderr)."""
    from enrich_service import cli

    monkeypatch.setattr("enrich_service.index.build_index", lambda settings: index)

    def call(*argv: str) -> tuple[int, str]:
        with settings_env(ENV):
            code = cli.main([str(a) for a in argv])
        return code, capsys.readouterr().err

    return call


@pytest.fixture(scope="module")
def stops():
    """600 real transit stops (inside and outside the city, a few with the same coordinates) as a GeoDataFrame."""
    import geopandas as gpd

    gdf = gpd.read_file(STOPS)
    return gdf.iloc[::10].reset_index(drop=True)


def read_any(path):
    """A written file back as (attribute table, geometry x, y or None, crs or None)."""
    import pyogrio

    if path.suffix == ".csv":
        return pacsv.read_csv(path, convert_options=pacsv.ConvertOptions(strings_can_be_null=True)), None, None, None
    if path.suffix == ".parquet":
        import json

        import shapely

        table = pq.read_table(path)
        geo = json.loads((table.schema.metadata or {}).get(b"geo", b"null"))
        if not geo:
            return table, None, None, None
        name = geo["primary_column"]
        geoms = shapely.from_wkb(table.column(name).to_numpy(zero_copy_only=False))
        crs = geo["columns"][name].get("crs")
        return table.drop_columns([name]), shapely.get_x(geoms), shapely.get_y(geoms), crs and crs["id"]["code"]
    meta, table = pyogrio.read_arrow(path)
    import shapely

    geoms = shapely.from_wkb(table.column(meta["geometry_name"] or "wkb_geometry").to_numpy(zero_copy_only=False))
    return table, shapely.get_x(geoms), shapely.get_y(geoms), meta["crs"]


def districts(table: pa.Table, key: str = "stop_uid") -> dict:
    col = table.column("council_district").cast(pa.string()).to_pylist()
    return dict(zip(table.column(key).cast(pa.string()).to_pylist(), col))


@pytest.mark.parametrize("out_ext", [".csv", ".parquet", ".geojson", ".gpkg"])
@pytest.mark.parametrize("in_ext", [".geojson", ".gpkg", ".shp", ".parquet", ".csv"])
def test_every_format_in_and_out_gives_the_same_tags(run, stops, truth, tmp_path, in_ext, out_ext):
    """Real stops written in each format (the GeoPackage in State Plane feet, EPSG:2230), tagged, written in each
    format: the same district for every stop as the engine gives the original coordinates, and the geometry kept."""
    src = tmp_path / f"stops{in_ext}"
    gdf = stops.to_crs("EPSG:2230") if in_ext == ".gpkg" else stops
    if in_ext == ".parquet":
        gdf.to_parquet(src)  # GeoParquet
    elif in_ext == ".csv":
        gdf.drop(columns="geometry").to_csv(src, index=False)  # lng/lat columns, as the portal publishes them
    else:
        gdf.to_file(src)
    dest = tmp_path / f"out{out_ext}"
    args = ["enrich", src, "--out", dest, "--layers", LAYERS, "--chunk-rows", 250]
    if in_ext == ".csv":
        args += ["--lon-col", "lng", "--lat-col", "lat"]
    code, err = run(*args)
    assert code == 0, err
    assert f"{len(stops):,} rows -> {dest}" in err

    table, x, y, crs = read_any(dest)
    assert table.num_rows == len(stops)
    got = districts(table)
    assert got == truth
    assert sum(v is not None for v in got.values()) > 200 and sum(v is None for v in got.values()) > 100
    if x is not None:  # the geometry: the file's own (its CRS kept), or points from the CSV's columns
        want = gdf.geometry if in_ext != ".csv" else None
        if out_ext == ".geojson":  # RFC 7946: lon/lat whatever the input's CRS (#19)
            want = None if want is None else stops.geometry
        if want is not None:
            assert np.allclose(x, want.x.to_numpy(), atol=1e-6) and np.allclose(y, want.y.to_numpy(), atol=1e-6)
            assert str(crs).endswith("2230") == (in_ext == ".gpkg" and out_ext != ".geojson")
        else:
            assert np.allclose(x, stops.lng.to_numpy()) and np.allclose(y, stops.lat.to_numpy())
    elif out_ext == ".csv" and in_ext != ".csv":
        assert table.column_names[-1] == "geometry"  # the geometry as WKT in a CSV
        assert table.column("geometry")[0].as_py().startswith("POINT (")


@pytest.fixture(scope="module")
def truth(stops, engine) -> dict:
    """Each stop's district from its own lng/lat, straight from the engine."""
    x, y = stops.lng.to_numpy(dtype=float), stops.lat.to_numpy(dtype=float)
    tags = engine.tag(x, y, np.isfinite(x) & np.isfinite(y), ["council_district"])
    return dict(zip(stops.stop_uid, tags.layers["council_district"].keys().tolist()))


def test_csv_dialects_and_encodings_give_the_same_answer(run, tmp_path):
    """Excel's ways of writing a CSV: semicolons in windows-1252, tabs, a UTF-8 byte order mark."""
    rows = pacsv.read_csv(METERS).slice(0, 400)
    text = "zone;sub_area;lat;lng;note\n" + "".join(
        f"{z};{s};{la};{lo};café\n" for z, s, la, lo in zip(*(rows.column(c).to_pylist()
                                                              for c in ("zone", "sub_area", "lat", "lng"))))
    (tmp_path / "semi.csv").write_bytes(text.encode("windows-1252"))
    (tmp_path / "tabs.tsv").write_bytes(text.replace(";", "\t").encode())
    (tmp_path / "bom.csv").write_bytes(b"\xef\xbb\xbf" + text.replace(";", ",").encode())
    answers = []
    for name, extra in (("semi.csv", ["--encoding", "windows-1252"]), ("tabs.tsv", []), ("bom.csv", [])):
        code, err = run("enrich", tmp_path / name, "--lon-col", "lng", "--out", tmp_path / f"{name}.csv",
                        "--layers", LAYERS, *extra)
        assert code == 0, err
        out = pacsv.read_csv(tmp_path / f"{name}.csv")
        assert out.column_names[:5] == ["zone", "sub_area", "lat", "lng", "note"]
        assert set(out.column("note").to_pylist()) == {"café"}
        answers.append(out.column("council_district").to_pylist())
    assert answers[0] == answers[1] == answers[2] and answers[0].count(3) > 300
    # Without --encoding the windows-1252 file is refused in one line that says which option to set.
    code, err = run("enrich", tmp_path / "semi.csv", "--lon-col", "lng", "--out", tmp_path / "x.csv")
    assert code == 1 and "--encoding" in err and len(err.strip().splitlines()) == 1


def test_an_address_file_is_geocoded_and_summed_up(run, tmp_path):
    """Real police collisions (address parts in four columns): geocoded in process, written as a GeoPackage of
    the points found, and summed up by district and match level."""
    src = tmp_path / "collisions.csv"
    src.write_bytes(b"".join(COLLISIONS.open("rb").readlines()[:301]))
    dest = tmp_path / "collisions.gpkg"
    code, err = run("enrich", src, "--address-col", "street_no,street_dir,street_name,street_type", "--out", dest,
                    "--layers", "council_district")
    assert code == 0, err
    assert "300 rows -> " in err and "match levels: " in err and "council_district (2021): 1 " in err
    table, x, _, crs = read_any(dest)
    assert table.num_rows == 300 and crs == "EPSG:4326"
    match = np.array(table.column("match").to_pylist())
    assert {"hundred_block", "street", "none"} <= set(match)
    assert np.isnan(x[match == "none"]).all() and np.isfinite(x[match != "none"]).all()
    assert table.column("street_name").to_pylist()[0] == "VALERIO"  # the file's columns, untouched


def test_errors_are_one_line_naming_the_option(run, tmp_path):
    polygons = BOUNDARIES / "Community_Plan_SD_sangis_epsg2230.zip"
    cases = [
        (["enrich", METERS, "--lon-col", "nope", "--out", tmp_path / "a.csv"], "--lon-col"),
        (["enrich", METERS, "--lon-col", "lng", "--layers", "wards", "--out", tmp_path / "a.csv"], "--layers"),
        (["enrich", METERS, "--lon-col", "lng", "--out", tmp_path / "a.xlsx"], "--out-format"),
        (["enrich", METERS, "--lon-col", "lng", "--crs", "EPSG:1", "--out", tmp_path / "a.csv"], "--crs"),
        (["enrich", METERS, "--lon-col", "lng", "--as-of", "2001-01-01", "--out", tmp_path / "a.csv"], "--as-of"),
        (["enrich", METERS, "--lon-col", "lng", "--out", tmp_path / "nowhere" / "a.csv"], "--out"),
        (["enrich", tmp_path / "meters.dat", "--out", tmp_path / "a.csv"], "--format"),
        (["enrich", polygons, "--out", tmp_path / "a.csv"], "--lon-col"),
        (["enrich", METERS, "--address-col", "address", "--out", tmp_path / "a.csv"], "--address-col"),
        (["enrich", METERS, "--lon-col", "lng", "--url", "http://127.0.0.1:9", "--retries", "0",
          "--out", tmp_path / "a.csv"], "--url"),
    ]
    (tmp_path / "meters.dat").write_bytes(METERS.read_bytes()[:1000])
    for argv, option in cases:
        code, err = run(*argv)
        assert code == 1, argv
        assert err.startswith("enrich-service: error: ") and len(err.strip().splitlines()) == 1, err
        assert option in err and "Traceback" not in err, err
    assert not (tmp_path / "a.csv").exists()  # nothing half-written


def test_against_a_running_service_and_to_stdout(live_service, tmp_path):
    """--url gives the file the in-process run gives; `--out -` writes the data to stdout, the summary to stderr."""
    src = tmp_path / "meters.csv"
    src.write_bytes(b"".join(METERS.open("rb").readlines()[:2001]))
    env = {**os.environ, **ENV}
    local = subprocess.run([sys.executable, "-m", "enrich_service.cli", "enrich", src, "--lon-col", "lng",
                            "--layers", LAYERS, "--out", "-"], env=env, capture_output=True, timeout=300)
    assert local.returncode == 0, local.stderr
    remote = subprocess.run([sys.executable, "-m", "enrich_service.cli", "enrich", src, "--lon-col", "lng",
                             "--layers", LAYERS, "--out", tmp_path / "remote.csv", "--url", live_service,
                             "--chunk-rows", "700"], env=env, capture_output=True, timeout=300)
    assert remote.returncode == 0, remote.stderr
    assert (tmp_path / "remote.csv").read_bytes() == local.stdout
    assert local.stdout.startswith(b"zone,area,sub_area,") and b"2,000 rows -> stdout" in local.stderr
    assert b"council_district (2021): " in remote.stderr


def test_millions_of_rows_in_bounded_memory(tmp_path):
    """3M generated rows (real meters' coordinates, jittered) through the CLI in a child process: every row
    written, and the child's peak RSS no more than a bounded margin above the same CLI on 10,000 rows. Loading the
    file whole (the CLI before issue 19) peaked 1.6 GB above that; the margin here is 350 MB (docs/cli.md)."""
    meters = pacsv.read_csv(METERS)
    rng = np.random.default_rng(19)
    env = {**os.environ, **ENV, "ENRICH_REFERENCE_DIR": ""}

    def generate(n: int, path):
        i = rng.integers(0, meters.num_rows, n)
        pacsv.write_csv(pa.table({
            "id": np.arange(n), "pole": meters.column("pole").take(i), "sub_area": meters.column("sub_area").take(i),
            "lat": np.round(meters.column("lat").to_numpy()[i] + rng.normal(0, 0.002, n), 6),
            "lng": np.round(meters.column("lng").to_numpy()[i] + rng.normal(0, 0.002, n), 6)}), path)

    def peak_rss_mb(src, dest) -> tuple[float, str]:
        proc = subprocess.Popen([sys.executable, "-m", "enrich_service.cli", "enrich", src, "--lon-col", "lng",
                                 "--out", dest, "--layers", LAYERS], env=env, stderr=subprocess.PIPE)
        err = proc.stderr.read().decode()
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own resource usage
        proc.returncode = os.waitstatus_to_exitcode(status)
        assert proc.returncode == 0, err
        return usage.ru_maxrss / 1024, err

    generate(10_000, tmp_path / "small.csv")
    generate(3_000_000, tmp_path / "big.csv")
    small, _ = peak_rss_mb(tmp_path / "small.csv", tmp_path / "small.parquet")
    big, err = peak_rss_mb(tmp_path / "big.csv", tmp_path / "big.parquet")
    assert "3,000,000 rows -> " in err
    assert pq.ParquetFile(tmp_path / "big.parquet").metadata.num_rows == 3_000_000
    out = pq.read_table(tmp_path / "big.parquet", columns=["id", "council_district"])
    assert out.column("id").to_pylist()[-3:] == ["2999997", "2999998", "2999999"]  # in order, to the end (as text)
    assert out.column("council_district").null_count < 100_000
    assert big - small < 350, (small, big)


def test_police_intersections_are_geocoded_with_the_cross_street(run, tmp_path):
    """The README's example: number 0 and a cross street is an intersection, the number a hundred block (#19)."""
    import pyarrow.compute as pc

    table = pacsv.read_csv(COLLISIONS, convert_options=pacsv.ConvertOptions(column_types={"street_no": pa.string()}))
    crossing = table.filter(pc.equal(table.column("street_no"), "0")).slice(0, 60)
    blocks = table.filter(pc.not_equal(table.column("street_no"), "0")).slice(0, 40)
    src = tmp_path / "collisions.csv"
    pacsv.write_csv(pa.concat_tables([crossing, blocks]), src)
    dest = tmp_path / "c.parquet"
    code, err = run("enrich", src, "--address-col", "street_no,street_dir,street_name,street_type",
                    "--cross-street-col", "cross_st_dir,cross_st_name,cross_st_type", "--number-is-block",
                    "--layers", "council_district", "--out", dest)
    assert code == 0, err
    match = pq.read_table(dest).column("match").to_pylist()
    assert match[:60].count("intersection") >= 12, match[:60]  # the DAG: 294 of 1,026 (docs/geocode.md)
    assert match[60:].count("hundred_block") >= 8, match[60:]  # the DAG: 3,093 of 9,157


def test_the_date_column_is_read_as_the_service_reads_it(run, tmp_path):
    """A column named `date` is each row's date by default; --date-format reads US dates (#19)."""
    rows = pacsv.read_csv(METERS).slice(0, 50).select(["lng", "lat"])
    for text, extra in (("2016-06-01", []), ("06/01/2016", ["--date-format", "%m/%d/%Y"])):
        src = tmp_path / "dated.csv"
        pacsv.write_csv(rows.append_column("date", pa.array([text] * rows.num_rows)), src)
        dest = tmp_path / "dated_out.csv"
        code, err = run("enrich", src, "--lon-col", "lng", "--lat-col", "lat", "--layers", "council_district",
                        "--out", dest, *extra)
        assert code == 0, err
        out = pacsv.read_csv(dest)
        assert set(map(str, out.column("council_district_version").to_pylist())) == {"2011"}, err
        assert "council_district (2011)" in err  # the versions used, not the newest (#19)


def test_an_empty_point_is_a_row_error_not_a_crash(run, stops, tmp_path):
    import shapely

    gdf = stops.iloc[:20].copy()
    gdf.loc[3, "geometry"] = shapely.Point()
    src, dest = tmp_path / "stops.gpkg", tmp_path / "out.csv"
    gdf.to_file(src)
    code, err = run("enrich", src, "--out", dest, "--layers", "council_district")
    assert code == 0, err
    errors = pacsv.read_csv(dest, convert_options=pacsv.ConvertOptions(strings_can_be_null=True)).column("error")
    assert errors.null_count == 19 and "empty" in errors[3].as_py()


def test_coordinate_columns_are_found_by_their_usual_names(run, tmp_path):
    """lng/lat as the portal names them, without --lon-col, as the service finds them (#19)."""
    src = tmp_path / "meters.csv"
    pacsv.write_csv(pacsv.read_csv(METERS).slice(0, 100), src)
    code, err = run("enrich", src, "--out", tmp_path / "m.csv", "--layers", "council_district")
    assert code == 0, err
    assert pacsv.read_csv(tmp_path / "m.csv").column("council_district").null_count < 20


def test_stdout_hints_and_a_closed_pipe(tmp_path, stops):
    """GeoJSON to a closed pipe exits quietly as CSV does; a GeoPackage to stdout names --out-format (#19)."""
    src = tmp_path / "stops.geojson"
    stops.to_file(src)
    env = {**os.environ, **ENV}
    cmd = [sys.executable, "-m", "enrich_service.cli", "enrich", str(src), "--layers", "council_district",
           "--out", "-", "--chunk-rows", "50"]
    done = subprocess.run(" ".join(cmd) + " | head -c 100 > /dev/null; echo ${PIPESTATUS[0]}", shell=True,
                          executable="/bin/bash", env=env, capture_output=True, text=True, timeout=300)
    assert done.stdout.strip() == "141" and "error" not in done.stderr, done.stderr
    gpkg = tmp_path / "stops.gpkg"
    stops.iloc[:5].to_file(gpkg)
    done = subprocess.run([*cmd[:4], str(gpkg), "--out", "-"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1 and "--out-format" in done.stderr


def test_a_row_hint_names_the_option(run, tmp_path):
    """State Plane feet sent without a CRS: the row's error names --crs, the CLI's option (#19)."""
    import pyproj

    rows = pacsv.read_csv(METERS).slice(0, 20)
    x, y = pyproj.Transformer.from_crs("EPSG:4326", "EPSG:2230", always_xy=True).transform(
        rows.column("lng").to_numpy(), rows.column("lat").to_numpy())
    src = tmp_path / "feet.csv"
    pacsv.write_csv(pa.table({"lon": x, "lat": y}), src)
    code, err = run("enrich", src, "--out", tmp_path / "f.csv", "--layers", "council_district")
    assert code == 0, err
    errors = pacsv.read_csv(tmp_path / "f.csv").column("error").to_pylist()
    assert all("--crs EPSG:2230" in e and "crs=" not in e for e in errors), errors[:2]
