"""Address specs in the DAGs (dags/enrich_pipeline/geocode.py): composing police split fields, the gate's floors per
match level, the report's match quality. The DAG run itself is in tests/test_dags.py."""

from __future__ import annotations

import sys

import pytest

from .conftest import REPO

if str(REPO / "dags") not in sys.path:
    sys.path.append(str(REPO / "dags"))


@pytest.mark.parametrize("number, street, cross, text", [
    ("5500", ["", "VALERIO", "TRAIL"], ["", "", ""], "5500 block of VALERIO TRAIL"),
    ("0", [" ", "IMPERIAL", "AVENUE"], [" ", "VIEWCREST", "DR"], "IMPERIAL AVENUE & VIEWCREST DR"),
    ("100", ["W", "BROADWAY", " "], [" ", " ", " "], "100 block of W BROADWAY"),
    ("", ["", "08TH", "AVENUE"], ["", "", ""], "08TH AVENUE"),
    ("0", [" ", " ", " "], [" ", "A", "ST"], ""),
])
def test_police_split_fields_compose_to_blocks_and_intersections(number, street, cross, text):
    from enrich_service.geocode.compose import compose_one

    assert compose_one(number, street, cross, number_is_block=True) == text


def test_the_collisions_spec_is_an_address_spec(tmp_path):
    from enrich_pipeline.spec import SpecError, find_spec, load_spec

    spec = find_spec("pd_collisions_2017")
    assert spec.coordinates is None and spec.address.number == "street_no" and spec.address.number_is_block
    assert spec.address.cross_street == ("cross_st_dir", "cross_st_name", "cross_st_type")
    assert spec.quality.min_tagged_share == {"hundred_block": 0.8, "intersection": 0.8}
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nsource: {path: a.csv}\naddress: {street: s, house: n}\noutputs: {portal: {folder: /t}}\n")
    with pytest.raises(SpecError, match="address: unknown keys"):
        load_spec(bad)


def test_the_gate_fails_below_the_floor_of_a_match_level():
    from enrich_pipeline.geocode import match_quality, problems
    from enrich_pipeline.spec import find_spec

    spec = find_spec("pd_collisions_2017")
    levels = ["hundred_block"] * 10 + ["intersection"] * 4 + ["none"] * 2
    keys = ["3"] * 9 + [None] + ["2", "2", None, None] + [None, None]
    rules = [None] * 9 + ["ambiguous"] + [None, None, "ambiguous", "ambiguous"] + ["not_geocoded"] * 2
    rows = match_quality(levels, keys, rules)
    assert [(r["level"], r["rows"], r["tagged"], r["ambiguous"]) for r in rows] == \
        [("intersection", 4, 2, 2), ("hundred_block", 10, 9, 1), ("none", 2, 0, 0)]
    found = problems(spec, {"match_levels": rows})
    assert len(found) == 1 and "2 of 4 intersection matches" in found[0]


def test_the_report_shows_match_quality_beside_the_counts():
    from enrich_pipeline.report import render_html
    from enrich_pipeline.spec import find_spec

    spec = find_spec("pd_collisions_2017")
    counts = {"by": {"council_district": [["3", 9], [None, 1]], "neighborhood": [["Uptown", 9], [None, 1]]},
              "all": {"council_district": ["3"], "neighborhood": ["Uptown"]}, "total": 10, "unlocated": 1,
              "dates": None,
              "match_quality": [{"level": "hundred_block", "rows": 10, "share": 1.0, "tagged": 9,
                                 "tagged_share": 0.9, "ambiguous": 1, "untagged_other": 0}]}
    html = render_html(spec, counts, "2026-12-01T06:00:00+00:00", None, "chart")
    assert "Match quality" in html and "hundred_block" in html and "9 (90.0%)" in html
