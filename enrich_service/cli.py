"""enrich-service serve | load-postgis | reload | enrich FILE"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from .server.observability import configure_logging
from .settings import get_settings

if TYPE_CHECKING:
    import pyarrow as pa


def serve(args: argparse.Namespace) -> int:
    import uvicorn

    # Our JSON logging for every process (uvicorn workers too); uvicorn's access log is replaced by ours.
    from .server.slow_clients import PROTOCOL

    settings = get_settings()
    config = uvicorn.Config("enrich_service.main:create_app", factory=True, host=args.host, port=args.port,
                            workers=args.workers, log_config=None, access_log=False,
                            timeout_graceful_shutdown=args.graceful_seconds, http=PROTOCOL,
                            # uvicorn's hint says int; a float works (asyncio timers) and is kept as set
                            timeout_keep_alive=cast(int, settings.keep_alive_timeout_s))
    if config.workers > 1:
        from .server import workers

        workers.run(config)
    else:
        uvicorn.Server(config).run()
    return 0


def load_postgis(args: argparse.Namespace) -> int:
    import psycopg

    from .layers.store import LayerStore
    from .postgis import load_layers

    settings = get_settings()
    dsn = args.dsn or settings.postgis_dsn
    if not dsn:
        print("no PostGIS: pass --dsn or set ENRICH_POSTGIS_DSN", file=sys.stderr)
        return 2
    store = LayerStore.load(settings.manifest, settings.boundary_dir, settings.cache_dir)
    with psycopg.connect(dsn) as conn:
        tables = load_layers(conn, store)
        if args.with_reference:
            from .geocode.postgis import load_reference_postgis
            from .geocode.reference import resolve_reference

            tables += load_reference_postgis(conn, resolve_reference(settings))
    print("\n".join(tables))
    return 0


def reload(args: argparse.Namespace) -> int:
    import httpx

    from .server.security import HEADER, configured_keys

    key = args.key or next(iter(configured_keys(get_settings())), "")
    r = httpx.post(f"{args.url.rstrip('/')}/v1/admin/reload", headers={HEADER: key}, timeout=120)
    print(r.text)
    return 0 if r.status_code == 200 else 1


# ---- enrich: files in, files out ----------------------------------------------------------------------------------

CHUNK_ROWS = 200_000  # rows per chunk: memory stays bounded whatever the file's size (docs/cli.md)
ROW = "__row"  # the row number sent as the id: the answer is checked to come back in order


class CliError(Exception):
    """A failure told in one line, naming the option to change."""


@dataclass
class Job:
    """What `enrich` was asked, resolved once against the file: the mode and the columns it reads."""

    geocode: bool
    lon: str = "lon"
    lat: str = "lat"
    date: str | None = None
    date_format: str | None = None  # strptime format of text dates (--date-format); None: ISO
    address: str = "address"
    address_parts: list[str] = field(default_factory=list)  # the file's columns that make up the address
    cross_parts: list[str] = field(default_factory=list)  # --cross-street-col: address_parts[0] is the number
    number_is_block: bool = False
    city: str | None = None
    zip: str | None = None
    crs: str | None = None
    prefix: str = "enrich_"


class LocalTagger:
    """In process: the service's own code on the service's own index (no server)."""

    def __init__(self, settings, layers: str | None, as_of: str | None, min_match: str | None):
        from .bulk.options import parse_options
        from .index import build_index

        self.index = build_index(settings)
        self.settings = settings
        self.opts = parse_options({"layers": layers, "as_of": as_of}, settings)
        self.index.store.check_layers(self.opts.layers)
        self.min_match = min_match

    def tag(self, attrs: pa.Table, req: pa.Table, job: Job) -> tuple[pa.Table, dict]:
        import dataclasses

        from .bulk.options import parse_options
        from .bulk.tag_points import tag_batch
        from .io import results, tables

        opts = dataclasses.replace(self.opts, crs=parse_options({"crs": job.crs}, self.settings).crs)
        cols = tables.Columns(id=ROW, lon=job.lon, lat=job.lat, date=job.date, date_format=job.date_format)
        batch = tables.batch_from_table(req, cols)
        prepared, result = tag_batch(self.index, batch, opts, cols)
        return results.answer_table(attrs, None, prepared, result, job.prefix), result.layers_used()

    def geocode(self, attrs: pa.Table, req: pa.Table, job: Job) -> tuple[pa.Table, dict]:
        from .geocode import join

        cols = join.AddressColumns(id=ROW, address=job.address, city=job.city or "", zip=job.zip or "",
                                   date=job.date)
        records = join.records_from_table(req, cols)
        joined = join.geocode_join(self.index, records, self.opts.layers, self.opts.as_of, min_match=self.min_match)
        return join.answer_table(attrs, None, joined, job.prefix), joined.result.layers_used()


class RemoteTagger:
    """Against a running service (--url), through the project's client: Arrow, in parts, retried, one layer set."""

    def __init__(self, url: str, key: str | None, layers: str | None, as_of: str | None, min_match: str | None,
                 retries: int):
        from .client import EnrichClient

        self.client = EnrichClient(url, api_key=key, retries=retries)
        self.layers, self.as_of, self.min_match = layers, as_of, min_match
        self.pinned: str | None = None  # the layer set of the first answer: every chunk must come from it

    def _append(self, attrs: pa.Table, req: pa.Table, answer: pa.Table, used: dict, job: Job) -> pa.Table:
        from .io.results import append_results

        if answer.num_rows != req.num_rows or not answer.column(ROW).equals(req.column(ROW)):
            raise CliError(f"the service at --url answered {answer.num_rows} rows out of order for {req.num_rows}")
        self.pinned = self.pinned or self.client.last_layers_sha256
        columns = [(name, answer.column(name)) for name in answer.column_names[req.num_columns:]]
        return append_results(attrs, columns, list(used), job.prefix)

    def tag(self, attrs: pa.Table, req: pa.Table, job: Job) -> tuple[pa.Table, dict]:
        answer, used = self.client.tag_table(req, layers=self.layers, as_of=self.as_of, crs=job.crs, id_col=ROW,
                                             lon_col=job.lon, lat_col=job.lat, date_col=job.date,
                                             date_format=job.date_format,
                                             prefix=job.prefix, expect_layers=self.pinned)
        return self._append(attrs, req, answer, used, job), used

    def geocode(self, attrs: pa.Table, req: pa.Table, job: Job) -> tuple[pa.Table, dict]:
        answer, used = self.client.geocode_table(
            req, layers=self.layers, as_of=self.as_of, min_match=self.min_match, id_col=ROW, address_col=job.address,
            city_col=job.city or "city", zip_col=job.zip or "zip", date_col=job.date, prefix=job.prefix,
            expect_layers=self.pinned)
        return self._append(attrs, req, answer, used, job), used


