"""The page at / in a real browser (Debian's chromium driven by playwright), its features route, and /docs and
/redoc served without a CDN.

One service and one browser for the module. Screenshots of each step go to ENRICH_PAGE_SCREENSHOTS (default
.cache/page-screenshots); the folder is printed at the end of the run. Look at them.
"""

from __future__ import annotations

import csv
import io
import os
import shutil
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from .conftest import POINTS, REPO, settings_env, start_service

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
METERS = POINTS / "treas_parking_meters_loc_datasd.csv"
CITY_HALL = (-117.1627, 32.7167)
# Clairemont: District 6 on the 2011 lines, District 2 on the 2021 lines (checked against the API below too).
MOVED = (-117.18357, 32.82151)
SHOTS = Path(os.environ.get("ENRICH_PAGE_SCREENSHOTS", REPO / ".cache" / "page-screenshots"))


# ---- the service -------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def services(live_service):
    """The suite's live service (defaults: no base map), and a second one whose page has base tiles from a loopback
    tile server, started in the background once the first is ready (its layer and numba caches are warm then)
    while the other tests run: (url, tile server, a future of (process, url))."""
    from concurrent.futures import ThreadPoolExecutor

    missing = [p for p in ("leaflet/dist/leaflet.js", "papaparse/papaparse.min.js",
                           "swagger-ui-dist/swagger-ui-bundle.js", "redoc/bundles/redoc.standalone.js")
               if not (REPO / "node_modules" / p).is_file()]
    assert not missing, f"{missing} missing: run `bash scripts/install.sh` (npm ci from package-lock.json)"
    tiles = TileServer()
    with ThreadPoolExecutor(1) as pool:
        tiled = pool.submit(start_service, {"ENRICH_TILE_URL": tiles.url, "ENRICH_TILE_ATTRIBUTION": "Test tiles"})
        try:
            yield live_service, tiles, tiled
        finally:
            proc = tiled.result()[0]
            proc.terminate()
            proc.wait(timeout=30)
            tiles.close()


@pytest.fixture(scope="module")
def service(services):
    return services[0]


def test_features_route_serves_each_version_as_geojson(service):
    layers = httpx.get(f"{service}/v1/layers").json()["layers"]
    r = httpx.get(f"{service}/v1/layers/council_district/features", params={"version": "2011"})
    assert r.status_code == 200 and r.headers["content-type"] == "application/geo+json"
    doc = r.json()
    assert doc["type"] == "FeatureCollection" and doc["metadata"]["version"] == "2011"
    v2011 = layers["council_district"]["versions"][0]
    assert doc["metadata"]["sha256"] == v2011["sha256"] == r.headers["x-enrich-sha256"]
    assert len(doc["features"]) == v2011["features"]
    assert sorted({f["properties"]["key"] for f in doc["features"]}, key=int) == [str(d) for d in range(1, 10)]
    assert all(f["geometry"]["type"] in ("Polygon", "MultiPolygon") for f in doc["features"])

    # as_of picks the version in force that day; neither: the newest
    assert httpx.get(f"{service}/v1/layers/council_district/features",
                     params={"as_of": "2016-05-01"}).json()["metadata"]["version"] == "2011"
    newest = httpx.get(f"{service}/v1/layers/council_district/features").json()
    assert newest["metadata"]["version"] == "2021"
    assert newest["features"] != doc["features"]

    # simplified for display: smaller than the published shapes, and cached (ETag, gzip)
    full = httpx.get(f"{service}/v1/layers/zip/features", params={"simplify": 0})
    coarse = httpx.get(f"{service}/v1/layers/zip/features", params={"simplify": 50},
                       headers={"accept-encoding": "gzip"})
    assert coarse.headers["content-encoding"] == "gzip"
    assert len(coarse.content) < len(full.content) / 2  # httpx has decoded it: the simplified GeoJSON itself
    assert len(coarse.json()["features"]) == len(full.json()["features"]) == layers["zip"]["versions"][0]["features"]
    again = httpx.get(f"{service}/v1/layers/zip/features", params={"simplify": 50},
                      headers={"if-none-match": coarse.headers["etag"]})
    assert again.status_code == 304


