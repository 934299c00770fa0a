"""Every quality-gate threshold made to fail, read from what the failed task reported.

Each case builds a small source file whose shares are known by construction (how many rows lie at sea, outside
every district; how many have no coordinates), runs it through the pipeline's own extract → enrich_batch (the real
service) → assemble, then calls the DAG's `quality_gate` task (the callable Airflow runs, taken from the built DAG)
and asserts on the AirflowFailException it raises: the share, the threshold and the first ids, as the task said them.
Nothing here recomputes the gate. At exactly the threshold the gate passes (the spec says "above").
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import pytest

from .conftest import REPO

DISTRICT_3 = (-117.1627, 32.7167)  # City Hall
AT_SEA = (-117.35, 32.75)  # west of Ocean Beach: no district, outside the city


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """The enrich_pipeline package (airflow imported with a throwaway AIRFLOW_HOME when no other test set one)."""
    if "airflow" not in sys.modules and "AIRFLOW_HOME" not in os.environ:
        os.environ["AIRFLOW_HOME"] = str(tmp_path_factory.mktemp("airflow_home"))
    if str(REPO / "dags") not in sys.path:
        sys.path.append(str(REPO / "dags"))
    import enrich_pipeline

    return enrich_pipeline


def gate(live_service, tmp_path: Path, rows: list[tuple], quality: str) -> str | dict:
    """Run rows (id, lon, lat) through the pipeline into the quality_gate task: its failure message, or its stats."""
    return run_gate(*prepare(live_service, tmp_path, rows, quality))


def run_gate(spec, assembled: dict) -> str | dict:
    """The DAG's quality_gate task on an assembled file: the message it fails with, or the stats it returns."""
    from airflow.sdk.exceptions import AirflowFailException

    from enrich_pipeline.factory import build_dataset_dag

    task = build_dataset_dag(spec).get_task("quality_gate")
    assert task.retries == 0  # a quality failure is final
    try:
        return task.python_callable(str(spec.path), assembled)
    except AirflowFailException as exc:
        return str(exc)


def prepare(live_service, tmp_path: Path, rows: list[tuple], quality: str) -> tuple:
    """(spec, assembled) for rows (id, lon, lat): extract, enrich through the service and assemble, as the DAG does."""
    from enrich_pipeline.assemble import assemble, plausible_area
    from enrich_pipeline.enrich import enrich_batch, plan_batches
    from enrich_pipeline.extract import extract
    from enrich_pipeline.spec import load_spec
    from enrich_service.client import EnrichClient

    tmp_path.mkdir(parents=True, exist_ok=True)
    src = tmp_path / "rows.csv"
    src.write_text("rid,x,y\n" + "".join(f"{i},{'' if x is None else x},{'' if y is None else y}\n"
                                         for i, x, y in rows))
    spec_path = tmp_path / "gate_case.yaml"
    spec_path.write_text(f"""
name: gate_case
source: {{kind: csv, path: "{src}"}}
id: rid
coordinates: {{lon: x, lat: y}}
layers: {{council_district: district}}
quality: {quality}
batch_rows: 7
outputs: {{portal: {{folder: "{tmp_path / 'portal'}", basename: gate_case}}}}
""")
    spec = load_spec(spec_path)
    extracted = extract(spec, tmp_path / "extract.parquet")
    path = Path(extracted["path"])
    with EnrichClient(live_service) as client:
        batches = [enrich_batch(spec, path, tmp_path, b["batch"], client) for b in plan_batches(path)]
        area = plausible_area(spec, client.layers())  # what the assemble task asks the service connection for
    return spec, assemble(spec, path, tmp_path, batches, tmp_path / "enriched.parquet", area)


def rows_with(inside: int, at_sea: int = 0, unlocated: int = 0) -> list[tuple]:
    rows = [DISTRICT_3] * inside + [AT_SEA] * at_sea + [(None, None)] * unlocated
    return [(100 + i, x, y) for i, (x, y) in enumerate(rows)]