def _resolve_job(args: argparse.Namespace, source) -> Job:
    from .io.coordinates import coordinate_columns

    names = source.columns
    explicit_geocode = args.command == "geocode" or args.address_col is not None
    lon, lat = args.lon_col or "lon", args.lat_col or "lat"
    if not explicit_geocode and (source.geometry is None or args.lon_col or args.lat_col):
        lon, lat = coordinate_columns(names, args.lon_col, args.lat_col)  # lon/lng/x..., lat/y..., as the service
    has_points = source.geometry is not None or lon in names
    address = args.address_col or "address"
    geocode = explicit_geocode or (not has_points and address in names)
    from .io.dialect import check_date_format
    from .io.tables import DATE_COLUMN

    job = Job(geocode=geocode, date=args.date_col or (DATE_COLUMN if DATE_COLUMN in names else None),
              date_format=check_date_format(args.date_format), prefix=args.prefix)
    if geocode:
        parts = [name.strip() for name in address.split(",") if name.strip()]
        cross = [name.strip() for name in (args.cross_street_col or "").split(",") if name.strip()]
        for name in parts + cross:
            if name not in names:
                raise CliError(f"{source.path} has no column {name!r} (columns: {', '.join(names)}); name the "
                               f"address column (or columns, comma-separated) with --address-col")
        if (cross or args.number_is_block) and len(parts) < 2:
            raise CliError("--cross-street-col and --number-is-block read the number from the first --address-col "
                           "column and the street from the others: name both, e.g. --address-col "
                           "street_no,street_name")
        job.address_parts, job.cross_parts, job.number_is_block = parts, cross, args.number_is_block
        job.address = parts[0] if len(parts) == 1 else _free("address", names)
        job.city = args.city_col or ("city" if "city" in names else None)
        job.zip = args.zip_col or ("zip" if "zip" in names else None)
        for option, name in (("--city-col", job.city), ("--zip-col", job.zip)):
            if name and name not in names:
                raise CliError(f"{source.path} has no column {name!r}; check {option}")
    elif source.geometry is not None and not (args.lon_col or args.lat_col):
        job.lon, job.lat = _free("lon", names), _free("lat", names)
        job.crs = args.crs or source.crs
    else:
        job.lon, job.lat, job.crs = lon, lat, args.crs
        missing = [n for n in (job.lon, job.lat) if n not in names]
        if missing:
            raise CliError(f"{source.path} has no column {missing[0]!r} (columns: {', '.join(names)}); name the "
                           f"coordinate columns with --lon-col and --lat-col, or the address column with "
                           f"--address-col to geocode")
    if job.date and job.date not in names:
        raise CliError(f"{source.path} has no column {job.date!r}; check --date-col")
    return job


