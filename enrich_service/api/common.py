"""What every bulk route shares: request options, the body size limit, and running CPU work off the event loop."""

from __future__ import annotations

import datetime as dt
import tempfile
from dataclasses import dataclass

from fastapi import Request
from starlette.concurrency import run_in_threadpool

from ..engine.tagger import MAX_NEAREST_M
from ..errors import InvalidInput, PayloadTooLarge
from ..points import parse_crs, parse_date
from ..settings import Settings, get_settings


@dataclass(frozen=True)
class Options:
    layers: list[str]
    as_of: dt.date | None
    crs: object  # pyproj CRS
    nearest_within_m: float | None


def parse_options(raw: dict, settings: Settings) -> Options:
    """Options from a JSON body or from query parameters; every problem names its field."""
    layers = raw.get("layers")
    if layers is None or layers == "":
        layers = list(settings.default_layers)
    elif isinstance(layers, str):
        layers = [name.strip() for name in layers.split(",") if name.strip()]
    elif not (isinstance(layers, list) and all(isinstance(name, str) for name in layers)):
        raise InvalidInput("layers must be a list of layer names (or a comma-separated string)", field="layers")
    if not layers:
        raise InvalidInput("layers is empty; name at least one layer", field="layers")
    nearest = raw.get("nearest_within_m")
    if isinstance(nearest, bool):
        raise InvalidInput("nearest_within_m must be a number of metres, not true/false", field="nearest_within_m")
    if nearest is not None and nearest != "":
        try:
            nearest = float(nearest)
        except (TypeError, ValueError):
            raise InvalidInput(f"nearest_within_m {nearest!r} is not a number", field="nearest_within_m") from None
        if not 0 <= nearest <= MAX_NEAREST_M:  # also refuses NaN
            raise InvalidInput(f"nearest_within_m must be between 0 and {MAX_NEAREST_M:g} metres",
                               field="nearest_within_m")
    else:
        nearest = None
    crs = raw.get("crs")
    if crs is not None and (isinstance(crs, bool) or not isinstance(crs, (str, int))):
        raise InvalidInput("crs must be a string such as 'EPSG:2230' or an EPSG number", field="crs")
    return Options(layers=list(dict.fromkeys(layers)), as_of=parse_date(raw.get("as_of"), "as_of"),
                   crs=parse_crs(crs), nearest_within_m=nearest)


async def read_body(request: Request, settings: Settings | None = None) -> bytes:
    """The whole body, refusing early (by Content-Length) or as soon as it passes the configured maximum."""
    limit = (settings or get_settings()).max_body_bytes
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"body of {int(declared)} bytes exceeds the limit of {limit} bytes", field="body")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"body exceeds the limit of {limit} bytes", field="body")
        chunks.append(chunk)
    return b"".join(chunks)


SPOOL_IN_MEMORY_BYTES = 16 * 1024 * 1024


async def spool_body(request: Request, settings: Settings | None = None) -> tempfile.SpooledTemporaryFile:
    """The whole body in a spool (memory up to 16 MB, then a temp file), read before any answer is sent.

    Streamed answers are read back from the spool in chunks: most HTTP clients (curl, httpx, requests) send the
    whole body before they read a byte of the answer, so answering while still reading deadlocks once the socket
    buffers fill; and holding a 10M-row body in memory is what streaming is meant to avoid."""
    limit = (settings or get_settings()).max_body_bytes
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"body of {int(declared)} bytes exceeds the limit of {limit} bytes", field="body")
    spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY_BYTES, prefix="enrich-body-")
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"body exceeds the limit of {limit} bytes", field="body")
            spool.write(chunk)
    except BaseException:
        spool.close()
        raise
    spool.seek(0)
    return spool


def check_batch_size(n: int, settings: Settings, field: str = "points") -> None:
    if n == 0:
        raise InvalidInput(f"{field} is empty: send at least one point", field=field)
    if n > settings.max_batch:
        raise PayloadTooLarge(f"{n} rows exceed the batch limit of {settings.max_batch} "
                              f"(ENRICH_MAX_BATCH); split the batch", field=field)


async def offload(fn, *args):
    """Tagging and encoding are CPU work: run them in a thread so health checks and small lookups stay answered."""
    return await run_in_threadpool(fn, *args)
