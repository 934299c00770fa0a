"""The registry of media types the bulk routes read and answer, and the negotiation of a request's two types.

A table format (Arrow, CSV, GeoJSON) is decoded to an Arrow table and answered from one, the same for every bulk operation;
JSON and NDJSON bodies have a shape of their own per operation (points, records), read by the operation itself.
Adding a table format is one entry here plus its decoder and encoder.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pyarrow as pa
from starlette.responses import Response

from ..errors import NotAcceptable, UnsupportedMediaType
from .arrow import encode_arrow, read_arrow_body
from .csv_text import encode_csv, read_csv_body
from .geojson import decode_geojson, encode_geojson
from .media import ARROW, CSV, GEOJSON, JSON, NDJSON
from .responses import ArrowResponse, CSVResponse, EncodedJSONResponse, GeoJSONResponse, NDJSONResponse


@dataclass(frozen=True)
class Format:
    """One media type of the bulk routes."""

    media_type: str
    response: type[Response]
    # Table formats: (body, Content-Type) -> the input table, and the answer table -> the answer's bytes.
    decode_table: Callable[[bytes, str | None], pa.Table] | None = None
    encode_table: Callable[[pa.Table], bytes | memoryview] | None = None
    streamed: bool = False  # answered line by line from a spooled body (NDJSON); answered only in its own kind
    aliases: tuple[str, ...] = ()  # other names clients send for it


FORMATS: dict[str, Format] = {f.media_type: f for f in (
    Format(JSON, EncodedJSONResponse),
    Format(ARROW, ArrowResponse, read_arrow_body, encode_arrow,
           aliases=("application/vnd.apache.arrow.file", "application/x-arrow")),
    Format(CSV, CSVResponse, read_csv_body, encode_csv),
    Format(GEOJSON, GeoJSONResponse, decode_geojson, encode_geojson),
    Format(NDJSON, NDJSONResponse, streamed=True),
)}
MEDIA_TYPES = tuple(FORMATS)
_ALIASES = {alias: f.media_type for f in FORMATS.values() for alias in f.aliases}


def media_type(content_type: str | None) -> str:
    """The request body's registered media type (none or */*: JSON)."""
    base = (content_type or JSON).split(";")[0].strip().lower()
    if base in ("", "*/*"):
        return JSON
    base = _ALIASES.get(base, base)
    if base not in FORMATS:
        raise UnsupportedMediaType(
            f"Content-Type {content_type!r} is not supported; use one of {', '.join(MEDIA_TYPES)}",
            field="Content-Type")
    return base


def response_type(accept: str | None, request_type: str) -> str:
    """The first supported type in Accept; the request's own type when Accept is absent or */*."""
    if not accept:
        return request_type
    streamed = FORMATS[request_type].streamed
    for part in accept.split(","):
        base = part.split(";")[0].strip().lower()
        if base in ("*/*", "application/*", ""):
            return request_type
        if base in FORMATS and FORMATS[base].streamed == streamed:
            return base
    raise NotAcceptable(f"cannot answer {accept!r} to a {request_type} request", field="Accept")


def decode_table(kind: str, body: bytes, content_type: str | None, delimiter: str | None = None) -> pa.Table:
    """A table body in its registered format; a CSV's delimiter as the request sets it (None: sniffed)."""
    if kind == CSV:
        return read_csv_body(body, content_type, delimiter)
    decode = FORMATS[kind].decode_table
    if decode is None:
        raise UnsupportedMediaType(f"{kind} is not a table format", field="Content-Type")
    return decode(body, content_type)