def _free(name: str, taken) -> str:
    while name in taken:
        name = f"_{name}"
    return name


def _request(chunk: pa.Table, start: int, job: Job, source) -> tuple[pa.Table, pa.Table, Any]:
    """(the file's columns, the columns the tagger reads, the chunk's geometry) for one chunk."""
    import numpy as np
    import pyarrow as pa

    geometry = chunk.column(source.geometry) if source.geometry else None
    attrs = chunk.drop_columns([source.geometry]) if source.geometry else chunk
    cols: dict[str, Any] = {ROW: pa.array(np.arange(start, start + chunk.num_rows, dtype=np.int64))}
    from .geocode.compose import compose_columns, joined_text

    if job.geocode and (job.cross_parts or job.number_is_block):  # police records: number, street, cross street
        parts = job.address_parts
        cols[job.address] = pa.array(compose_columns(attrs, parts[0], parts[1:], job.cross_parts, job.number_is_block),
                                     pa.string())
    elif job.geocode:
        cols[job.address] = joined_text(attrs, job.address_parts)
    if job.geocode:
        for name in (job.city, job.zip):
            if name:
                cols[name] = attrs.column(name)
    elif job.lon in attrs.column_names:
        cols[job.lon], cols[job.lat] = attrs.column(job.lon), attrs.column(job.lat)
    else:  # points from the geometry
        from .io.files import point_coordinates

        x, y, others, empty = point_coordinates(geometry)
        if others == chunk.num_rows:
            raise CliError(f"{source.path} holds no points (polygons or lines): tag their points, e.g. a "
                           f"representative point per feature, or name coordinate columns with --lon-col/--lat-col")
        cols[job.lon], cols[job.lat] = pa.array(x, from_pandas=True), pa.array(y, from_pandas=True)
        if empty.any():  # POINT EMPTY: that row's error says so, rather than "lon: missing"
            errors = {int(i): ("geometry", "empty") for i in np.flatnonzero(empty)}
            return attrs, with_row_errors(pa.table(cols), job, errors), geometry
    if job.date:
        cols[job.date] = attrs.column(job.date)
        if job.geocode and job.date_format:  # geocode-join reads ISO dates only: read them here
            from .io.dialect import formatted_days

            days = formatted_days(attrs.column(job.date), job.date_format, job.date, {})
            cols[job.date] = pa.array(days, pa.date32())
    return attrs, pa.table(cols), geometry


def with_row_errors(req: pa.Table, job: Job, errors: dict[int, tuple[str, str]]) -> pa.Table:
    """The request table carrying rows' errors in its metadata, read by the service as a GeoJSON body's are."""
    from .io.coordinates import with_geometry

    return with_geometry(req, job.lon, job.lat, errors=errors)