def test_display_shapes_stay_within_the_tolerance_and_the_cache_is_bounded(store, monkeypatch):
    import numpy as np
    import orjson
    import shapely

    from enrich_service.layers import features

    version = store.versions["neighborhood"][-1]
    shown = features.display_features(version, 50)
    assert features.display_features(version, 50) is shown  # cached
    doc = orjson.loads(shown.body)
    simplified = shapely.from_geojson([orjson.dumps(f["geometry"]) for f in doc["features"]])
    assert [f["properties"]["key"] for f in doc["features"]] == list(version.keys)
    assert shapely.is_valid(simplified).all()
    # the display lines stay near the published ones: within the tolerance but for a few ring ends that GEOS's
    # topology-preserving simplifier moves a little further (76 m at 50 m for Encanto, measured)
    off = shapely.hausdorff_distance(simplified, version.geoms) * 111_320
    assert np.median(off) <= 50 and off.max() <= 100, off
    assert sum(shapely.get_num_coordinates(simplified)) < sum(shapely.get_num_coordinates(version.geoms)) / 3

    monkeypatch.setattr(features, "_CACHE_BYTES", 2 * shown.size)
    for tolerance in (51, 52, 53, 54):
        features.display_features(version, tolerance)
    assert sum(f.size for f in features._cache.values()) <= 2 * shown.size + 1000
    assert features.display_features(version, 50) is not shown  # evicted, built again


@pytest.mark.parametrize("params,path,field", [
    ({"version": "1999"}, "council_district", "version"),
    ({"as_of": "2001-01-01"}, "council_district", "as_of"),
    ({"as_of": "soon"}, "council_district", "as_of"),
    ({"version": "2011", "as_of": "2016-01-01"}, "council_district", "version"),
    ({"simplify": "-1"}, "council_district", "simplify"),
    ({}, "parcels", "layers"),
])
def test_features_route_names_the_bad_field(service, params, path, field):
    r = httpx.get(f"{service}/v1/layers/{path}/features", params=params)
    assert r.status_code == 422, r.text
    assert field in r.text


def test_docs_and_redoc_load_nothing_from_a_cdn(service):
    for path, asset in (("/docs", "/vendor/swagger-ui/swagger-ui-bundle.js"),
                        ("/redoc", "/vendor/redoc/redoc.standalone.js")):
        r = httpx.get(service + path)
        html = r.text
        assert "default-src 'self'" in r.headers["content-security-policy"]
        assert asset in html and "cdn." not in html and "fonts.googleapis" not in html, html
        assert httpx.get(service + asset).status_code == 200


def test_page_says_when_the_npm_packages_are_missing(tmp_path):
    from fastapi.testclient import TestClient

    from enrich_service.main import create_app

    with settings_env({"ENRICH_WEB_ASSETS_DIR": str(tmp_path), "ENRICH_TILE_URL": "https://t.example/{z}/{x}/{y}.png"}):
        client = TestClient(create_app())  # no lifespan: the layers are not needed for these
        r = client.get("/")
        assert r.status_code == 503 and "npm ci" in r.text and "leaflet/dist/leaflet.js" in r.text
        assert client.get("/docs").status_code == 503
        assert client.get("/page/config").json()["tile_url"] == "https://t.example/{z}/{x}/{y}.png"


# ---- the browser -------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def browser(request):
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} missing: `apt-get install chromium` (scripts/install.sh does)")
    from playwright.sync_api import sync_playwright

    shutil.rmtree(SHOTS, ignore_errors=True)
    SHOTS.mkdir(parents=True)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()
    capture = request.config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled():  # shown even when pytest captures output
        print(f"\ntest_page screenshots: {SHOTS}")


