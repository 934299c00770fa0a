"""The dataset specs: every shipped spec passes the lint (dags/enrich_pipeline/lint.py), the lint refuses what would
fail later on a schedule, and one malformed spec costs only its own DAG in a real DagBag.

No Airflow is imported in this process (tests/test_dags.py owns the in-process Airflow): the DagBag runs in a
subprocess with a throwaway AIRFLOW_HOME.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from .conftest import REPO

DAGS = REPO / "dags"
if str(DAGS) not in sys.path:
    sys.path.append(str(DAGS))
ENV = REPO / "env"
GOOD = """
name: stops_extra
description: Transit stops, a second good spec
source: {kind: geojson, path: "${ENRICH_DATA_DIR}/points/transit_stops_datasd.geojson"}
id: objectid
owners: [gis-team@sandiego.gov]
outputs: {portal: {folder: "${ENRICH_PUBLISH_DIR}/stops_extra"}}
"""
BAD_LAYER = GOOD.replace("stops_extra", "wards_spec") + "layers: [wards]\n"


def lint_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(DAGS / "enrich_pipeline" / "lint.py"), *args], capture_output=True,
                          text=True, timeout=60)


def test_every_shipped_spec_passes_the_lint():
    """What CI runs: the specs in dags/datasets against every deployment's settings and the list of secrets."""
    envs = [a for e in ("dev", "stage", "prod") for a in ("--env-file", str(ENV / f"{e}.env"))]
    r = lint_cli(str(DAGS / "datasets"), *envs, "--secrets-example", str(ENV / "secrets.env.example"))
    assert r.returncode == 0, r.stderr
    assert "0 problem(s)" in r.stderr


def test_the_lint_refuses_what_would_fail_on_a_schedule(tmp_path):
    from enrich_pipeline.lint import lint

    (tmp_path / "ok.yaml").write_text(GOOD)
    (tmp_path / "bad_layer.yaml").write_text(BAD_LAYER)
    (tmp_path / "no_owner.yaml").write_text(GOOD.replace("stops_extra", "no_owner").replace(
        "owners: [gis-team@sandiego.gov]\n", ""))
    (tmp_path / "placeholder.yaml").write_text(GOOD.replace("stops_extra", "placeholder").replace(
        "${ENRICH_DATA_DIR}", "${ENRICH_NOWHERE}"))
    (tmp_path / "conn.yaml").write_text(GOOD.replace("stops_extra", "conn") + "service_conn_id: other_service\n")
    (tmp_path / "entity.yaml").write_text(GOOD.replace("stops_extra", "entity") + (
        "outputs: {postgis: {table: public.entity}}\n"
        "report: {recipients: [a@b.org], by: [council_district], entity_id: [stop_uid]}\n"))
    (tmp_path / "twice.yaml").write_text(GOOD)
    (tmp_path / "owner_typo.yaml").write_text(GOOD.replace("stops_extra", "typo").replace(
        "gis-team@sandiego.gov", "gis-team sandiego.gov"))
    problems = lint([tmp_path], [ENV / "dev.env"], ENV / "secrets.env.example")
    text = "\n".join(problems)
    assert "bad_layer.yaml: layers: unknown layer 'wards'" in text
    assert "no_owner.yaml: owners: nobody is told" in text
    assert "placeholder.yaml: ${ENRICH_NOWHERE} is not set in" in text
    assert "conn.yaml: service_conn_id: no AIRFLOW_CONN_OTHER_SERVICE" in text
    assert "entity.yaml: report.entity_id: ['stop_uid'] not in id ['objectid']" in text
    assert "twice.yaml: dataset 'stops_extra' is also defined in" in text
    assert "owner_typo.yaml: owners: 'gis-team sandiego.gov' is not an e-mail address" in text
    assert not [p for p in problems if p.startswith(str(tmp_path / "ok.yaml"))]
    assert len(problems) == 7, text


BAG = """
import json, sys
from pathlib import Path
from airflow.dag_processing.dagbag import BundleDagBag
dags = Path(sys.argv[1])
bag = BundleDagBag(dag_folder=str(dags), bundle_path=dags, bundle_name="dags-folder")
print(json.dumps({"dags": sorted(bag.dag_ids), "errors": bag.import_errors}))
"""


def test_a_malformed_spec_fails_only_its_own_dag(tmp_path):
    """A real DagBag over dags/ with one good and two bad extra specs: every good spec's DAG still loads, and the
    bad ones show as an import error naming each file and field."""
    specs = tmp_path / "specs"
    specs.mkdir()
    (specs / "stops_extra.yaml").write_text(GOOD)
    (specs / "wards_spec.yaml").write_text(BAD_LAYER)
    (specs / "not_yaml.yaml").write_text("name: [unclosed\n")
    env = {**os.environ, "AIRFLOW_HOME": str(tmp_path / "home"), "ENRICH_SPECS_DIRS": str(specs),
           "AIRFLOW__CORE__LOAD_EXAMPLES": "False"}
    r = subprocess.run([sys.executable, "-c", BAG, str(DAGS)], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    doc = json.loads(r.stdout.strip().splitlines()[-1])
    assert {"enrich_parking_meters", "enrich_transit_stops", "report_parking_meters", "report_transit_stops",
            "enrich_stops_extra", "enrich_boundary_refresh"} <= set(doc["dags"]), doc
    assert "enrich_malformed_specs" not in doc["dags"]
    assert list(doc["errors"]) == ["enrich_datasets.py"], doc["errors"]
    error = doc["errors"]["enrich_datasets.py"]
    assert f"{specs / 'wards_spec.yaml'}: layers: unknown layer 'wards'" in error
    assert f"{specs / 'not_yaml.yaml'}: not valid YAML" in error
    assert "2 malformed dataset spec(s)" in error


@pytest.mark.parametrize("field,value,needle", [
    ("owners", "[not-an-address]", "owners: 'not-an-address' is not an e-mail address"),
])
def test_spec_fields_of_this_issue_are_checked(tmp_path, field, value, needle):
    from enrich_pipeline.spec import SpecError, load_spec

    path = tmp_path / "x.yaml"
    path.write_text(GOOD.replace("owners: [gis-team@sandiego.gov]", f"{field}: {value}"))
    with pytest.raises(SpecError, match=needle):
        load_spec(path)


def test_a_geojson_spec_without_coordinates_reads_the_features_points(tmp_path):
    """A GeoJSON source needs no `coordinates`: the spec defaults to the columns extract writes the features' points
    into (geometry_lon, geometry_lat), and every transit stop keeps its point."""
    import json

    import pyarrow.parquet as pq

    from enrich_pipeline.extract import extract
    from enrich_pipeline.spec import load_spec

    from .conftest import POINTS

    path = tmp_path / "stops_extra.yaml"
    path.write_text(GOOD.replace("${ENRICH_DATA_DIR}/points", str(POINTS)))
    spec = load_spec(path)
    extracted = extract(spec, tmp_path / "extract.parquet")
    table = pq.read_table(extracted["path"], columns=[spec.coordinates.lon, spec.coordinates.lat])
    features = json.loads((POINTS / "transit_stops_datasd.geojson").read_text())["features"]
    assert table.num_rows == len(features)
    assert table.column(0).to_pylist()[:3] == [f["geometry"]["coordinates"][0] for f in features[:3]]
    assert table.column(1).to_pylist()[:3] == [f["geometry"]["coordinates"][1] for f in features[:3]]
    assert table.column(0).null_count == 0
