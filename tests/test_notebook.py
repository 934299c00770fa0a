"""The worked notebook (notebooks/, jupytext percent scripts) runs on the real data against a live service, in a real
kernel (nbclient), and what it shows equals what the service's own code gives in process for the same rows."""

from __future__ import annotations

import json
import sys

import numpy as np
import pandas as pd
import pytest

from .conftest import DATA, REPO

NOTEBOOK = REPO / "notebooks" / "meters_and_collisions_per_district.py"
METERS = DATA / "points" / "treas_parking_meters_loc_datasd.csv"
COLLISIONS = DATA / "datasets" / "pd_collisions_2017_datasd.csv"

# Appended to the notebook before it runs: its own variables, read back as JSON.
READ_BACK = """
import json
print(json.dumps({
    "per_district": {k: {str(i): int(n) for i, n in v.items()} for k, v in per_district.to_dict().items()},
    "poles": poles["pole"].tolist(),
    "match": places["match"].tolist(),
    "collision_districts": [None if pd.isna(k) else k for k in places["council_district"]],
}))
"""


@pytest.fixture(scope="module")
def executed(live_service, tmp_path_factory, monkeypatch_module):
    """The notebook as run: (its cells' outputs by cell, the values read back)."""
    import jupytext
    import nbformat
    from nbclient import NotebookClient

    nb = jupytext.read(NOTEBOOK)
    assert not any(c.get("outputs") for c in nb.cells if c.cell_type == "code"), "a text notebook stores no outputs"
    nb.cells.append(nbformat.v4.new_code_cell(READ_BACK))
    monkeypatch_module.setenv("ENRICH_SERVICE_URL", live_service)
    monkeypatch_module.setenv("ENRICH_DATA_DIR", str(DATA))
    monkeypatch_module.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    NotebookClient(nb, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path_factory.mktemp("nb"))}}).execute()
    last = nb.cells[-1].outputs
    values = json.loads("".join(o["text"] for o in last if o.get("name") == "stdout"))
    return nb.cells[:-1], values


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


def _district_counts(keys) -> dict[str, int]:
    counts = pd.Series(keys, dtype=object).value_counts()
    out = {str(k): int(n) for k, n in counts.items()}
    out["no district"] = int(pd.isna(pd.Series(keys, dtype=object)).sum())
    return out


def test_meters_per_district_equal_the_engine_on_the_same_poles(executed, engine):
    _, values = executed
    meters = pd.read_csv(METERS, dtype={"pole": str}).drop_duplicates("pole")
    assert values["poles"] == meters["pole"].tolist()  # one row per pole, not per configuration
    x, y = meters["lng"].to_numpy(dtype=float), meters["lat"].to_numpy(dtype=float)
    keys = engine.tag(x, y, np.isfinite(x) & np.isfinite(y), ["council_district"]).layers["council_district"].keys()
    expected = _district_counts(keys)
    assert values["per_district"]["parking meters"] == {k: expected.get(k, 0) for k in values["per_district"][
        "parking meters"]}
    assert sum(values["per_district"]["parking meters"].values()) == len(meters)
    assert expected["3"] > len(meters) / 2  # downtown's meters are district 3's
    # No district: exactly the poles whose coordinates are placeholders (32.0/-117.0, 90/180) or lost their sign.
    far = ((meters["lat"] - 32.72).abs() > 0.5) | ((meters["lng"] + 117.16).abs() > 0.5)
    assert pd.isna(pd.Series(keys, dtype=object)).tolist() == far.tolist() and far.sum() > 10


def test_collisions_are_geocoded_as_the_dag_and_bench_compose_them(executed, index):
    """The notebook's addresses are the DAG's (dags/enrich_pipeline/geocode.py, as bench/geocode.py --tags-only
    measures them): the same match levels, row for row, and the same districts."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    if str(REPO / "dags") not in sys.path:
        sys.path.append(str(REPO / "dags"))
    from enrich_pipeline.geocode import compose, match_quality
    from enrich_pipeline.spec import find_spec
    from enrich_service.geocode.join import Records, geocode_join

    _, values = executed
    spec = find_spec("pd_collisions_2017")
    table = pacsv.read_csv(COLLISIONS, convert_options=pacsv.ConvertOptions(
        column_types={c: pa.string() for c in ("street_no", "date_time")}))
    joined = geocode_join(index, Records(ids=None, addresses=compose(spec, table)), ["council_district"],
                          use_cache=False)
    level = joined.geocoded.match.tolist()
    keys = joined.result.layers["council_district"].keys().tolist()
    assert values["match"] == level
    assert values["collision_districts"] == keys
    per = values["per_district"]["traffic collisions"]
    assert per == {k: _district_counts(keys).get(k, 0) for k in per}
    # The spec's quality floors hold on what the notebook shows: blocks and crossings the reference holds are tagged.
    quality = {r["level"]: r for r in match_quality(level, keys, joined.result.layers["council_district"]
                                                    .rule_names().tolist())}
    for lv, floor in spec.quality.min_tagged_share.items():
        assert quality[lv]["tagged_share"] >= floor, (lv, quality[lv])
    assert quality["street"]["tagged"] == 0  # a street the reference holds only in part: never tagged


def test_the_notebook_says_what_it_found(executed):
    cells, values = executed
    text = "".join(o.get("text", "") for c in cells if c.cell_type == "code" for o in c.outputs)
    placed = np.mean([m != "none" for m in values["match"]])
    tagged = np.mean([k is not None for k in values["collision_districts"]])
    assert f"Of {len(values['match']):,} collisions, {placed:.1%} were placed and {tagged:.1%} got a district" in text
    images = [o for c in cells if c.cell_type == "code" for o in c.outputs if "image/png" in o.get("data", {})]
    assert len(images) == 1, "the bar chart"
    tables = [o for c in cells if c.cell_type == "code" for o in c.outputs if "text/html" in o.get("data", {})]
    assert any("no district" in t["data"]["text/html"] for t in tables), "the per-district table"