class Page:
    """One browser tab on the service, every request it makes recorded."""

    def __init__(self, browser, base: str, **context):
        self.base = base
        # Reduced motion: the page then moves the map without animating, so screenshots show where it settled.
        self.context = browser.new_context(accept_downloads=True, reduced_motion="reduce", **context)
        self.tab = self.context.new_page()
        self.requests: list[str] = []
        self.blocked: set[str] = set()  # refused by the page's Content-Security-Policy: never left the browser
        self.errors: list[str] = []
        self.tab.on("request", lambda r: self.requests.append(r.url))
        self.tab.on("requestfailed", lambda r: r.failure == "csp" and self.blocked.add(r.url))
        self.tab.on("pageerror", lambda e: self.errors.append(str(e)))

    def open(self, path: str = "/"):
        self.tab.goto(self.base + path)
        if path == "/":
            self.tab.wait_for_selector("body[data-ready=true]", timeout=30_000)

    def shot(self, name: str):
        self.tab.evaluate("() => new Promise(done => requestAnimationFrame(() => requestAnimationFrame(done)))")
        self.tab.screenshot(path=str(SHOTS / f"{name}.png"))

    def click_map(self, lon: float, lat: float, zoom: int = 14):
        """A real mouse click on the map where (lon, lat) is drawn."""
        x, y = self.tab.evaluate("([lon, lat, z]) => { enrichMap.setView([lat, lon], z, {animate: false}); "
                                 "const p = enrichMap.latLngToContainerPoint([lat, lon]); return [p.x, p.y]; }",
                                 [lon, lat, zoom])
        box = self.tab.locator("#map").bounding_box()
        self.tab.mouse.click(box["x"] + x, box["y"] + y)

    def answer_row(self, layer: str) -> str:
        return self.tab.locator(f'#answer-body tr[data-layer="{layer}"]').inner_text()

    def foreign_hosts(self, attempted: bool = False) -> set[str]:
        """Hosts other than the service that the browser sent a request to (attempted: or tried to, and the
        Content-Security-Policy refused)."""
        own = urlsplit(self.base).netloc
        return {urlsplit(u).netloc for u in self.requests
                if urlsplit(u).scheme not in ("data", "blob") and urlsplit(u).netloc != own
                and (attempted or u not in self.blocked)}

    def close(self):
        assert not self.errors, self.errors
        self.context.close()


@pytest.fixture
def page(browser, service):
    p = Page(browser, service, viewport={"width": 1366, "height": 860})
    yield p
    p.close()


def test_click_city_hall(page):
    page.open()
    page.shot("01-page")
    page.tab.focus("#show-neighborhood")
    page.tab.keyboard.press("Space")  # labelled checkboxes, keyboard-operable
    page.tab.wait_for_selector("#layers-status:has-text('Neighborhood current')")
    page.click_map(*CITY_HALL)
    page.tab.wait_for_selector("#answer-json")
    assert "Council District 3" in page.answer_row("council_district")
    assert "Downtown" in page.answer_row("neighborhood")
    assert "92101" in page.answer_row("zip")
    layers = httpx.get(f"{page.base}/v1/layers").json()["layers"]
    row = page.answer_row("council_district")
    assert "inside" in row and "version 2021" in row and layers["council_district"]["versions"][1]["sha256"] in row
    # the link gives the same answer as JSON
    href = page.tab.locator("#answer-json").get_attribute("href")
    same = httpx.get(f"{page.base}/{href}").json()
    assert (same["council_district"], same["neighborhood"], same["zip"]) == ("3", "Downtown", "92101")
    page.shot("02-city-hall")
    assert not page.foreign_hosts(attempted=True), page.requests  # not even tried


def test_page_waits_for_a_service_still_loading(page):
    calls = []

    def loading_once(route):
        calls.append(route.request.url)
        if len(calls) == 1:
            route.fulfill(status=503, json={"detail": "layers are still loading; retry shortly", "code": "not_ready"})
        else:
            route.continue_()

    page.tab.route("**/v1/layers", loading_once)
    page.tab.goto(page.base + "/")
    page.tab.wait_for_selector("#layers-status.error:has-text('still loading')")
    page.tab.wait_for_selector("body[data-ready=true]", timeout=15_000)
    assert len(calls) == 2 and "Council district 2021" in page.tab.inner_text("#layers-status")


def test_2011_lines_give_the_old_district(page):
    old = httpx.get(f"{page.base}/v1/pip", params={"lon": MOVED[0], "lat": MOVED[1], "as_of": "2016-05-01"}).json()
    new = httpx.get(f"{page.base}/v1/pip", params={"lon": MOVED[0], "lat": MOVED[1]}).json()
    assert (old["council_district"], new["council_district"]) == ("6", "2")  # the point did change district

    page.open()
    page.tab.check("#show-zip")
    page.tab.select_option("#district-version", "2011")
    page.tab.wait_for_selector("#layers-status:has-text('Council district 2011')")
    assert page.tab.input_value("#as-of") == "2012-12-03"
    page.click_map(*MOVED, zoom=13)
    page.tab.wait_for_selector("#answer-body tr[data-layer=council_district]:has-text('version 2011')")
    assert "Council District 6" in page.answer_row("council_district")
    page.shot("03-2011-lines")
    # an as-of date picks the lines in force that day, and the answer follows
    page.tab.fill("#as-of", "2023-01-15")
    page.tab.dispatch_event("#as-of", "change")
    page.tab.wait_for_selector("#answer-body tr[data-layer=council_district]:has-text('version 2021')")
    assert "Council District 2" in page.answer_row("council_district")
    assert page.tab.input_value("#district-version") == "2021"


