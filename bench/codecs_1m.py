"""CPU time of the bulk codecs on 1M points, in process: JSON decode/encode (rows, and columns each way), Arrow
decode and answer, CSV decode/encode.

    .venv/bin/python bench/codecs_1m.py [SOURCE_ROOT] [--points 1000000] [--smoke]

SOURCE_ROOT (default: this checkout) is a folder holding enrich_service/ and boundaries/, so another version can be
timed on the same machine in the same hour, e.g. `git archive main enrich_service boundaries | tar -x -C /tmp/base`
then `bench/codecs_1m.py /tmp/base`. Process CPU time (min and median of the repeats), so a busy shared machine
moves the figures less than wall time would. --smoke: 5,000 points, one repeat each, the same table in seconds (CI
runs it so the script keeps working: tests/test_bench_smoke.py).
"""

from __future__ import annotations

import argparse
import gc
import io
import os
import sys
import time
from pathlib import Path


def _args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("source_root", nargs="?", type=Path, default=Path(__file__).resolve().parents[1])
    ap.add_argument("--points", type=int, default=1_000_000)
    ap.add_argument("--smoke", action="store_true", help="5,000 points, one repeat: every codec in seconds")
    args = ap.parse_args()
    if args.smoke:
        args.points = 5_000
    return args


ARGS = _args()  # before the imports below: SOURCE_ROOT decides which enrich_service they load
ROOT = ARGS.source_root
sys.path.insert(0, str(ROOT))
DATA = Path(os.environ.get("ENRICH_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))

import numpy as np  # noqa: E402
import orjson  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.ipc as ipc  # noqa: E402

from enrich_service.engine.tagger import Engine  # noqa: E402
from enrich_service.io import arrow, csv_text, json_body, results, tables  # noqa: E402
from enrich_service.layers.store import LayerStore  # noqa: E402
from enrich_service.points import parse_crs, prepare  # noqa: E402

LAYERS = ["council_district", "neighborhood", "zip"]


def timed(fn, repeats: int) -> tuple[float, float]:
    runs = []
    for _ in range(1 if ARGS.smoke else repeats):
        gc.collect()
        t = time.process_time()
        fn()
        runs.append(time.process_time() - t)
    return min(runs), float(np.median(runs))


def main() -> None:
    n = ARGS.points
    store = LayerStore.load(ROOT / "boundaries" / "manifest.yaml", DATA / "boundaries", ROOT / ".cache" / "layers")
    engine = Engine(store)
    rng = np.random.default_rng(1)
    lon, lat = rng.uniform(-117.25, -117.0, n), rng.uniform(32.65, 32.95, n)

    def tag(batch):
        prepared = prepare(batch, parse_crs(None))
        return prepared, engine.tag(prepared.lon, prepared.lat, prepared.valid, LAYERS)

    body = orjson.dumps({"points": [{"id": i, "lon": float(x), "lat": float(y)}
                                    for i, (x, y) in enumerate(zip(lon, lat))]})
    _, batch = json_body.decode_json(body)
    prepared, result = tag(batch)
    print(f"{ROOT}: {n:,} points, CPU seconds (min / median)")
    print("  JSON decode  %.3f / %.3f" % timed(lambda: json_body.decode_json(body), 7))
    print("  JSON encode  %.3f / %.3f" % timed(lambda: results.encode_json(batch.ids, prepared, result, {}), 7))
    if hasattr(results, "encode_json_columns"):  # shape=columns (issue 21); an older SOURCE_ROOT has none
        columns_body = orjson.dumps({"points": {"id": np.arange(n), "lon": lon, "lat": lat}},
                                    option=orjson.OPT_SERIALIZE_NUMPY)
        print("  JSON columns decode %.3f / %.3f" % timed(lambda: json_body.decode_json(columns_body), 7))
        print("  JSON columns encode %.3f / %.3f" % timed(
            lambda: results.encode_json_columns(batch.ids, prepared, result, {}), 7))
    print("  Arrow answer %.3f / %.3f" % timed(
        lambda: arrow.encode_arrow(results.answer_table(None, batch.ids, prepared, result)), 7))

    table = pa.table({"id": pa.array([f"A{i:07d}" for i in range(n)]), "lon": lon, "lat": lat})
    sink = io.BytesIO()
    with ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    arrow_body = sink.getvalue()
    print("  Arrow decode %.3f / %.3f" % timed(
        lambda: tables.batch_from_table(arrow.decode_arrow(arrow_body), tables.Columns()), 7))

    text = ("id,name,lon,lat\n" + "".join(f"{i},shop {i % 97},{x:.6f},{y:.6f}\n"
                                          for i, (x, y) in enumerate(zip(lon, lat)))).encode()
    csv_table = csv_text.decode_csv(text)
    csv_batch = tables.batch_from_table(csv_table, tables.Columns())
    csv_prepared, csv_result = tag(csv_batch)
    out = results.answer_table(csv_table, csv_batch.ids, csv_prepared, csv_result)
    print("  CSV decode   %.3f / %.3f" % timed(
        lambda: tables.batch_from_table(csv_text.decode_csv(text), tables.Columns()), 5))
    print("  CSV encode   %.3f / %.3f" % timed(lambda: csv_text.encode_csv(out), 5))


if __name__ == "__main__":
    main()
