"""CPU time of the bulk codecs on 1M points, in process: JSON decode/encode, Arrow decode, CSV decode/encode.

    .venv/bin/python bench/codecs_1m.py [SOURCE_ROOT]

SOURCE_ROOT (default: this checkout) is a folder holding enrich_service/ and boundaries/, so another version can be
timed on the same machine in the same hour, e.g. `git archive main enrich_service boundaries | tar -x -C /tmp/base`
then `bench/codecs_1m.py /tmp/base`. Process CPU time (min and median of the repeats), so a busy shared machine
moves the figures less than wall time would.
"""

from __future__ import annotations

import gc
import io
import sys
import time
from pathlib import Path

ROOT = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parents[1])
sys.path.insert(0, str(ROOT))
DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

import numpy as np  # noqa: E402
import orjson  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.ipc as ipc  # noqa: E402

from enrich_service.engine.tagger import Engine  # noqa: E402
from enrich_service.io import arrow, csv_text, json_body, results, tables  # noqa: E402
from enrich_service.layers.store import LayerStore  # noqa: E402
from enrich_service.points import parse_crs, prepare  # noqa: E402

N = 1_000_000
LAYERS = ["council_district", "neighborhood", "zip"]


def timed(fn, repeats: int) -> tuple[float, float]:
    runs = []
    for _ in range(repeats):
        gc.collect()
        t = time.process_time()
        fn()
        runs.append(time.process_time() - t)
    return min(runs), float(np.median(runs))


def main() -> None:
    store = LayerStore.load(ROOT / "boundaries" / "manifest.yaml", DATA / "boundaries", ROOT / ".cache" / "layers")
    engine = Engine(store)
    rng = np.random.default_rng(1)
    lon, lat = rng.uniform(-117.25, -117.0, N), rng.uniform(32.65, 32.95, N)

    def tag(batch):
        prepared = prepare(batch, parse_crs(None))
        return prepared, engine.tag(prepared.lon, prepared.lat, prepared.valid, LAYERS)

    body = orjson.dumps({"points": [{"id": i, "lon": float(x), "lat": float(y)}
                                    for i, (x, y) in enumerate(zip(lon, lat))]})
    _, batch = json_body.decode_json(body)
    prepared, result = tag(batch)
    print(f"{ROOT}: 1M points, CPU seconds (min / median)")
    print("  JSON decode  %.3f / %.3f" % timed(lambda: json_body.decode_json(body), 7))
    print("  JSON encode  %.3f / %.3f" % timed(lambda: results.encode_json(batch.ids, prepared, result, {}), 7))

    table = pa.table({"id": pa.array([f"A{i:07d}" for i in range(N)]), "lon": lon, "lat": lat})
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
