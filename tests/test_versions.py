"""The version switch, on and around the days it happens, through every way a date reaches the engine.

boundaries/manifest.yaml puts the 2011 council districts in force from 2012-12-03 and the 2021 ones from
2022-12-10 (each `effective_from` inclusive). The expected answers here come from those dates and from shapely's
`covers` on each version's polygons, not from the engine: a probe point lies in district 6 on the 2011 lines and in
another district on the 2021 lines, so an answer from the wrong version shows in the key, not only in the label.

Every form is asked the same thing: `as_of` on 2012-12-02 (before any district version: refused, naming as_of),
2012-12-03, 2022-12-09 and 2022-12-10; in a batch whose other rows carry their own dates on and around the switch
days (2012-12-02 refused for that row only) and whose undated rows follow `as_of`.
"""

from __future__ import annotations

import datetime as dt
import io
from pathlib import Path

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.ipc as ipc
import pytest
import shapely
import yaml

from enrich_service.errors import NoVersionInForce
from enrich_service.settings import REPO_ROOT

from .conftest import ADDRESS, BOUNDARIES, needs, ready_app

ARROW = "application/vnd.apache.arrow.stream"
# as_of -> the district version in force that day (None: none is)
AS_OF = {"2012-12-02": None, "2012-12-03": "2011", "2022-12-09": "2011", "2022-12-10": "2021"}
# per-row dates -> version: the switch days and the days either side
ROW_DATES = {"2012-12-02": None, "2012-12-03": "2011", "2012-12-04": "2011", "2022-12-09": "2011",
             "2022-12-10": "2021", "2022-12-11": "2021"}


def test_the_switch_days_are_the_manifests():
    doc = yaml.safe_load((REPO_ROOT / "boundaries" / "manifest.yaml").read_text())
    starts = {v["version"]: str(v["effective_from"]) for v in doc["layers"]["council_district"]["versions"]}
    assert starts == {"2011": "2012-12-03", "2021": "2022-12-10"}


@pytest.fixture(scope="module")
def probe(store):
    return probe_point(store)


def probe_point(store):
    """(lon, lat, {version: the district key covering it in that version}): the keys differ between versions."""
    old, new = store.versions["council_district"]
    i6 = np.flatnonzero(old.keys == "6")[0]
    p = shapely.point_on_surface(shapely.difference(old.geoms[i6], shapely.union_all(new.geoms[new.keys == "6"])))
    keys = {}
    for v in (old, new):
        covering = v.keys[shapely.covers(v.geoms, p)]
        assert len(set(covering)) == 1, covering
        keys[v.version] = covering[0]
    assert keys["2011"] == "6" and keys["2021"] != "6"
    return p.x, p.y, keys


def expected(probe, version: str | None) -> str | None:
    return None if version is None else probe[2][version]


# ---- the engine and the store -----------------------------------------------------------------------------------

@pytest.mark.parametrize("as_of", AS_OF)
def test_version_on_the_switch_days(store, as_of):
    day = dt.date.fromisoformat(as_of)
    if AS_OF[as_of] is None:
        with pytest.raises(NoVersionInForce):
            store.version_on("council_district", day)
    else:
        assert store.version_on("council_district", day).version == AS_OF[as_of]
    if AS_OF[as_of] is None:
        with pytest.raises(NoVersionInForce, match="in force from 2012-12-03"):
            store.version_on("council_district", day)
    for layer, versions in store.versions.items():  # no date: the newest version of every layer
        assert store.version_on(layer, None) is versions[-1]
    idx = store.version_index("council_district", np.array(list(ROW_DATES) + ["NaT"], dtype="datetime64[D]"))
    names = [store.versions["council_district"][i].version if i >= 0 else None for i in idx]
    assert names == list(ROW_DATES.values()) + ["2021"]