def test_unmatched_share_over_the_threshold_fails_and_names_the_rows(pipeline, live_service, tmp_path):
    # 3 of 12 rows at sea: 25% without a district, counted over the whole dataset (within: null).
    message = gate(live_service, tmp_path, rows_with(9, at_sea=3),
                   "{layer: council_district, within: null, max_unmatched_share: 0.2, show: 2}")
    assert isinstance(message, str), message
    assert "gate_case: quality gate failed, nothing published" in message
    assert re.search(r"\b3 of 12 rows in the dataset have no council_district \(25\.0000% > "
                     r"quality\.max_unmatched_share 20\.0000%\); "
                     r"first ids: \[109, 110\]", message), message
    assert "usable location" not in message


def test_unmatched_share_at_the_threshold_passes(pipeline, live_service, tmp_path):
    stats = gate(live_service, tmp_path, rows_with(9, at_sea=3),
                 "{layer: council_district, within: null, max_unmatched_share: 0.25}")
    assert isinstance(stats, dict), stats
    assert (stats["unmatched"], stats["should_match"]) == (3, 12)


def test_unmatched_within_city_limits_ignores_rows_outside_the_city(pipeline, live_service, tmp_path):
    # The same rows with the city-limits filter: the sea rows are outside the city, so nothing fails at 0%.
    stats = gate(live_service, tmp_path, rows_with(9, at_sea=3),
                 "{layer: council_district, within: city_limits, max_unmatched_share: 0.0}")
    assert isinstance(stats, dict), stats
    assert (stats["unmatched"], stats["should_match"]) == (0, 9)


def test_no_row_inside_the_city_is_no_failure(pipeline, live_service, tmp_path):
    # Every row at sea, counted within the city limits: nothing should match, so nothing fails even at 0%.
    stats = gate(live_service, tmp_path, rows_with(0, at_sea=4),
                 "{layer: council_district, within: city_limits, max_unmatched_share: 0.0}")
    assert isinstance(stats, dict), stats
    assert (stats["should_match"], stats["unmatched_share"]) == (0, 0.0)


def unlocated_case(live_service, tmp_path, threshold: float) -> str | dict:
    # 3 of 12 rows without coordinates (25%); the unmatched gate (within the city) has nothing to say.
    return gate(live_service, tmp_path, rows_with(9, unlocated=3),
                "{layer: council_district, within: city_limits, max_unmatched_share: 0.0, "
                f"max_unlocated_share: {threshold}, show: 5}}")


def check_unlocated_gate(live_service, tmp_path: Path) -> None:
    """The unlocated-share threshold fails above it (naming the rows) and passes at it."""
    message = unlocated_case(live_service, tmp_path / "over", 0.2)
    assert isinstance(message, str), f"the gate passed 25% unlocated rows at max_unlocated_share 0.2: {message}"
    assert re.search(r"\b3 of 12 rows have no usable location, 0 of them outside the plausible area "
                     r"\(25\.0000% > quality\.max_unlocated_share 20\.0000%\); first ids: "
                     r"\[109, 110, 111\]", message), message
    assert "have no council_district" not in message
    stats = unlocated_case(live_service, tmp_path / "at", 0.25)
    assert isinstance(stats, dict) and stats["unlocated"] == 3, stats


def test_unlocated_share_over_the_threshold_fails_and_names_the_rows(pipeline, live_service, tmp_path):
    check_unlocated_gate(live_service, tmp_path)


def test_both_thresholds_failing_are_both_reported(pipeline, live_service, tmp_path):
    message = gate(live_service, tmp_path, rows_with(6, at_sea=3, unlocated=3),
                   "{layer: council_district, within: null, max_unmatched_share: 0.1, max_unlocated_share: 0.1}")
    assert isinstance(message, str), message
    # The unlocated rows have no district either: 6 of 12 unmatched, 3 of 12 unlocated.
    assert "6 of 12 rows in the dataset have no council_district (50.0000% > quality.max_unmatched_share " \
           "10.0000%)" in message
    assert "3 of 12 rows have no usable location, 0 of them outside the plausible area (25.0000% > " \
           "quality.max_unlocated_share 10.0000%)" in message
