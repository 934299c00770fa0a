"""Files in and out for the command line, streamed in chunks: CSV (any dialect), Parquet and GeoParquet, and through
GDAL (pyogrio) GeoJSON, GeoPackage and shapefiles; written as CSV, Parquet (GeoParquet when there is a geometry),
GeoJSON or GeoPackage. A chunk is an Arrow table; a geometry travels beside it as WKB with its CRS.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from .csv_text import encode_csv
from .dialect import sniff_delimiter

# format -> file extensions; the first of each is what a default output name uses.
READ_FORMATS = {
    "csv": (".csv", ".tsv", ".txt"),
    "parquet": (".parquet", ".geoparquet", ".pq"),
    "geojson": (".geojson", ".json"),
    "gpkg": (".gpkg",),
    "shp": (".shp", ".zip"),
}
WRITE_FORMATS = ("csv", "parquet", "geojson", "gpkg")
_OGR_DRIVERS = {"geojson": "GeoJSON", "gpkg": "GPKG"}
STDOUT = "-"
WGS84_TEXT = "EPSG:4326"


class FileError(Exception):
    """A file that cannot be read or written as asked; the message names the option to change."""


def format_of(path: str, given: str | None, option: str, formats) -> str:
    if given:
        if given not in formats:
            raise FileError(f"{option} {given!r} is not one of {', '.join(formats)}")
        return given
    suffix = Path(path).suffix.lower()
    for name, suffixes in READ_FORMATS.items():
        if suffix in suffixes and name in formats:
            return name
    raise FileError(f"cannot tell the format of {path!r} from its extension; set {option} "
                    f"({', '.join(formats)})")


def crs_text(value: object) -> str:
    """A CRS (EPSG code, WKT, PROJJSON) as the short text the `crs` option takes: EPSG:n where there is one."""
    from pyproj import CRS

    crs = CRS.from_user_input(value)
    epsg = crs.to_epsg()
    if epsg:
        return f"EPSG:{epsg}"
    authority = crs.to_authority()
    return ":".join(authority) if authority else crs.to_wkt()


@dataclass
class Source:
    path: Path
    format: str
    total_rows: int | None = None  # known for Parquet and GDAL formats; CSV is counted by bytes
    size_bytes: int = 0
    geometry: str | None = None  # the WKB geometry column's name in each chunk
    crs: str | None = None  # the geometry's CRS
    bytes_read: int = 0  # CSV: how far the reader has got, for the progress bar
    columns: list[str] = field(default_factory=list)


def open_source(path: str, fmt: str | None = None, *, chunk_rows: int, delimiter: str | None = None,
                encoding: str | None = None, layer: str | None = None) -> tuple[Source, Iterator[pa.Table]]:
    """The file's description and an iterator over its chunks (about chunk_rows rows each)."""
    p = Path(path)
    fmt = format_of(path, fmt, "--format", READ_FORMATS)
    if not p.exists():
        raise FileError(f"{path}: no such file")
    source = Source(path=p, format=fmt, size_bytes=p.stat().st_size)
    if fmt == "csv":
        return source, _csv_chunks(source, chunk_rows, delimiter, encoding)
    if fmt == "parquet":
        return source, _parquet_chunks(source, chunk_rows)
    return source, _ogr_chunks(source, chunk_rows, layer, encoding)


# ---- CSV ----------------------------------------------------------------------------------------------------------

_PROBE = 1 << 16


