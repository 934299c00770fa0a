"""Airflow DAG, weekly (or on demand): boundary layers into PostGIS, service reload, Asset enrich://boundaries for re-enrichment."""

from enrich_pipeline.factory import build_boundary_refresh_dag

boundary_refresh = build_boundary_refresh_dag()
