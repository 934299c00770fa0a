"""Airflow: one enrichment DAG per dataset spec in dags/datasets/*.yaml (plus ENRICH_SPECS_DIRS), and one report DAG per
spec that has a `report` section. Parsing reads only the YAML specs.

A malformed spec costs only its own DAG: the good specs still make their DAGs, and the bad ones are reported as this
file's import error, naming each bad file and field (`SpecErrors`, refused by the DagBag when it validates it).
"""

from airflow.sdk import DAG

from enrich_pipeline.factory import build_dataset_dag, build_report_dag
from enrich_pipeline.spec import SpecError, load_specs_and_errors


class SpecErrors(DAG):
    """Stands in for the DAGs of malformed specs: the DagBag calls validate() on every DAG it finds, records what it
    raises as this file's import error (shown in the UI and `airflow dags list-import-errors`), and keeps the rest."""

    def validate(self):
        raise SpecError(self.description)


_specs, _errors = load_specs_and_errors()
for _spec in _specs:
    globals()[_spec.dag_id] = build_dataset_dag(_spec)
    if _spec.report is not None:
        globals()[_spec.report_dag_id] = build_report_dag(_spec)
if _errors:
    malformed_specs = SpecErrors(
        dag_id="enrich_malformed_specs", schedule=None,
        description=f"{len(_errors)} malformed dataset spec(s), their DAGs are not loaded: "
                    + "; ".join(str(e) for e in _errors))
