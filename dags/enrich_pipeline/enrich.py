"""Enrich: tag one batch (a row group of the extract) through the service and write its result file atomically.

A batch sends only source_row (as the id), the coordinates and the optional date, and keeps only the result
columns; a retried batch rewrites the same file, so a batch is either absent or complete, never half-applied.
Placeholder coordinates named in the spec (e.g. 32.0,-117.0) are sent as missing: the service reports the row.
"""

from __future__ import annotations

import os
from pathlib import Path

from .extract import ROW
from .payloads import BatchPlan, BatchResult
from .spec import DatasetSpec
from .workdir import write_parquet

# One layer set per run: the first batch answered pins its set (sha256) in the run's work folder; every other batch
# sends it as X-Enrich-Expect-Layers, and a replica serving another set answers 409 (the task retries), so no
# published table mixes two sets of boundaries.
LAYERS_PIN = "layers.sha256"


def pinned_layers(work: Path) -> str | None:
    try:
        return (work / LAYERS_PIN).read_text().strip() or None
    except FileNotFoundError:
        return None


def pin_layers(work: Path, sha256: str) -> str:
    """Pin `sha256` for the run unless a batch pinned one first; returns the run's set."""
    work.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(work / LAYERS_PIN, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return pinned_layers(work) or sha256
    with os.fdopen(fd, "w") as f:
        f.write(sha256)
    return sha256


def check_pinned(work: Path, batch: int, expected: str | None, served: str | None) -> str | None:
    """The first batch answered pins the run's layer set; a batch that was answered from another set before it
    could send the pin is retried (409), so the run never mixes versions. Returns the set that answered."""
    if expected is None and served and pin_layers(work, served) != served:
        from enrich_service.client import LayersVersionMismatch

        raise LayersVersionMismatch(f"batch {batch}: answered from layer set {served[:12]}, another batch of this "
                                    f"run pinned {(pinned_layers(work) or '')[:12]}; retrying", 409)
    return served


def plan_batches(extract_path: Path) -> list[BatchPlan]:
    import pyarrow.parquet as pq

    (extract_path.parent / LAYERS_PIN).unlink(missing_ok=True)  # a cleared run pins afresh
    meta = pq.ParquetFile(extract_path).metadata
    return [{"batch": i, "rows": meta.row_group(i).num_rows} for i in range(meta.num_row_groups)]


def batch_path(work: Path, batch: int) -> Path:
    return work / "batches" / f"batch-{batch:05d}.parquet"


def request_table(spec: DatasetSpec, extract_path: Path, batch: int):
    """The columns the service needs for one batch: id (= source_row), lon, lat, date."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    c = spec.coordinates
    assert c is not None  # address specs send geocode.request_table
    names = [ROW, c.lon, c.lat] + ([spec.as_of_column] if spec.as_of_column else [])
    part = pq.ParquetFile(extract_path).read_row_group(batch, columns=names)
    lon, lat = part.column(c.lon), part.column(c.lat)
    if c.placeholders and _numeric(lon) and _numeric(lat):
        x = lon.cast(pa.float64()).to_numpy(zero_copy_only=False)
        y = lat.cast(pa.float64()).to_numpy(zero_copy_only=False)
        fake = np.zeros(len(x), dtype=bool)
        for px, py in c.placeholders:
            fake |= np.isclose(x, px, rtol=0, atol=1e-9) & np.isclose(y, py, rtol=0, atol=1e-9)
        lon = pc.if_else(pa.array(fake), pa.scalar(None, pa.float64()), lon.cast(pa.float64()))
        lat = pc.if_else(pa.array(fake), pa.scalar(None, pa.float64()), lat.cast(pa.float64()))
    cols = {"id": part.column(ROW), "lon": lon, "lat": lat}
    if spec.as_of_column:
        cols["date"] = part.column(spec.as_of_column)
    return pa.table(cols)


def enrich_batch(spec: DatasetSpec, extract_path: Path, work: Path, batch: int, client) -> BatchResult:
    """Tag batch `batch`; writes batches/batch-NNNNN.parquet (source_row + result columns). Returns a summary
    with the layers used (version, sha256)."""
    if spec.coordinates is None:  # address-only: POST /v1/geocode-join
        from .geocode import enrich_batch as geocode_batch

        return geocode_batch(spec, extract_path, work, batch, client)
    req = request_table(spec, extract_path, batch)
    expected = pinned_layers(work)
    answer, used = client.tag_table(req, layers=spec.request_layers, as_of=spec.as_of,
                                    crs=spec.coordinates.crs, date_col="date" if spec.as_of_column else None,
                                    expect_layers=expected)
    return write_batch_result(work, batch, req, answer, used, check_pinned(work, batch, expected,
                                                                          client.last_layers_sha256))


def write_batch_result(work: Path, batch: int, req, answer, used: dict, served: str | None) -> BatchResult:
    """Check the service's answer against the request, keep its result columns (by source_row) in
    batches/batch-NNNNN.parquet, and return the batch's summary with the layers used."""
    from enrich_service.client import plain_columns

    if answer.num_rows != req.num_rows:
        raise RuntimeError(f"batch {batch}: the service answered {answer.num_rows} rows for {req.num_rows}")
    if not answer.column("id").equals(req.column("id")):
        raise RuntimeError(f"batch {batch}: the service's answer is not in input order")
    result = plain_columns(answer.drop_columns([n for n in req.column_names if n != "id"]))
    result = result.rename_columns([ROW if n == "id" else n for n in result.column_names])
    write_parquet(result, batch_path(work, batch))
    return {"batch": batch, "rows": req.num_rows, "layers_sha256": served,
            "layers": {name: {"version": u.get("version"), "sha256": u.get("sha256"),
                              "versions_used": u.get("versions_used", [])} for name, u in used.items()}}


def _numeric(col) -> bool:
    import pyarrow as pa

    return pa.types.is_integer(col.type) or pa.types.is_floating(col.type) or pa.types.is_decimal(col.type)
