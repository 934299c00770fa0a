"""Extract: read a dataset's source (CSV, GeoJSON or Parquet file or URL; or a SQL query) into the run's Parquet.

The extract keeps every source row and column as read, and adds `source_row` (0..n-1), the key every later step
joins on. It is written in row groups of `batch_rows`: batch i of the enrich step is row group i.

Column types are pinned by the spec: `source.column_types` (CSV) fixes a column's type, and the coordinate columns
are always float64. A coordinate that is not a number (`32.71590O`) becomes null and the row carries the reason in
the internal column `__coordinate_error` (published as its `enrich_error`): one bad value is a row error, never a
text column that would switch the placeholder check off. A source that cannot be parsed raises SourceUnreadable
(retrying cannot fix it).
"""

from __future__ import annotations

from pathlib import Path

from .payloads import Extracted
from .spec import GEOMETRY_LAT, GEOMETRY_LON, DatasetSpec, resolve
from .workdir import atomic_path, write_parquet

ROW = "source_row"
COORD_ERROR = "__coordinate_error"


class SourceUnreadable(ValueError):
    """The source is there but is not what the spec says (a corrupt file, a value of the wrong type)."""


def extract(spec: DatasetSpec, dest: Path) -> Extracted:
    table = read_source(spec, dest.parent)
    if ROW in table.column_names:
        table = table.drop_columns([ROW])
    import pyarrow as pa

    table = table.append_column(ROW, pa.array(range(table.num_rows), pa.int64()))
    if spec.coordinates is not None:
        table = numeric_coordinates(table, spec.coordinates.lon, spec.coordinates.lat)
    write_parquet(table, dest, row_group_size=max(1, spec.batch_rows))
    return {"path": str(dest), "rows": table.num_rows, "columns": table.column_names}


def read_source(spec: DatasetSpec, scratch: Path):
    src = spec.source
    if src.kind == "sql":
        assert src.sql is not None and src.conn_id is not None  # the spec requires them for kind sql
        return _read_sql(src.sql, src.conn_id)
    assert src.path is not None  # the spec requires it for the file kinds
    location = resolve(src.path)
    path = _fetch(location, scratch) if location.startswith(("http://", "https://")) else Path(location)
    if not path.exists():
        raise FileNotFoundError(f"{spec.name}: source {location} does not exist")
    try:
        if src.kind == "csv":
            text = [c for c in (spec.coordinates.lon, spec.coordinates.lat)] if spec.coordinates else []
            return _read_csv(path, {**src.column_types, **{c: "string" for c in text}})
        if src.kind == "parquet":
            import pyarrow.parquet as pq

            return pq.read_table(path)
        return _read_geojson(path)
    except (OSError, ValueError, RuntimeError) as exc:
        if isinstance(exc, (FileNotFoundError, PermissionError)):
            raise
        raise SourceUnreadable(f"{spec.name}: cannot read {location} as {src.kind}: {exc}") from exc


def numeric_coordinates(table, lon: str, lat: str):
    """lon and lat as float64; a value that is not a number is null, with the reason in COORD_ERROR."""
    import numpy as np
    import pandas as pd
    import pyarrow as pa

    errors = np.full(table.num_rows, None, dtype=object)
    for name in (lon, lat):
        if name not in table.column_names:
            raise SourceUnreadable(f"the source has no coordinate column {name!r} (columns: {table.column_names})")
        col = table.column(name)
        if pa.types.is_floating(col.type):
            continue
        if pa.types.is_integer(col.type) or pa.types.is_decimal(col.type) or pa.types.is_null(col.type):
            values = col.cast(pa.float64())
        else:
            raw = col.cast(pa.string()).to_pandas()
            text = raw.str.strip()
            parsed = pd.to_numeric(text, errors="coerce")
            bad = (text.notna() & (text != "") & parsed.isna()).to_numpy()
            for i in np.flatnonzero(bad):
                message = f"{name} {raw.iloc[i]!r} is not a number"
                errors[i] = message if errors[i] is None else f"{errors[i]}; {message}"
            values = pa.array(parsed.to_numpy(dtype=float), pa.float64(), from_pandas=True)
        table = table.set_column(table.column_names.index(name), name, values)
    return table.append_column(COORD_ERROR, pa.array(errors, pa.string()))


def _fetch(url: str, scratch: Path) -> Path:
    import httpx

    dest = scratch / ("source" + Path(url.split("?")[0]).suffix)
    with atomic_path(dest) as tmp, httpx.stream("GET", url, timeout=300, follow_redirects=True) as r:
        r.raise_for_status()
        with open(tmp, "wb") as f:
            for chunk in r.iter_bytes(1 << 20):
                f.write(chunk)
    return dest


def _read_csv(path: Path, column_types: dict[str, str]):
    import pyarrow as pa
    import pyarrow.csv as pacsv

    types = {name: pa.type_for_alias(t) for name, t in column_types.items()}
    # Dates stay text unless a spec asks otherwise: "2021-01-04" is published as it was read.
    return pacsv.read_csv(path, convert_options=pacsv.ConvertOptions(column_types=types, timestamp_parsers=[]))


def _read_geojson(path: Path):
    import numpy as np
    import pyarrow as pa
    import pyogrio
    import shapely

    meta, table = pyogrio.read_arrow(path)
    wkb = [f.name for f in table.schema if f.metadata and b"geoarrow.wkb" in f.metadata.values()]
    geom_col = wkb[0] if wkb else "wkb_geometry"
    geoms = shapely.from_wkb(table.column(geom_col).to_numpy(zero_copy_only=False))
    if meta.get("crs") not in (None, "EPSG:4326", "OGC:CRS84"):
        import pyproj

        to_wgs84 = pyproj.Transformer.from_crs(meta["crs"], "EPSG:4326", always_xy=True)
        geoms = shapely.transform(geoms, lambda xy: np.column_stack(to_wgs84.transform(xy[:, 0], xy[:, 1])))
    # Points as they are; any other geometry by a point on its surface.
    kinds = shapely.get_type_id(geoms)
    pts = np.where(kinds == 0, geoms, shapely.point_on_surface(geoms))
    x = shapely.get_x(pts)
    y = shapely.get_y(pts)
    table = table.drop_columns([geom_col])
    table = table.append_column(GEOMETRY_LON, pa.array(x, from_pandas=True))
    return table.append_column(GEOMETRY_LAT, pa.array(y, from_pandas=True))


def _read_sql(sql: str, conn_id: str):
    import pyarrow as pa
    from airflow.providers.postgres.hooks.postgres import PostgresHook

    df = PostgresHook(postgres_conn_id=conn_id).get_df(resolve(sql), df_type="pandas")
    return pa.Table.from_pandas(df, preserve_index=False)