def _csv_chunks(source: Source, chunk_rows: int, delimiter: str | None, encoding: str | None) -> Iterator[pa.Table]:
    """Every column as text, as the service reads a CSV body: "00123" and TRUE come out as they went in."""
    enc = (encoding or "utf-8").lower().replace("_", "-")
    with open(source.path, "rb") as f:
        probe = f.read(_PROBE)
    try:
        text = probe.decode("utf-8-sig" if enc in ("utf-8", "utf8") else enc, errors="strict")
    except UnicodeDecodeError as exc:
        if exc.start < len(probe) - 4:  # not a character cut at the end of the probe
            raise FileError(f"{source.path} is not {enc} (byte {exc.start}); set --encoding, e.g. "
                            f"--encoding windows-1252") from None
        text = probe[:exc.start].decode("utf-8-sig" if enc in ("utf-8", "utf8") else enc)
    except LookupError:
        raise FileError(f"--encoding {encoding!r} is not an encoding Python knows (e.g. utf-8, windows-1252)") from None
    if delimiter is None:  # the service's own sniffing, so a file reads the same through the CLI as uploaded
        delimiter = sniff_delimiter(text)
    if len(delimiter) != 1:
        raise FileError(f"--delimiter must be one character (got {delimiter!r})")
    header = next(csv.reader(io.StringIO(text), delimiter=delimiter), None)
    if not header or header == [""]:
        raise FileError(f"{source.path} is empty: a CSV needs a header row")
    if len(set(header)) != len(header):
        twice = sorted({n for n in header if header.count(n) > 1})
        raise FileError(f"{source.path}: column {twice[0]!r} appears more than once; column names must be unique "
                        f"(or set --delimiter if the header was split wrongly)")
    source.columns = header
    # Blocks of 1 MB, gathered into chunks: the reader runs blocks ahead, and with large blocks that costs hundreds
    # of MB (200k-row blocks: +250 MB; 1 MB blocks: +75 MB, and faster). One thread: no faster here either.
    read = pacsv.ReadOptions(column_names=header, skip_rows=1, encoding="utf8" if enc in ("utf-8", "utf8") else enc,
                             use_threads=False, block_size=1 << 20)
    parse = pacsv.ParseOptions(delimiter=delimiter, ignore_empty_lines=len(header) > 1, newlines_in_values=True)
    convert = pacsv.ConvertOptions(column_types={name: pa.string() for name in header}, strings_can_be_null=False)
    with open(source.path, "rb") as f:
        try:
            reader = pacsv.open_csv(f, read_options=read, parse_options=parse, convert_options=convert)
            batches: list[pa.RecordBatch] = []
            rows = 0
            for batch in reader:
                batches.append(batch)
                rows += batch.num_rows
                if rows >= chunk_rows:
                    source.bytes_read = min(f.tell(), source.size_bytes)
                    yield pa.Table.from_batches(batches).combine_chunks()
                    batches, rows = [], 0
            if batches:
                yield pa.Table.from_batches(batches).combine_chunks()
        except (pa.ArrowInvalid, UnicodeDecodeError) as exc:
            message = str(exc).splitlines()[0]
            if "UTF8" in message or "UTF-8" in message:
                raise FileError(f"{source.path} holds text that is not {enc}; set --encoding, e.g. "
                                f"--encoding windows-1252") from None
            raise FileError(f"{source.path} is not a CSV this can read ({message}); check --delimiter "
                            f"and --format") from None
    source.bytes_read = source.size_bytes


# ---- Parquet and GeoParquet ---------------------------------------------------------------------------------------

