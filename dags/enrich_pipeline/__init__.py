"""The dataset pipeline behind the DAGs: specs, extract, enrich through the service, quality gate, publish, report.

Each module is one step and knows nothing of DAGs; `factory` wires them into TaskFlow DAGs. Importing this package
is cheap (heavy libraries are imported inside the functions that use them): DAG files parse in milliseconds.
"""
