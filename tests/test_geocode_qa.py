"""The QA findings on issue 13's geocode-join, each on real data: huge house numbers, street-level tags, a clipped
street type naming several streets, the point outside its own extent, the city field, a ZIP of another city,
unusable dates, ambiguous rows without candidates."""

from __future__ import annotations

import csv
import datetime as dt

import numpy as np
import pytest

from .conftest import ADDRESS, POINTS

LAYERS = ["council_district", "neighborhood", "zip"]


@pytest.fixture(scope="module")
def index(store, engine, tmp_path_factory):
    from enrich_service.geocode import build_geocoder
    from enrich_service.index import ServiceIndex
    from enrich_service.settings import Settings

    settings = Settings(reference_dir=ADDRESS, cache_dir=tmp_path_factory.mktemp("cache"))
    return ServiceIndex(store=store, engine=engine, built_at=dt.datetime.now(dt.timezone.utc), build_seconds=0.0,
                        extras={"geocoder": build_geocoder(settings, store)})


def answer(index, addresses, zips=None, cities=None, layers=LAYERS, dates=None, untagged=(), errors=None):
    from enrich_service.geocode.join import Records, geocode_join, rows

    joined = geocode_join(index, Records(ids=list(range(len(addresses))), addresses=addresses, zips=zips,
                                         cities=cities, dates=dates, untagged=set(untagged),
                                         errors=dict(errors or {})), layers, use_cache=False)
    return rows(list(range(len(addresses))), joined)


def meters_on(street: str) -> list[tuple[str, float, float]]:
    with open(POINTS / "treas_parking_meters_loc_datasd.csv", newline="") as f:
        return [(r["sub_area"], float(r["lng"]), float(r["lat"])) for r in csv.DictReader(f)
                if r["sub_area"].split(" ", 1)[-1] == street and r["lat"] and float(r["lat"]) > 30]


HUGE = ["99999999999999999999 Garnet Ave", "9223372036854775808 block of Gardena Ave",
        "18446744073709551616 Gardena Avenue, 92110", "-9223372036854775809 Gardena Ave",
        "99999999999999999XX Garnet Ave"]


def test_a_huge_house_number_is_that_rows_answer_not_a_failure(index):
    got = answer(index, HUGE + ["4608 Gardena Avenue"])
    for row, text in zip(got, HUGE):
        assert row["match"] in ("none", "street"), text
        assert row["reason"], text
    assert got[-1]["match"] == "exact" and got[-1]["council_district"] == "2"  # the other rows are answered