def _parquet_chunks(source: Source, chunk_rows: int) -> Iterator[pa.Table]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(source.path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise FileError(f"{source.path} is not a Parquet file ({exc}); check --format") from None
    source.total_rows = pf.metadata.num_rows
    source.columns = pf.schema_arrow.names
    geo = json.loads((pf.schema_arrow.metadata or {}).get(b"geo", b"null"))
    if geo:
        name = geo.get("primary_column", "geometry")
        spec = geo.get("columns", {}).get(name, {})
        if spec.get("encoding", "WKB").upper() != "WKB":
            raise FileError(f"{source.path}: GeoParquet geometry encoded as {spec['encoding']}; only WKB is read")
        source.geometry = name
        # GeoParquet: no crs key means OGC:CRS84 (lon/lat), a null crs means unknown.
        source.crs = crs_text(spec["crs"]) if spec.get("crs") else "OGC:CRS84"
    for batch in pf.iter_batches(batch_size=chunk_rows):
        yield pa.Table.from_batches([batch])


# ---- GeoJSON, GeoPackage, shapefile -------------------------------------------------------------------------------

def _ogr_chunks(source: Source, chunk_rows: int, layer: str | None, encoding: str | None) -> Iterator[pa.Table]:
    import pyogrio
    from pyogrio.errors import DataLayerError, DataSourceError

    try:
        info = pyogrio.read_info(source.path, layer=layer, encoding=encoding)
    except (DataSourceError, DataLayerError) as exc:
        hint = "--layer" if "layer" in str(exc).lower() else "--format"
        raise FileError(f"{source.path}: {str(exc).splitlines()[0]}; check {hint}") from None
    source.total_rows = int(info["features"]) if info.get("features", -1) >= 0 else None
    source.crs = crs_text(info["crs"]) if info.get("crs") else None
    source.columns = list(info["fields"])
    with pyogrio.open_arrow(source.path, layer=layer, encoding=encoding, batch_size=chunk_rows,
                            use_pyarrow=True) as (_meta, reader):
        for i, name in enumerate(reader.schema.names):
            if (reader.schema.field(i).metadata or {}).get(b"ARROW:extension:name") == b"geoarrow.wkb":
                source.geometry = name
        for batch in reader:
            yield pa.Table.from_batches([batch])


# ---- geometry -----------------------------------------------------------------------------------------------------

def point_coordinates(wkb: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, np.ndarray, int, np.ndarray]:
    """x, y of each point geometry (NaN for a missing or empty one), how many rows hold another geometry
    type (also NaN: the row is reported as missing its coordinates), and which rows hold an empty point."""
    import shapely

    geoms = shapely.from_wkb(np.asarray(wkb.to_numpy(zero_copy_only=False), dtype=object))
    kinds = shapely.get_type_id(geoms)
    empty = (kinds == 0) & shapely.is_empty(geoms)
    points = (kinds == 0) & ~empty
    x = np.full(len(geoms), np.nan)
    y = np.full(len(geoms), np.nan)
    x[points] = shapely.get_x(geoms[points])
    y[points] = shapely.get_y(geoms[points])
    others = int(((kinds != 0) & ~shapely.is_missing(geoms)).sum())
    return x, y, others, empty


def points_wkb(x: np.ndarray, y: np.ndarray) -> pa.Array:
    """Point geometries as WKB, null where a coordinate is missing."""
    import shapely

    ok = np.isfinite(x) & np.isfinite(y)
    geoms = np.full(len(x), None, dtype=object)
    geoms[ok] = shapely.points(x[ok], y[ok])
    return pa.array(shapely.to_wkb(geoms), pa.binary())


# ---- writers ------------------------------------------------------------------------------------------------------

@dataclass
class Chunk:
    table: pa.Table
    geometry: pa.Array | pa.ChunkedArray | None = None  # WKB
    crs: str | None = None


GEOMETRY = "geometry"


def _geometry_name(table: pa.Table) -> str:
    name = GEOMETRY
    while name in table.column_names:
        name = f"_{name}"
    return name


def write_chunks(dest: str, fmt: str, chunks: Iterator[Chunk]) -> None:
    """Write the chunks as one file (or stdout, dest "-") in `fmt`."""
    first = next(chunks, None)
    if first is None:
        raise FileError("the input has no rows and no header")
    if fmt == "csv":
        _write_csv(dest, first, chunks)
    elif fmt == "parquet":
        _write_parquet(dest, first, chunks)
    else:
        _write_ogr(dest, fmt, first, chunks)


def _csv_table(chunk: Chunk) -> pa.Table:
    from ..client import plain_columns

    table = plain_columns(chunk.table)  # every chunk the same schema, every format able to hold it
    if chunk.geometry is not None:  # a geometry read from the file: as WKT, which GIS tools read back
        import shapely

        wkt = shapely.to_wkt(shapely.from_wkb(np.asarray(chunk.geometry.to_numpy(zero_copy_only=False), dtype=object)))
        table = table.append_column(_geometry_name(table), pa.array(wkt, pa.string()))
    return table


def _write_csv(dest: str, first: Chunk, rest: Iterator[Chunk]) -> None:
    out = sys.stdout.buffer if dest == STDOUT else open(dest, "wb")
    try:
        table = _csv_table(first)
        out.write(encode_csv(table))
        header = len(encode_csv(table.slice(0, 0)))
        for chunk in rest:
            out.write(memoryview(encode_csv(_csv_table(chunk)))[header:])
        out.flush()
    finally:
        if out is not sys.stdout.buffer:
            out.close()


def _geo_metadata(name: str, crs: str | None) -> bytes:
    from pyproj import CRS

    column: dict = {"encoding": "WKB", "geometry_types": ["Point"]}
    if crs and crs != "OGC:CRS84":
        column["crs"] = CRS.from_user_input(crs).to_json_dict()
    return json.dumps({"version": "1.1.0", "primary_column": name, "columns": {name: column}}).encode()


def _with_geometry(chunk: Chunk) -> pa.Table:
    from ..client import plain_columns

    table = plain_columns(chunk.table)  # every chunk the same schema, every format able to hold it
    if chunk.geometry is None:
        return table
    return table.append_column(_geometry_name(table), chunk.geometry)


def _write_parquet(dest: str, first: Chunk, rest: Iterator[Chunk]) -> None:
    import pyarrow.parquet as pq

    table = _with_geometry(first)
    schema = table.schema
    if first.geometry is not None:  # GeoParquet: the geometry column named in the file's metadata
        name = table.column_names[-1]
        schema = schema.with_metadata({**(schema.metadata or {}), b"geo": _geo_metadata(name, first.crs)})
    sink = pa.PythonFile(sys.stdout.buffer, mode="w") if dest == STDOUT else dest
    with pq.ParquetWriter(sink, schema) as writer:
        writer.write_table(table.cast(schema))
        for chunk in rest:
            writer.write_table(_with_geometry(chunk).cast(schema))


def _write_ogr(dest: str, fmt: str, first: Chunk, rest: Iterator[Chunk]) -> None:
    import pyogrio

    if first.geometry is None:
        raise FileError(f"{fmt} needs a geometry: the input has none")
    if dest == STDOUT and fmt == "gpkg":
        raise FileError("a GeoPackage cannot be written to stdout; name a file with --out, or choose another "
                        "format with --out-format (geojson, csv, parquet)")
    crs = first.crs or WGS84_TEXT
    if fmt == "geojson" and crs != WGS84_TEXT:  # RFC 7946: GeoJSON is lon/lat WGS84, without a `crs` member
        given = crs
        first, rest, crs = _to_wgs84(first, given), (_to_wgs84(c, given) for c in rest), WGS84_TEXT
    table = _with_geometry(first)
    name = table.column_names[-1]
    fields = [f.with_metadata({b"ARROW:extension:name": b"geoarrow.wkb"}) if f.name == name else f
              for f in table.schema]
    schema = pa.schema(fields)

    def batches():
        yield from table.cast(schema).to_batches()
        for chunk in rest:
            yield from _with_geometry(chunk).cast(schema).to_batches()

    if dest != STDOUT:
        Path(dest).unlink(missing_ok=True)  # GDAL will not overwrite a GeoJSON file
    try:
        pyogrio.write_arrow(pa.RecordBatchReader.from_batches(schema, batches()),
                            "/vsistdout/" if dest == STDOUT else dest, driver=_OGR_DRIVERS[fmt],
                            geometry_name=name, geometry_type="Point", crs=crs)
    except Exception:
        if dest == STDOUT and _stdout_closed():  # `--out - | head`: as for CSV and Parquet
            raise BrokenPipeError("stdout was closed") from None
        raise


def _stdout_closed() -> bool:
    """Whether the reader of stdout (a pipe) has gone: GDAL writes there itself and reports it as any failure."""
    import select

    try:
        poll = select.poll()
        poll.register(sys.stdout.fileno(), select.POLLOUT)
        return any(ev & (select.POLLERR | select.POLLHUP) for _, ev in poll.poll(0))
    except (OSError, ValueError, AttributeError):
        return False


def _to_wgs84(chunk: Chunk, crs: str) -> Chunk:
    """The chunk's points turned from `crs` to lon/lat."""
    import shapely

    from ..points import parse_crs, to_wgs84

    assert chunk.geometry is not None
    to = to_wgs84(parse_crs(crs))  # cached: one transformer for every chunk
    geoms = shapely.from_wkb(np.asarray(chunk.geometry.to_numpy(zero_copy_only=False), dtype=object))
    moved = shapely.transform(geoms, lambda xy: np.column_stack(to.transform(xy[:, 0], xy[:, 1])))
    return Chunk(chunk.table, pa.array(shapely.to_wkb(moved), pa.binary()), WGS84_TEXT)