def _option_words(out: pa.Table, width: int) -> pa.Table:
    """Row errors naming the service's parameter (send crs=EPSG:2230) name the command line's option (--crs)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    for i, name in enumerate(out.column_names[width:], start=width):
        col = out.column(i)
        if name.endswith("error") and pa.types.is_dictionary(col.type):
            col = col.cast(col.type.value_type)
        if (name.endswith("error") and pa.types.is_string(col.type)
                and pc.any(pc.match_substring(col, "send crs=")).as_py()):
            out = out.set_column(i, name, pc.replace_substring(col, "send crs=", "set --crs "))
    return out


def _output_geometry(out: pa.Table, width: int, req: pa.Table, geometry, job: Job, source, geo_out: bool):
    """The geometry the output carries: the file's own; or, for GeoJSON/GeoPackage, points from the geocode or
    from the coordinate columns (in --crs). `width`: the file's columns, after which the results start."""
    from .io.files import WGS84_TEXT, points_wkb
    from .io.tables import coordinate

    if geometry is not None and not job.geocode:
        return geometry, source.crs
    if not geo_out:
        return None, None
    if job.geocode:  # the geocode columns come first among the results: lon, lat, match, ...
        x = out.column(width).to_numpy(zero_copy_only=False).astype(float)
        y = out.column(width + 1).to_numpy(zero_copy_only=False).astype(float)
        return points_wkb(x, y), WGS84_TEXT
    x, y = coordinate(req, job.lon, {}), coordinate(req, job.lat, {})
    return points_wkb(x, y), job.crs or WGS84_TEXT


# ---- progress and summary -----------------------------------------------------------------------------------------

PLAIN_EVERY_S = 10.0  # not a terminal (a log): one plain line this often


class Progress:
    """A bar with rows/s and an ETA on a terminal (rich); in a log, a plain line every PLAIN_EVERY_S. CSV files,
    whose row count is unknown until read, measure progress in bytes."""

    def __init__(self, source, enabled: bool | None):
        from rich.console import Console

        self.source = source
        self.console = Console(stderr=True)
        self.live = self.console.is_terminal if enabled is None else enabled
        self.total = source.total_rows or source.size_bytes or None
        self.started = self.last_line = time.monotonic()
        self.bar: Any = None
        if self.live:
            from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeRemainingColumn

            self.bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), TaskProgressColumn(),
                                TextColumn("{task.fields[rows]:,} rows"), TextColumn("{task.fields[rate]:,.0f} rows/s"),
                                TimeRemainingColumn(), console=self.console, transient=True)
            self.task = self.bar.add_task(source.path.name, total=self.total, rows=0, rate=0.0)
            self.bar.start()

    def done_units(self, rows: int) -> int:
        return rows if self.source.total_rows else self.source.bytes_read

    def update(self, rows: int) -> None:
        now = time.monotonic()
        rate = rows / max(now - self.started, 1e-9)
        if self.bar is not None:
            self.bar.update(self.task, completed=self.done_units(rows), rows=rows, rate=rate)
        elif now - self.last_line >= PLAIN_EVERY_S:
            self.last_line = now
            share = self.done_units(rows) / self.total if self.total else None
            eta = (now - self.started) * (1 - share) / share if share else None
            print(f"enrich-service: {rows:,} rows" + (f" ({share:.0%})" if share is not None else "") +
                  f", {rate:,.0f} rows/s" + (f", about {eta:,.0f} s to go" if eta is not None else ""),
                  file=sys.stderr, flush=True)

    def stop(self) -> None:
        if self.bar is not None:
            self.bar.stop()


SHOWN_VALUES = 12  # a layer with more distinct values (neighborhoods) is summed up, not listed


