"""enrich-service serve | load-postgis | reload | enrich FILE"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .server.observability import configure_logging
from .settings import get_settings


def serve(args: argparse.Namespace) -> int:
    import uvicorn

    # Our JSON logging for every process (uvicorn workers too); uvicorn's access log is replaced by ours.
    from .server.slow_clients import PROTOCOL

    settings = get_settings()
    config = uvicorn.Config("enrich_service.main:create_app", factory=True, host=args.host, port=args.port,
                            workers=args.workers, log_config=None, access_log=False,
                            timeout_graceful_shutdown=args.graceful_seconds, http=PROTOCOL,
                            timeout_keep_alive=settings.keep_alive_timeout_s)
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


def enrich(args: argparse.Namespace) -> int:
    """Tag a CSV or Parquet file in process (no server): the file's columns plus the layer columns."""
    import pyarrow.parquet as pq

    from .bulk.options import parse_options
    from .bulk.tag_points import tag_batch
    from .index import build_index
    from .io import csv_text, results, tables

    settings = get_settings()
    src = Path(args.file)
    # CSV as the service reads it: every cell as text, so the output keeps "00123" and TRUE as they were.
    table = pq.read_table(src) if src.suffix == ".parquet" else csv_text.decode_csv(src.read_bytes())
    cols = tables.Columns(id=args.id_col, lon=args.lon_col, lat=args.lat_col, date=args.date_col)
    opts = parse_options({"layers": args.layers, "as_of": args.as_of, "crs": args.crs}, settings)
    index = build_index(settings)
    batch = tables.batch_from_table(table, cols)
    prepared, result = tag_batch(index, batch, opts, cols)
    out = results.answer_table(table, batch.ids, prepared, result)
    dest = Path(args.out) if args.out else src.with_name(f"{src.stem}_enriched{src.suffix}")
    if dest.suffix == ".parquet":
        pq.write_table(out, dest)
    else:
        dest.write_bytes(csv_text.encode_csv(out))
    print(json.dumps({"output": str(dest), "rows": out.num_rows, "layers": result.layers_used()}, indent=2))
    return 0


def geocode(args: argparse.Namespace) -> int:
    """Geocode and tag a CSV or Parquet file of addresses in process (no server), with the service's rule: the
    file's columns, untouched, plus the geocode and layer columns (colliding names prefixed)."""
    from collections import Counter

    import pyarrow.parquet as pq

    from .bulk.options import parse_options
    from .geocode import join
    from .index import build_index
    from .io import csv_text

    settings = get_settings()
    src = Path(args.file)
    table = pq.read_table(src) if src.suffix == ".parquet" else csv_text.decode_csv(src.read_bytes())  # cells as text
    cols = join.AddressColumns(id=args.id_col, address=args.address_col, city=args.city_col, zip=args.zip_col)
    opts = parse_options({"layers": args.layers, "as_of": args.as_of}, settings)
    index = build_index(settings)
    records = join.records_from_table(table, cols)
    joined = join.geocode_join(index, records, opts.layers, opts.as_of, min_match=join.check_min_match(args.min_match))
    out = join.answer_table(table, records.ids, joined, join.check_prefix(args.prefix))
    dest = Path(args.out) if args.out else src.with_name(f"{src.stem}_geocoded{src.suffix}")
    if dest.suffix == ".parquet":
        pq.write_table(out, dest)
    else:
        dest.write_bytes(csv_text.encode_csv(out))
    levels = {str(k): int(v) for k, v in Counter(joined.geocoded.match.tolist()).items()}
    print(json.dumps({"output": str(dest), "rows": out.num_rows, "match_levels": levels,
                      "layers": joined.result.layers_used()}, indent=2))
    return 0


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

    p = sub.add_parser("enrich", help="tag a CSV or Parquet file in process")
    p.add_argument("file")
    p.add_argument("--out")
    p.add_argument("--layers")
    p.add_argument("--as-of")
    p.add_argument("--crs")
    p.add_argument("--id-col", default="id")
    p.add_argument("--lon-col", default="lon")
    p.add_argument("--lat-col", default="lat")
    p.add_argument("--date-col")
    p.set_defaults(func=enrich)

    p = sub.add_parser("geocode", help="geocode and tag a CSV or Parquet file of addresses in process")
    p.add_argument("file")
    p.add_argument("--out")
    p.add_argument("--layers")
    p.add_argument("--as-of")
    p.add_argument("--min-match", help="coarser matches keep no tags (exact ... zip)")
    p.add_argument("--prefix", default="enrich_", help="in front of result columns named like input columns")
    p.add_argument("--id-col", default="id")
    p.add_argument("--address-col", default="address")
    p.add_argument("--city-col", default="city")
    p.add_argument("--zip-col", default="zip")
    p.set_defaults(func=geocode)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = get_settings()
    level = "DEBUG" if args.verbose else (getattr(args, "log_level", None) or settings.log_level)
    configure_logging(level, json_logs=settings.json_logs and args.command == "serve")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
