"""Assemble: the extract plus every batch's results, as one enriched table (enriched.parquet in the work folder).

Columns: the source's own columns, `source_row`, one column per published layer (named as the spec says; with
`<column>_version` when rows carry dates), `enrich_flags`, `enrich_error`; then internal columns (prefix `__`)
that publishing uses and drops: the point in EPSG:4326 and the quality gate's layers.
"""

from __future__ import annotations

from pathlib import Path

from .enrich import batch_path
from .extract import ROW
from .spec import DatasetSpec
from .workdir import write_parquet

LON, LAT = "__lon", "__lat"  # the point in EPSG:4326 (null where the row has no usable location)
FLAGS, ERROR = "enrich_flags", "enrich_error"


def internal(layer: str) -> str:
    return f"__layer_{layer}"


def is_internal(name: str) -> bool:
    return name.startswith("__")


def layers_used(batches: list[dict]) -> dict:
    """The layer versions and sha256 used, identical across batches (else the layers changed mid-run)."""
    from enrich_service.client import EnrichError, merge_layers_used

    used: dict = {}
    for b in batches:
        try:
            used = merge_layers_used(used, b["layers"])
        except EnrichError as exc:
            raise RuntimeError(f"batch {b['batch']}: {exc}. Clear the run's enrich tasks to tag every batch with "
                               f"the same layers") from None
    return used


def assemble(spec: DatasetSpec, extract_path: Path, work: Path, batches: list[dict], dest: Path) -> dict:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    used = layers_used(batches)
    source = pq.read_table(extract_path)
    n_batches = pq.ParquetFile(extract_path).metadata.num_row_groups
    if sorted(b["batch"] for b in batches) != list(range(n_batches)):
        raise RuntimeError(f"expected results for batches 0..{n_batches - 1}, got {sorted(b['batch'] for b in batches)}")
    results = pa.concat_tables([pq.read_table(batch_path(work, i)) for i in range(n_batches)]) if n_batches else None
    if results is None or not results.column(ROW).equals(source.column(ROW)):
        raise RuntimeError("batch results do not line up with the extract's rows")

    out = source
    def put(name, arr):
        nonlocal out
        if name in out.column_names:
            out = out.drop_columns([name])
        out = out.append_column(name, arr)

    for layer in spec.request_layers:
        if layer in spec.layers:
            column = spec.layers[layer]
            put(column, results.column(layer))
            if f"{layer}_version" in results.column_names:
                put(f"{column}_version", results.column(f"{layer}_version"))
        else:
            put(internal(layer), results.column(layer))
    if spec.coordinates is None:  # address-only: the geocode's columns, and its point
        from .geocode import assemble_columns, point

        assemble_columns(spec, results, put)
    put(FLAGS, results.column("flags"))
    put(ERROR, results.column("error"))

    lon, lat = _wgs84(spec, source) if spec.coordinates is not None else point(results)
    bad = results.column("error").is_null().to_numpy(zero_copy_only=False) == False  # noqa: E712
    lon[bad] = np.nan
    lat[bad] = np.nan
    put(LON, pa.array(lon, from_pandas=True))
    put(LAT, pa.array(lat, from_pandas=True))
    write_parquet(out, dest)
    return {"path": str(dest), "rows": out.num_rows, "layers": used}


def _wgs84(spec: DatasetSpec, source):
    import numpy as np
    import pandas as pd

    c = spec.coordinates
    x = pd.to_numeric(source.column(c.lon).to_pandas(), errors="coerce").to_numpy(dtype=float, copy=True)
    y = pd.to_numeric(source.column(c.lat).to_pandas(), errors="coerce").to_numpy(dtype=float, copy=True)
    if c.crs.upper() not in ("EPSG:4326", "4326", "OGC:CRS84"):
        import pyproj

        x, y = pyproj.Transformer.from_crs(c.crs, "EPSG:4326", always_xy=True).transform(x, y)
        x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    return x, y
