"""Airflow: one enrichment DAG per dataset spec in dags/datasets/*.yaml (plus ENRICH_SPECS_DIRS), and one report DAG per
spec that has a `report` section. Parsing reads only the YAML specs."""

from enrich_pipeline.factory import build_dataset_dag, build_report_dag
from enrich_pipeline.spec import load_specs

for _spec in load_specs():
    globals()[_spec.dag_id] = build_dataset_dag(_spec)
    if _spec.report is not None:
        globals()[_spec.report_dag_id] = build_report_dag(_spec)