class Summary:
    """Rows per layer value (district), untagged rows, rows with an error, and match levels for geocodes."""

    def __init__(self, prefix: str):
        self.prefix = prefix
        self.rows = 0
        self.counts: dict[str, Counter] = {}
        self.untagged: Counter = Counter()
        self.errors = 0
        self.first_error: str | None = None
        self.levels: Counter = Counter()
        self.used: dict = {}

    def _base(self, name: str, known) -> str:
        while name not in known and name.startswith(self.prefix):
            name = name[len(self.prefix):]
        return name

    def add(self, out: pa.Table, width: int, used: dict, start: int) -> None:
        import pyarrow.compute as pc

        from .client import merge_layers_used

        self.used = merge_layers_used(self.used, used) if self.used else used
        known = set(used) | {"error", "match"}
        for name in out.column_names[width:]:
            base = self._base(name, known)
            col = out.column(name)
            if base in used:
                self.untagged[base] += col.null_count
                counts = self.counts.setdefault(base, Counter())
                for item in pc.value_counts(col.drop_null()).to_pylist():
                    counts[str(item["values"])] += item["counts"]
            elif base == "match":
                self.levels.update({str(i["values"]): i["counts"] for i in pc.value_counts(col).to_pylist()})
            elif base == "error":
                bad = col.length() - col.null_count
                if bad and self.first_error is None:
                    row = int(pc.index(pc.is_valid(col), True).as_py())
                    self.first_error = f"row {start + row + 1}: {col[row].as_py()}"
                self.errors += bad
        self.rows += out.num_rows

    def _versions(self, layer: str) -> str:
        """The versions the rows were tagged with: one (2011), or each with its rows (2011 1,020 · 2021 6)."""
        used = self.used.get(layer, {})
        per = [v for v in used.get("versions_used", []) if v.get("points")]
        if len(per) == 1:
            return str(per[0]["version"])
        if per:
            return " · ".join(f"{v['version']} {v['points']:,}" for v in sorted(per, key=lambda v: str(v["version"])))
        return str(used.get("version") or "")

    def lines(self, dest: str, seconds: float) -> list[str]:
        out = [f"{self.rows:,} rows -> {'stdout' if dest == '-' else dest} in {seconds:,.1f} s "
               f"({self.rows / max(seconds, 1e-9):,.0f} rows/s)"]
        for layer, counts in self.counts.items():
            head = f"  {layer}" + (f" ({self._versions(layer)})" if self._versions(layer) else "") + ": "
            if len(counts) <= SHOWN_VALUES:
                order = sorted(counts, key=lambda k: (len(k), k) if k.isdigit() else (1 << 30, k))
                values = " · ".join(f"{k} {counts[k]:,}" for k in order)
            else:
                top, n = counts.most_common(1)[0]
                values = f"{len(counts)} values, most {top} {n:,}"
            out.append(head + " · ".join(filter(None, [values, f"none {self.untagged[layer]:,}"])))
        if self.levels:
            order = [lv for lv in ("exact", "interpolated", "intersection", "hundred_block", "street", "zip", "none")
                     if lv in self.levels] + sorted(set(self.levels) - {"exact", "interpolated", "intersection",
                                                                        "hundred_block", "street", "zip", "none"})
            out.append("  match levels: " + " · ".join(f"{lv} {self.levels[lv]:,}" for lv in order))
        out.append(f"  rows with an error: {self.errors:,}" + (f" (first: {self.first_error})" if self.errors else ""))
        return out


# ---- the command --------------------------------------------------------------------------------------------------

def _destination(args: argparse.Namespace, source, geocode: bool) -> tuple[str, str]:
    from .io.files import READ_FORMATS, STDOUT, WRITE_FORMATS, FileError, format_of

    if args.out == STDOUT:
        fmt = args.out_format or (source.format if source.format in WRITE_FORMATS else "csv")
        return STDOUT, format_of(STDOUT, fmt, "--out-format", WRITE_FORMATS)
    if args.out:
        dest = args.out
        fmt = format_of(dest, args.out_format, "--out-format", WRITE_FORMATS)
    else:
        fmt = args.out_format or (source.format if source.format in WRITE_FORMATS else "gpkg")
        fmt = format_of("", fmt, "--out-format", WRITE_FORMATS)
        suffix = source.path.suffix if source.format == fmt and source.path.suffix else READ_FORMATS[fmt][0]
        dest = str(source.path.with_name(f"{source.path.stem}_{'geocoded' if geocode else 'enriched'}{suffix}"))
    if Path(dest).resolve() == source.path.resolve():
        raise FileError(f"--out {dest} is the input file; name another file")
    if not Path(dest).resolve().parent.is_dir():
        raise FileError(f"--out {dest}: folder {Path(dest).parent} does not exist")
    return dest, fmt