def test_address_search(page):
    page.open()
    page.tab.focus("#address")
    page.tab.keyboard.type("4608 Gardena Avenue")
    page.tab.keyboard.press("Enter")  # keyboard only
    page.tab.wait_for_selector("#match-level")
    assert page.tab.inner_text("#match-level") == "exact"
    assert page.tab.inner_text('#answer-body tr[data-layer=council_district] .value') == "Council District 2"
    markers = page.tab.locator(".leaflet-marker-icon")
    assert markers.count() == 1 and markers.get_attribute("title") == "4608 Gardena Avenue (exact)"
    lat, lon = page.tab.evaluate("() => { const c = enrichMap.getCenter(); return [c.lat, c.lng]; }")
    assert abs(lat - 32.7786) < 0.001 and abs(lon + 117.2013) < 0.001
    page.shot("04-address")


def test_geocode_answer_with_fields_this_page_does_not_know(page):
    """A newer service may add per-layer rules such as `ambiguous`, candidates and other keys: shown, not dropped."""
    answer = {"lon": -117.2013488, "lat": 32.7786184, "match": "street", "score": 0.61, "matched_address": "Gardena Ave",
              "reason": "no house number", "council_district": None, "council_district_rule": "ambiguous",
              "council_district_candidates": "3;9",
              "neighborhood": "Clairemont Mesa", "neighborhood_rule": None, "zip": "92110", "zip_rule": None,
              "flags": None, "match_quality": {"street": 0.97},
              "candidates": [{"matched_address": "4608 Gardena Avenue, 92110", "score": 0.6, "lon": -117.2013,
                              "lat": 32.7786}, {"matched_address": "Gardena Road, 92071", "score": 0.4}]}
    page.open()
    page.tab.route("**/v1/geocode?*", lambda route: route.fulfill(json=answer))
    page.tab.fill("#address", "Gardena")
    page.tab.press("#address", "Enter")
    page.tab.wait_for_selector("#match-level:has-text('street')")
    assert "ambiguous" in page.answer_row("council_district")
    # the keys an ambiguous answer could be, beside its rule, by their labels
    candidates = page.tab.locator('#answer-body tr[data-layer="council_district"] .layer-candidates')
    assert candidates.is_visible() and "Council District 3 or Council District 9" in candidates.inner_text()
    assert "council_district_candidates" not in page.tab.inner_html("#answer-body")  # not left in other fields
    page.shot("05-ambiguous-address")
    body = page.tab.inner_text("#answer-body")
    assert "Gardena Road, 92071" in body and "match_quality" in page.tab.inner_html("#answer-body")
    page.tab.click("#answer-body .candidates button")  # look the first candidate up on the map
    page.tab.wait_for_selector("#answer-body:has-text('Point 32.7786')")
    assert "Council District 2" in page.answer_row("council_district")


def test_upload_parking_meters(page):
    with METERS.open(newline="") as f:
        original = list(csv.DictReader(f))
    page.open()
    page.tab.set_input_files("#file", str(METERS))
    page.tab.wait_for_selector("#file-form:not([hidden])")
    assert (page.tab.input_value("#lon-col"), page.tab.input_value("#lat-col")) == ("lng", "lat")
    page.tab.click("#file-go")
    page.tab.wait_for_selector("#download", timeout=60_000)
    page.shot("05-upload")
    with page.tab.expect_download() as info:
        page.tab.click("#download")
    download = info.value
    assert download.suggested_filename == "treas_parking_meters_loc_datasd_enriched.csv"
    rows = list(csv.DictReader(io.StringIO(Path(download.path()).read_text(encoding="utf-8"))))
    assert len(rows) == len(original) == 10861
    new_columns = {"council_district", "council_district_rule", "neighborhood", "neighborhood_rule", "zip",
                   "zip_rule"}
    assert new_columns <= set(rows[0])
    assert all((a["pole"], a["sapid"], a["zone"]) == (b["pole"], b["sapid"], b["zone"]) for a, b in zip(original, rows))
    assert (rows[0]["council_district"], rows[0]["neighborhood"], rows[0]["zip"]) == ("3", "Downtown", "92101")
    # the summary counts what the file holds
    summary = page.tab.inner_text("#file-summary")
    district3 = sum(r["council_district"] == "3" for r in rows)
    assert f"District 3\t{district3:,}" in summary, summary
    unmatched = sum(not r["council_district"] for r in rows)
    assert f"Unmatched (no district)\n{unmatched:,}" in summary, summary
    drawn = page.tab.evaluate("() => { let n = 0; enrichMap.eachLayer(l => { if (l instanceof L.CircleMarker) n++; });"
                              " return n; }")
    assert drawn > 10_000
    assert not page.foreign_hosts(attempted=True), page.requests  # not even tried


