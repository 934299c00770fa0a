"""EnrichClient for notebooks: GeoDataFrames in any CRS, geocode(), chunks, retries, columns that shadow nothing."""

from __future__ import annotations

import httpx
import numpy as np
import pandas as pd
import pytest

from .conftest import DATA, POINTS

METERS = POINTS / "treas_parking_meters_loc_datasd.csv"
COLLISIONS = DATA / "datasets" / "pd_collisions_2017_datasd.csv"
LAYERS = ["council_district", "zip"]


@pytest.fixture(scope="module")
def meters() -> pd.DataFrame:
    return pd.read_csv(METERS).iloc[::20].reset_index(drop=True)  # 544 real meters, 32.0/-117.0 placeholders too


def test_a_geodataframe_in_state_plane_is_tagged_from_its_geometry(live_service, meters):
    import geopandas as gpd

    from enrich_service.client import EnrichClient

    gdf = gpd.GeoDataFrame(meters, geometry=gpd.points_from_xy(meters.lng, meters.lat), crs="EPSG:4326")
    feet = gdf.to_crs("EPSG:2230").drop(columns=["lat", "lng"])
    feet.index = feet.index + 500
    with EnrichClient(live_service) as client:
        plain = client.tag(meters, lon="lng", lat="lat", layers=LAYERS)
        tagged = client.tag(feet, layers=LAYERS)
    assert isinstance(tagged, gpd.GeoDataFrame) and tagged.crs == feet.crs
    assert tagged.geometry.equals(feet.geometry) and list(tagged.index) == list(feet.index)
    assert tagged["council_district"].tolist() == plain["council_district"].tolist()
    assert tagged["council_district"].notna().sum() > 500 and tagged["zip"].eq("92101").sum() > 200
    # The service's `flags` comes back as enrich_flags: df.flags stays pandas' own attribute.
    assert "flags" not in tagged.columns and "enrich_flags" in tagged.columns
    assert isinstance(tagged.flags, pd.core.flags.Flags)
    assert plain.loc[(meters.lat == 32.0).to_numpy(), "council_district"].isna().all()


def test_a_geodataframe_of_polygons_is_refused_with_a_way_out(live_service):
    import geopandas as gpd

    from enrich_service.client import EnrichClient

    districts = gpd.read_file(DATA / "boundaries" / "council_districts_2021_datasd.geojson")
    with EnrichClient(live_service) as client, pytest.raises(ValueError, match="representative_point"):
        client.tag(districts)
    with EnrichClient(live_service) as client:
        tagged = client.tag(districts.set_geometry(districts.representative_point()), layers=["council_district"])
    assert tagged["council_district"].tolist() == districts["district"].astype(str).tolist()


def test_geocode_returns_points_and_tags_keeping_the_frames_columns(live_service):
    import geopandas as gpd

    from enrich_service.client import EnrichClient

    raw = pd.read_csv(COLLISIONS, nrows=300, dtype=str)
    df = pd.DataFrame({"report_id": raw.report_id,
                       "address": (raw.street_no + " " + raw.street_name + " " + raw.street_type).str.strip(),
                       "zip": 92101})  # a frame's own zip column, named like the zip layer
    with EnrichClient(live_service) as client:
        places = client.geocode(df, address="address", layers=["council_district", "zip"])
        chunked = client.geocode(df, address="address", layers=["council_district", "zip"], chunk_rows=70,
                                 progress=False)
    assert isinstance(places, gpd.GeoDataFrame) and places.crs == "EPSG:4326" and len(places) == 300
    assert places["zip"].eq(92101).all() and "enrich_zip" in places.columns  # the frame's zip kept
    found = places["match"] != "none"
    assert found.sum() > 200 and places.geometry[found].notna().all() and places.geometry[~found].isna().all()
    assert np.allclose(places.geometry[found].x, places.loc[found, "lon"])
    assert {"hundred_block", "street"} <= set(places["match"])
    assert places["council_district"].notna().sum() > 50
    pd.testing.assert_frame_equal(pd.DataFrame(chunked.drop(columns="geometry")),
                                  pd.DataFrame(places.drop(columns="geometry")))


class FlakyTransport(httpx.BaseTransport):
    """The real service behind a connection that drops the first `failures` requests."""

    def __init__(self, failures: int):
        self.failures = failures
        self.requests = 0
        self.inner = httpx.HTTPTransport()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.requests += 1
        if self.requests <= self.failures:
            raise httpx.ConnectError("connection reset (planted)", request=request)
        return self.inner.handle_request(request)


def test_chunks_are_retried_and_a_rejected_request_is_not(live_service, meters):
    from enrich_service.client import EnrichClient, RequestRejected, ServiceUnavailable

    flaky = FlakyTransport(failures=2)
    with EnrichClient(live_service, transport=flaky, retries=3, retry_delay=0.01) as client:
        tagged = client.tag(meters, lon="lng", lat="lat", layers=LAYERS, chunk_rows=200, progress=False)
    assert flaky.requests == 2 + 3  # two drops, then three chunks of 200, 200, 144
    assert len(tagged) == len(meters) and tagged["council_district"].notna().sum() > 500
    points = tagged.attrs["enrich_layers"]["council_district"]["versions_used"]
    assert sum(v["points"] for v in points) == len(meters)

    with EnrichClient(live_service, transport=FlakyTransport(failures=5), retries=2, retry_delay=0.01) as client, \
            pytest.raises(ServiceUnavailable, match="planted"):
        client.tag(meters, lon="lng", lat="lat")
    counted = FlakyTransport(failures=0)
    with EnrichClient(live_service, transport=counted, retries=3, retry_delay=0.01) as client, \
            pytest.raises(RequestRejected, match="wards"):
        client.tag(meters, lon="lng", lat="lat", layers=["wards"])
    assert counted.requests == 1  # a 4xx is not retried


def test_empty_points_and_a_date_column_are_read_as_the_service_reads_them(live_service, meters):
    """POINT EMPTY is that row's error; a column named `date` gives each row its versions (#19)."""
    import geopandas as gpd
    import shapely

    from enrich_service.client import EnrichClient

    gdf = gpd.GeoDataFrame(meters.iloc[:20], geometry=gpd.points_from_xy(meters.lng[:20], meters.lat[:20]),
                           crs="EPSG:4326")
    gdf.loc[2, "geometry"] = shapely.Point()
    gdf["date"] = "2016-06-01"
    with EnrichClient(live_service) as client:
        tagged = client.tag(gdf, layers=["council_district"])
    assert "empty" in tagged.loc[2, "error"] and tagged["error"].isna().sum() == 19
    assert set(tagged["council_district_version"].dropna()) == {"2011"}


def test_coordinates_found_by_name_and_an_empty_frame(live_service, meters):
    """lng/lat found as the service finds them; an empty frame answers an empty frame, not a 422 (#19)."""
    from enrich_service.client import EnrichClient

    with EnrichClient(live_service) as client:
        found = client.tag(meters, layers=LAYERS)
        named = client.tag(meters, lon="lng", lat="lat", layers=LAYERS)
        empty = client.tag(meters.iloc[:0], layers=LAYERS)
    assert found["council_district"].tolist() == named["council_district"].tolist()
    assert len(empty) == 0 and "council_district" in empty.columns and list(empty.columns) == list(named.columns)