def enrich(args: argparse.Namespace) -> int:
    """Tag (or geocode and tag) a file, chunk by chunk, in process or against --url; write the format --out names."""
    import itertools

    import pyarrow as pa

    from .io.files import STDOUT, Chunk, open_source, write_chunks

    t0 = time.monotonic()
    if args.chunk_rows < 1:
        raise CliError("--chunk-rows must be at least 1")
    source, chunks = open_source(args.file, args.format, chunk_rows=args.chunk_rows, delimiter=args.delimiter,
                                 encoding=args.encoding, layer=args.layer)
    first = next(chunks, None)
    if first is None:  # a header and no rows
        first = pa.table({name: pa.array([], pa.string()) for name in source.columns})
    job = _resolve_job(args, source)
    dest, fmt = _destination(args, source, job.geocode)
    if args.url:
        tagger: Any = RemoteTagger(args.url, args.key or os.environ.get("ENRICH_API_KEY"), args.layers, args.as_of,
                                   args.min_match, args.retries)
    else:
        tagger = LocalTagger(get_settings(), args.layers, args.as_of, args.min_match)
    geo_out = fmt in ("geojson", "gpkg")
    summary = Summary(job.prefix)
    progress = Progress(source, args.progress)
    failure: list[BaseException] = []

    def produce():
        start = 0
        try:
            for chunk in itertools.chain([first], chunks):
                attrs, req, geometry = _request(chunk, start, job, source)
                out, used = (tagger.geocode if job.geocode else tagger.tag)(attrs, req, job)
                out = _option_words(out, attrs.num_columns)
                geom, crs = _output_geometry(out, attrs.num_columns, req, geometry, job, source, geo_out)
                summary.add(out, attrs.num_columns, used, start)
                start += chunk.num_rows
                progress.update(start)
                yield Chunk(out, geom, crs)
        except BaseException as exc:  # raised inside a writer (GDAL) it would come back without its type
            failure.append(exc)
            raise

    try:
        write_chunks(dest, fmt, produce())
    except BaseException:
        if dest != STDOUT:
            Path(dest).unlink(missing_ok=True)  # no half-written output left behind
        if failure:
            raise failure[0] from None
        raise
    finally:
        progress.stop()
    print("\n".join(summary.lines(dest, time.monotonic() - t0)), file=sys.stderr)
    return 0


_SNAKE_OPTIONS = re.compile(r"\b(lon_col|lat_col|id_col|date_col|date_format|address_col|city_col|zip_col|min_match|as_of|"
                            r"nearest_within_m)\b")
FIELD_OPTIONS = {"layers": "--layers", "as_of": "--as-of", "crs": "--crs", "min_match": "--min-match",
                 "prefix": "--prefix", "date_format": "--date-format"}


def _cli_words(message: str, field: str | None = None) -> str:
    """A service message in the command line's words: its option names, the file instead of the body."""
    message = _SNAKE_OPTIONS.sub(lambda m: "--" + m.group(1).replace("_", "-"), message)
    message = re.sub(r"\bcrs=", "--crs ", message)
    message = message.replace("in the body", "in the file").replace("the body", "the file")
    option = FIELD_OPTIONS.get(field or "")
    if option and option not in message:
        message += f" (set {option})"
    return message


def one_line(exc: BaseException, args: argparse.Namespace) -> str:
    from . import errors
    from .client import ClientError, RequestRejected, ServiceUnavailable
    from .io.files import FileError

    if isinstance(exc, (CliError, FileError)):
        return str(exc)
    if isinstance(exc, errors.EnrichError):
        return _cli_words(exc.message, exc.field)
    if isinstance(exc, ServiceUnavailable):
        return f"{exc}; check --url (is the service running?)"
    if isinstance(exc, RequestRejected):
        detail = exc.detail.get("detail") or str(exc)
        if exc.status in (401, 403):
            return f"the service at {args.url} refused the request ({exc.status} {detail}); set --key"
        return _cli_words(f"the service at {args.url} refused the request: {detail}", exc.detail.get("field"))
    if isinstance(exc, ClientError):
        return f"{exc} (--url {args.url})"
    if isinstance(exc, OSError) and exc.filename:
        return f"{exc.filename}: {exc.strerror or exc}"
    return f"{type(exc).__name__}: {exc} (--verbose shows where)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="enrich-service", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="run the HTTP service")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--log-level", help="default: ENRICH_LOG_LEVEL")
    p.add_argument("--graceful-seconds", type=int, default=30, help="time in-flight requests get on shutdown")
    p.set_defaults(func=serve)

    p = sub.add_parser("load-postgis", help="load the boundary layers (and geocoder reference) into PostGIS")
    p.add_argument("--dsn", help="PostgreSQL DSN (default: ENRICH_POSTGIS_DSN)")
    p.add_argument("--with-reference", action="store_true", help="also load the geocoder's reference data")
    p.set_defaults(func=load_postgis)

    p = sub.add_parser("reload", help="ask a running service to reload its layers")
    p.add_argument("--url", default="http://127.0.0.1:8080")
    p.add_argument("--key", help="admin API key (default: the first of ENRICH_API_KEYS)")
    p.set_defaults(func=reload)

    for name, text in (("enrich", "tag a file with the layers (geocoding its addresses when it has no points), in "
                                  "process or against --url"),
                       ("geocode", "geocode and tag a file of addresses (enrich --address-col ...)")):
        p = sub.add_parser(name, help=text, description=text + ". " + FORMATS_HELP)
        _enrich_arguments(p)
    return parser