def test_docs_and_redoc_ask_only_the_service(page):
    page.open("/docs")
    page.tab.wait_for_selector(".swagger-ui .info .title", timeout=30_000)
    page.tab.wait_for_selector("text=Tag one point with every requested layer")
    page.shot("06-docs")
    page.open("/redoc")
    page.tab.wait_for_selector("h1:has-text('City enrichment service')", timeout=30_000)
    page.shot("07-redoc")
    assert any(u.endswith("/vendor/redoc/redoc.standalone.js") for u in page.requests)
    # ReDoc's bundle asks a public host for its logo: the policy the service sends keeps that in the browser.
    assert not page.foreign_hosts(), sorted(set(page.requests))


class TileServer:
    """Base map tiles on loopback: one grey PNG for every tile, and the paths asked for."""

    def __init__(self):
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        from PIL import Image

        buf = io.BytesIO()
        Image.new("RGB", (256, 256), (214, 222, 204)).save(buf, "PNG")
        png, asked = buf.getvalue(), []

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                asked.append(self.path)
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", str(len(png)))
                self.end_headers()
                self.wfile.write(png)

            def log_message(self, *args):
                pass

        self.asked = asked
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/{{z}}/{{x}}/{{y}}.png"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_base_tiles_come_from_the_configured_server(browser, services):
    _, tiles, started = services
    _, url = started.result()
    page = Page(browser, url, viewport={"width": 1366, "height": 860})
    try:
        page.open()
        page.tab.wait_for_function("() => [...document.querySelectorAll('.leaflet-tile')].some(t => t.complete)")
        assert page.foreign_hosts() == {urlsplit(tiles.url).netloc}  # the tile server, and nothing else
        assert tiles.asked and all(p.endswith(".png") for p in tiles.asked)
        assert page.tab.locator("#tile-note").is_hidden()
        assert "Test tiles" in page.tab.inner_text(".leaflet-control-attribution")
        page.shot("08-with-base-tiles")
    finally:
        page.close()


def test_labelled_controls_and_a_phone_screen(browser, service):
    page = Page(browser, service, viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True,
                device_scale_factor=2)
    try:
        page.open()
        unlabelled = page.tab.evaluate("""() => [...document.querySelectorAll('input, select, button')]
            .filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label') && !e.textContent.trim())
            .map(e => e.outerHTML)""")
        assert unlabelled == []
        width = page.tab.evaluate("() => [document.documentElement.scrollWidth, window.innerWidth]")
        assert width[0] <= width[1], width  # nothing wider than the phone
        assert page.tab.locator("#map").bounding_box()["height"] > 300
        page.tab.fill("#lon", str(CITY_HALL[0]))
        page.tab.fill("#lat", str(CITY_HALL[1]))
        page.tab.press("#lat", "Enter")
        page.tab.wait_for_selector("#answer-json")
        assert "Council District 3" in page.answer_row("council_district")
        # keyboard only: focus the map, pan it with the arrow keys, look up its centre
        page.tab.focus("#map")
        before = page.tab.evaluate("() => enrichMap.getCenter().lng")
        page.tab.keyboard.press("ArrowRight")
        page.tab.wait_for_function(f"() => enrichMap.getCenter().lng > {before}")
        page.tab.focus("#lookup-centre")
        page.tab.keyboard.press("Enter")
        page.tab.wait_for_selector("#answer-body:not(:has-text('Point 32.7167, -117.1627')) #answer-json")
        assert float(page.tab.input_value("#lon")) > before
        page.tab.evaluate("() => window.scrollTo(0, 0)")
        page.shot("09-phone")
        page.tab.locator("#answer").screenshot(path=str(SHOTS / "10-phone-answer.png"))
    finally:
        page.close()