@pytest.mark.parametrize("as_of", [d for d, v in AS_OF.items() if v])
@pytest.mark.parametrize("use_grid", [True, False])
def test_engine_mixed_batch(store, engine, probe, as_of, use_grid):
    from enrich_service.engine.tagger import Engine

    eng = engine if use_grid else Engine(store, use_grid=False)
    lon, lat, _ = probe
    # The probe on every date, undated twice, then a point at sea (no district in any version) dated and undated.
    dates = np.array(list(ROW_DATES) + ["NaT", "NaT", "2022-12-10", "NaT"], dtype="datetime64[D]")
    n = len(dates)
    x, y = np.full(n, lon), np.full(n, lat)
    x[-2:], y[-2:] = -117.35, 32.75
    result = eng.tag(x, y, np.ones(n, dtype=bool), ["council_district"],
                     as_of=dt.date.fromisoformat(as_of), dates=dates)
    tags = result.layers["council_district"]
    want_versions = list(ROW_DATES.values()) + [AS_OF[as_of]] * 2 + ["2021", AS_OF[as_of]]
    assert list(tags.version) == want_versions
    assert list(tags.keys()) == [expected(probe, v) for v in want_versions[:-2]] + [None, None]
    assert list(tags.rule_names()[-2:]) == [None, None]
    assert set(result.row_errors) == {0} and result.row_errors[0][0] == "date"
    assert result.default_versions["council_district"].version == AS_OF[as_of]


# ---- the HTTP API: GET and every bulk form -----------------------------------------------------------------------

@pytest.fixture(scope="module")
@needs("data")
def client():
    env = {"ENRICH_BOUNDARY_DIR": str(BOUNDARIES), "ENRICH_REFERENCE_DIR": str(ADDRESS),
           "ENRICH_API_KEYS": "test-admin-key"}
    with ready_app(env) as c:
        yield c


@pytest.mark.parametrize("as_of", AS_OF)
def test_get_as_of_on_the_switch_days(client, probe, as_of):
    lon, lat, _ = probe
    r = client.get("/v1/pip", params={"lon": lon, "lat": lat, "as_of": as_of, "layers": "council_district"})
    if AS_OF[as_of] is None:
        assert r.status_code == 422 and r.json()["field"] == "as_of", r.text
        return
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["council_district"] == expected(probe, AS_OF[as_of])
    assert body["layers"]["council_district"]["version"] == AS_OF[as_of]


def mixed_rows(probe) -> list[dict]:
    """Dated rows on and around the switch days, then undated rows (no date key, and date: null)."""
    lon, lat, _ = probe
    rows = [{"id": f"d{d}", "lon": lon, "lat": lat, "date": d} for d in ROW_DATES]
    return rows + [{"id": "undated-null", "lon": lon, "lat": lat, "date": None}, {"id": "undated", "lon": lon, "lat": lat}]


def post(client, form: str, rows: list[dict], as_of: str | None) -> tuple[int, list[dict] | dict]:
    """POST the rows in one bulk form; (status, answer rows as dicts or the error body)."""
    params = {"layers": "council_district"}
    if as_of is not None:
        params["as_of"] = as_of
    if form == "json":
        body = {"points": rows, "layers": ["council_district"], **({"as_of": as_of} if as_of else {})}
        r = client.post("/v1/pip", content=orjson.dumps(body), headers={"content-type": "application/json"})
        return r.status_code, r.json()["results"] if r.status_code == 200 else r.json()
    if form == "ndjson":
        text = b"".join(orjson.dumps(row) + b"\n" for row in rows)
        r = client.post("/v1/pip", params=params, content=text, headers={"content-type": "application/x-ndjson"})
        if r.status_code != 200:
            return r.status_code, r.json()
        return 200, [orjson.loads(line) for line in r.content.splitlines() if line.strip()]
    table = pa.table({"id": [row["id"] for row in rows], "lon": [row["lon"] for row in rows],
                      "lat": [row["lat"] for row in rows],
                      "date": pa.array([dt.date.fromisoformat(row["date"]) if row.get("date") else None
                                        for row in rows], pa.date32())})
    params["date_col"] = "date"
    if form == "arrow":
        sink = io.BytesIO()
        with ipc.new_stream(sink, table.schema) as w:
            w.write_table(table)
        r = client.post("/v1/pip", params=params, content=sink.getvalue(), headers={"content-type": ARROW})
        if r.status_code != 200:
            return r.status_code, r.json()
        return 200, ipc.open_stream(r.content).read_all().to_pylist()
    buf = io.BytesIO()
    pacsv.write_csv(table, buf)
    r = client.post("/v1/pip", params=params, content=buf.getvalue(), headers={"content-type": "text/csv"})
    if r.status_code != 200:
        return r.status_code, r.json()
    return 200, pacsv.read_csv(io.BytesIO(r.content), convert_options=pacsv.ConvertOptions(
        strings_can_be_null=True,
        column_types={"council_district": pa.string(), "council_district_version": pa.string()})).to_pylist()