FORMATS_HELP = ("Reads CSV (any delimiter), Parquet/GeoParquet, GeoJSON, GeoPackage and shapefiles; writes CSV, "
                "Parquet, GeoJSON or GeoPackage, streamed in chunks.")


def _enrich_arguments(p: argparse.ArgumentParser) -> None:
    from .io.files import READ_FORMATS, WRITE_FORMATS

    p.add_argument("file")
    p.add_argument("--out", help="the output file, its extension naming the format (.csv .parquet .geojson .gpkg); "
                                 "'-' for stdout (default: FILE_enriched.EXT beside the input)")
    p.add_argument("--format", choices=list(READ_FORMATS), help="the input's format (default: from its extension)")
    p.add_argument("--out-format", choices=list(WRITE_FORMATS), help="the output's format (default: from --out)")
    p.add_argument("--delimiter", help="CSV: the delimiter (default: sniffed among , ; tab |)")
    p.add_argument("--encoding", help="CSV, shapefile: the text encoding (default: utf-8), e.g. windows-1252")
    p.add_argument("--layer", help="GeoPackage: the layer to read (default: the first)")
    p.add_argument("--layers", help="comma-separated layer names (default: the service's default layers)")
    p.add_argument("--as-of", help="YYYY-MM-DD: the layer versions in force that day")
    p.add_argument("--crs", help="the coordinates' CRS, e.g. EPSG:2230 (default: the file's, else EPSG:4326)")
    p.add_argument("--lon-col", help="the longitude / x column (default: lon; files with a geometry use it)")
    p.add_argument("--lat-col", help="the latitude / y column (default: lat)")
    p.add_argument("--date-col", help="each row's date: tagged with the layer versions in force that day "
                                      "(default: a column named 'date', as the service)")
    p.add_argument("--date-format", help="the dates' strptime format when not ISO YYYY-MM-DD, e.g. %%m/%%d/%%Y")
    p.add_argument("--address-col", help="geocode this address column, or these comma-separated columns joined "
                                         "(default: 'address' when the file has no coordinates)")
    p.add_argument("--cross-street-col", help="geocoding: the cross street's comma-separated columns; the first "
                                              "--address-col column is then the number (0: an intersection)")
    p.add_argument("--number-is-block", action="store_true",
                   help="geocoding: the number is a hundred block (police records), matched as '5500 block of ...'")
    p.add_argument("--city-col", help="geocoding: the city column (default: city, if any)")
    p.add_argument("--zip-col", help="geocoding: the ZIP column (default: zip, if any)")
    p.add_argument("--min-match", help="geocoding: coarser matches keep no tags (exact ... zip)")
    p.add_argument("--prefix", default="enrich_", help="in front of result columns named like input columns")
    p.add_argument("--url", help="a running service to ask (default: tag in process, no server)")
    p.add_argument("--key", help="with --url: the API key (default: ENRICH_API_KEY)")
    p.add_argument("--retries", type=int, default=4, help="with --url: retries of a chunk the service could not "
                                                         "answer (exponential backoff)")
    p.add_argument("--chunk-rows", type=int, default=CHUNK_ROWS, help="rows read, tagged and written at a time")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="the progress bar (default: on a terminal; otherwise a plain line every 10 s)")
    p.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                   help="tracebacks and the service's logs")
    p.set_defaults(func=enrich)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = get_settings()
    files = args.func is enrich
    level = "DEBUG" if args.verbose else (getattr(args, "log_level", None) or
                                          ("ERROR" if files else settings.log_level))
    configure_logging(level, json_logs=settings.json_logs and args.command == "serve")
    if not files:
        return args.func(args)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("enrich-service: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `--out - | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python flushes
        return 141
    except Exception as exc:
        if args.verbose:
            raise
        print(f"enrich-service: error: {one_line(exc, args)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
