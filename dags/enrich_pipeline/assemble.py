"""Assemble: the extract plus every batch's results, as one enriched table (enriched.parquet in the work folder).

Columns: the source's own columns, `source_row`, one column per published layer (named as the spec says; with
`<column>_version` when rows carry dates), `enrich_flags`, `enrich_error`; then internal columns (prefix `__`)
that publishing uses and drops: the point in EPSG:4326 and the quality gate's layers.

A row is unlocated (no point, no layers, the reason in `enrich_error`) when the service could not use its
coordinates, when a coordinate is not a number (from the extract), or when its point lies outside the plausible
area: the spec's `quality.plausible_area`, or else the extent of the quality gate's `within` layer (city limits)
widened by `quality.area_margin_km`. POINT(180 90), 0/0 or a longitude with the wrong sign are never published as
real points.
"""

from __future__ import annotations

from pathlib import Path

from .enrich import batch_path
from .extract import COORD_ERROR, ROW
from .payloads import Assembled, BatchResult
from .spec import DatasetSpec
from .workdir import write_parquet

LON, LAT = "__lon", "__lat"  # the point in EPSG:4326 (null where the row has no usable location)
FLAGS, ERROR = "enrich_flags", "enrich_error"


def internal(layer: str) -> str:
    return f"__layer_{layer}"


def is_internal(name: str) -> bool:
    return name.startswith("__")


def layers_used(batches: list[BatchResult]) -> dict:
    """The layer versions and sha256 used, identical across batches (else the layers changed mid-run)."""
    from enrich_service.client import ClientError, merge_layers_used

    used: dict = {}
    for b in batches:
        try:
            used = merge_layers_used(used, b["layers"])
        except ClientError as exc:
            raise RuntimeError(f"batch {b['batch']}: {exc}. Clear the run's enrich tasks to tag every batch with "
                               f"the same layers") from None
    return used


def plausible_area(spec: DatasetSpec, layers: dict | None = None) -> tuple[float, float, float, float]:
    """lon/lat bbox outside which a point is not plausible. `layers`: the service's /v1/layers answer (asked
    for when None and the spec names no area)."""
    import math

    q = spec.quality
    if q.plausible_area is not None:
        return q.plausible_area
    layer = q.within or "city_limits"
    if layers is None:
        from .hooks import EnrichServiceHook

        with EnrichServiceHook(spec.service_conn_id).get_conn() as client:
            layers = client.layers()
    boxes = [v["bbox"] for v in layers.get("layers", {}).get(layer, {}).get("versions", []) if v.get("bbox")]
    if not boxes:
        raise RuntimeError(f"{spec.name}: the service reports no extent for layer {layer!r}; "
                           f"give quality.plausible_area in the spec")
    x0, y0 = min(b[0] for b in boxes), min(b[1] for b in boxes)
    x1, y1 = max(b[2] for b in boxes), max(b[3] for b in boxes)
    dy = q.area_margin_km / 111.2
    dx = q.area_margin_km / (111.2 * max(0.1, math.cos(math.radians(max(abs(y0), abs(y1))))))
    return (x0 - dx, y0 - dy, x1 + dx, y1 + dy)


def assemble(spec: DatasetSpec, extract_path: Path, work: Path, batches: list[BatchResult], dest: Path,
             area: tuple[float, float, float, float] | None = None) -> Assembled:
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute  # noqa: F401  (pa.compute)
    import pyarrow.parquet as pq
    from pandas import isna as pd_isna
    from pandas import notna as pd_notna

    used = layers_used(batches)
    source = pq.read_table(extract_path)
    n_batches = pq.ParquetFile(extract_path).metadata.num_row_groups
    if sorted(b["batch"] for b in batches) != list(range(n_batches)):
        raise RuntimeError(f"expected results for batches 0..{n_batches - 1}, got {sorted(b['batch'] for b in batches)}")
    results = pa.concat_tables([pq.read_table(batch_path(work, i)) for i in range(n_batches)]) if n_batches else None
    if results is None or not results.column(ROW).equals(source.column(ROW)):
        raise RuntimeError("batch results do not line up with the extract's rows")

    out = source.drop_columns([COORD_ERROR]) if COORD_ERROR in source.column_names else source

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

    # The row's error: a coordinate that is not a number, else the service's, else a point outside the area.
    error = results.column("error").cast(pa.string()).to_numpy(zero_copy_only=False).astype(object)
    if COORD_ERROR in source.column_names:
        coord = source.column(COORD_ERROR).to_numpy(zero_copy_only=False)
        error = np.where(pd_notna(coord), coord, error)
    lon, lat = _wgs84(spec, source) if spec.coordinates is not None else point(results)
    area = area if area is not None else plausible_area(spec)
    located = pd_isna(error) & np.isfinite(lon) & np.isfinite(lat)
    outside = located & ~((lon >= area[0]) & (lon <= area[2]) & (lat >= area[1]) & (lat <= area[3]))
    if outside.any():
        box = ", ".join(f"{v:.4f}" for v in area)
        for i in np.flatnonzero(outside):
            error[i] = f"point ({lon[i]:.6f}, {lat[i]:.6f}) outside the plausible area [{box}]"
        keep = pa.array(~outside)
        for layer in spec.request_layers:  # an implausible point carries no layer either
            name = spec.layers[layer] if layer in spec.layers else internal(layer)
            for n in (name, f"{name}_version"):
                if n in out.column_names:
                    col = out.column(n)
                    if pa.types.is_dictionary(col.type):
                        col = col.cast(col.type.value_type)
                    out = out.set_column(out.column_names.index(n), n,
                                         pa.compute.if_else(keep, col, pa.scalar(None, col.type)))
    put(ERROR, pa.array(error, pa.string(), from_pandas=True))
    bad = ~pd_isna(error)
    lon[bad] = np.nan
    lat[bad] = np.nan
    put(LON, pa.array(lon, from_pandas=True))
    put(LAT, pa.array(lat, from_pandas=True))
    write_parquet(out, dest)
    return {"path": str(dest), "rows": out.num_rows, "layers": used, "plausible_area": list(area)}


def _wgs84(spec: DatasetSpec, source):
    import numpy as np
    import pandas as pd

    c = spec.coordinates
    assert c is not None  # address specs take the geocoded point (geocode.point)
    x = pd.to_numeric(source.column(c.lon).to_pandas(), errors="coerce").to_numpy(dtype=float, copy=True)
    y = pd.to_numeric(source.column(c.lat).to_pandas(), errors="coerce").to_numpy(dtype=float, copy=True)
    if c.crs.upper() not in ("EPSG:4326", "4326", "OGC:CRS84"):
        import pyproj

        x, y = pyproj.Transformer.from_crs(c.crs, "EPSG:4326", always_xy=True).transform(x, y)
        x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    return x, y