FORMS = ["json", "arrow", "csv", "ndjson"]


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("as_of", list(AS_OF) + [None])
def test_bulk_as_of_and_row_dates_on_the_switch_days(client, probe, form, as_of):
    rows = mixed_rows(probe)
    status, answer = post(client, form, rows, as_of)
    if as_of is not None and AS_OF[as_of] is None:
        assert status == 422 and answer["field"] == "as_of", answer
        return
    assert status == 200, answer
    undated = AS_OF[as_of] if as_of is not None else "2021"  # no as_of: the newest lines
    want = list(ROW_DATES.values()) + [undated, undated]
    assert [a["id"] for a in answer] == [row["id"] for row in rows]
    assert [a["council_district_version"] for a in answer] == want, form
    assert [a["council_district"] for a in answer] == [expected(probe, v) for v in want], form
    errors = [a.get("error") for a in answer]
    assert errors[0] and "date" in errors[0] and "in force from 2012-12-03" in errors[0] and not any(errors[1:]), errors


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("as_of", [d for d, v in AS_OF.items() if v])
def test_bulk_as_of_without_any_dates(client, probe, form, as_of):
    """Rows carrying no date column at all follow as_of."""
    lon, lat, _ = probe
    rows = [{"id": "a", "lon": lon, "lat": lat}, {"id": "b", "lon": lon, "lat": lat}]
    if form in ("arrow", "csv"):
        rows = [{**row, "date": None} for row in rows]
    status, answer = post(client, form, rows, as_of)
    assert status == 200, answer
    assert [a["council_district"] for a in answer] == [expected(probe, AS_OF[as_of])] * 2, form


# ---- the DAG path: extract → enrich_batch (through the service's client) → assemble ----------------------------

def test_dag_path_dates_and_as_of_on_the_switch_days(live_service, probe, tmp_path):
    import sys

    from .conftest import REPO

    if str(REPO / "dags") not in sys.path:
        sys.path.append(str(REPO / "dags"))
    import pyarrow.parquet as pq

    from enrich_pipeline.assemble import assemble, plausible_area
    from enrich_pipeline.enrich import enrich_batch, plan_batches
    from enrich_pipeline.extract import extract
    from enrich_pipeline.spec import load_spec
    from enrich_service.client import EnrichClient

    lon, lat, _ = probe
    source = tmp_path / "rows.csv"
    dates = list(ROW_DATES) + ["", ""]
    source.write_text("rid,x,y,day\n" + "".join(f"{i},{lon!r},{lat!r},{d}\n" for i, d in enumerate(dates)))
    for as_of in ("2022-12-09", "2022-12-10"):
        spec_path = tmp_path / f"switch_{as_of}.yaml"
        spec_path.write_text(f"""
name: switch_{as_of.replace('-', '_')}
source: {{kind: csv, path: "{source}"}}
id: rid
coordinates: {{lon: x, lat: y}}
as_of_column: day
as_of: "{as_of}"
layers: {{council_district: district}}
quality: {{layer: council_district, within: null, max_unmatched_share: 1.0}}
batch_rows: 3
outputs: {{portal: {{folder: "{tmp_path / 'portal'}", basename: switch}}}}
""")
        spec = load_spec(spec_path)
        work = tmp_path / as_of
        work.mkdir()
        extracted = extract(spec, work / "extract.parquet")
        with EnrichClient(live_service) as client:
            batches = [enrich_batch(spec, Path(extracted["path"]), work, b["batch"], client)
                       for b in plan_batches(Path(extracted["path"]))]
            area = plausible_area(spec, client.layers())
        assembled = assemble(spec, Path(extracted["path"]), work, batches, work / "enriched.parquet", area)
        out = pq.read_table(assembled["path"]).to_pylist()
        want = list(ROW_DATES.values()) + [AS_OF[as_of]] * 2
        assert [row["district_version"] for row in out] == want, as_of
        assert [row["district"] for row in out] == [expected(probe, v) for v in want], as_of
