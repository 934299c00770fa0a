"""The dataset pipeline behind the DAGs: specs, extract, enrich through the service, quality gate, publish, report.

Each step module knows nothing of Airflow; `tasks/` holds the TaskFlow tasks that call them, `hooks` the service
hook, `payloads` what the tasks pass each other, and `factory` wires the tasks into DAGs. Importing the package is
cheap: heavy libraries (pandas, pyarrow, shapely, matplotlib) are imported inside the functions that use them.
"""
