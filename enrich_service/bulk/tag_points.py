"""Tag points: a batch of points (JSON, a table, NDJSON lines) tagged with every requested layer."""

from __future__ import annotations

from ..engine.tagger import TagResult
from ..index import ServiceIndex
from ..io.tables import Columns
from ..points import PointBatch, Prepared, prepare
from ..server.observability import POINTS
from .options import Options


def tag_batch(index: ServiceIndex, batch: PointBatch, opts: Options, cols: Columns) -> tuple[Prepared, TagResult]:
    prepared = prepare(batch, opts.crs, cols.lon, cols.lat)
    result = index.engine.tag(prepared.lon, prepared.lat, prepared.valid, opts.layers, opts.as_of, batch.dates,
                              opts.nearest_within_m)
    tagged = int(prepared.valid.sum())
    for layer in opts.layers:
        POINTS.labels(layer).inc(tagged)
    return prepared, result
