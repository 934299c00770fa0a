"""Extract: read a dataset's source (CSV, GeoJSON or Parquet file or URL; or a SQL query) into the run's Parquet.

The extract keeps every source row and column as read, and adds `source_row` (0..n-1), the key every later step
joins on. It is written in row groups of `batch_rows`: batch i of the enrich step is row group i.
"""

from __future__ import annotations

from pathlib import Path

from .spec import DatasetSpec, resolve
from .workdir import atomic_path, write_parquet

ROW = "source_row"
GEOMETRY_LON, GEOMETRY_LAT = "geometry_lon", "geometry_lat"  # a GeoJSON source's point coordinates


def extract(spec: DatasetSpec, dest: Path) -> dict:
    table = read_source(spec, dest.parent)
    if ROW in table.column_names:
        table = table.drop_columns([ROW])
    import pyarrow as pa

    table = table.append_column(ROW, pa.array(range(table.num_rows), pa.int64()))
    write_parquet(table, dest, row_group_size=max(1, spec.batch_rows))
    return {"path": str(dest), "rows": table.num_rows, "columns": table.column_names}


def read_source(spec: DatasetSpec, scratch: Path):
    src = spec.source
    if src.kind == "sql":
        return _read_sql(src.sql, src.conn_id)
    location = resolve(src.path)
    path = _fetch(location, scratch) if location.startswith(("http://", "https://")) else Path(location)
    if not path.exists():
        raise FileNotFoundError(f"{spec.name}: source {location} does not exist")
    if src.kind == "csv":
        return _read_csv(path, src.column_types)
    if src.kind == "parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path)
    return _read_geojson(path)


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
    geom_col = [f.name for f in table.schema if f.metadata and b"geoarrow.wkb" in f.metadata.values()]
    geom_col = geom_col[0] if geom_col else "wkb_geometry"
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
