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

from ..errors import InvalidInput, NotAcceptable, UnsupportedMediaType
from .arrow import encode_arrow, read_arrow_body
from .csv_text import encode_csv, read_csv_body
from .geojson import decode_geojson, encode_geojson
from .media import ARROW, CSV, GEOJSON, JSON, NDJSON
from .params import Param
from .responses import ArrowResponse, CSVResponse, EncodedJSONResponse, GeoJSONResponse, NDJSONResponse

# (body, Content-Type, **the values of the format's own query parameters) -> the input table
TableDecoder = Callable[..., pa.Table]


@dataclass(frozen=True)
class Format:
    """One media type of the bulk routes."""

    media_type: str
    response: type[Response]
    body_schema: dict | None = None  # the request body in OpenAPI (JSON: each operation's own model)
    # Table formats: the body to the input table (TableDecoder), the answer table to its bytes.
    decode_table: TableDecoder | None = None
    encode_table: Callable[[pa.Table], bytes | memoryview | list[memoryview]] | None = None
    streamed: bool = False  # answered line by line from a spooled body (NDJSON); answered only in its own kind
    aliases: tuple[str, ...] = ()  # other names clients send for it
    params: tuple[Param, ...] = ()  # query parameters its decoder reads, declared on every bulk route
    default_answer: str | None = None  # the answer's type when Accept names none (None: this type)

    @property
    def answers(self) -> bool:
        """Whether it can be an answer's type: a table format with an encoder, or JSON and NDJSON (written by each
        operation). A body-only format (a form upload) answers in its default_answer."""
        return self.encode_table is not None or self.decode_table is None


DELIMITER = Param("delimiter", "CSV bodies: comma, semicolon, tab or pipe (default: sniffed from the first lines)")
CHARSET = Param("charset", "CSV bodies and uploaded CSV files: the text's encoding, e.g. windows-1252 for a CSV "
                           "saved by Excel on Windows (default: the Content-Type's charset, else UTF-8)")
ROWS, COLUMNS = "rows", "columns"
SHAPE = Param("shape", "JSON answers: rows (default), a list of objects, one per row; or columns, one array per "
                       "column under `results` (also chosen by Accept: application/json; shape=columns)")
_BINARY = {"type": "string", "format": "binary"}
_TEXT = {"type": "string"}
FORMATS: dict[str, Format] = {f.media_type: f for f in (
    Format(JSON, EncodedJSONResponse),
    Format(ARROW, ArrowResponse, _BINARY, read_arrow_body, encode_arrow,
           aliases=("application/vnd.apache.arrow.file", "application/x-arrow")),
    Format(CSV, CSVResponse, _TEXT, read_csv_body, encode_csv, params=(DELIMITER, CHARSET)),
    Format(GEOJSON, GeoJSONResponse, {"type": "object", "description": "A FeatureCollection of Points"},
           decode_geojson, encode_geojson),
    Format(NDJSON, NDJSONResponse, _TEXT, streamed=True),
)}
MEDIA_TYPES = tuple(FORMATS)
FORMAT_PARAMS = tuple(param for fmt in FORMATS.values() for param in fmt.params)
ANSWER_PARAMS = (SHAPE,)  # parameters of the answer, declared on every bulk route
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


def accepted_ranges(accept: str) -> list[str]:
    """Accept's media ranges, best first: by quality (q, 1 when not given), then as listed; a range with q=0 is
    not acceptable and left out (RFC 9110, 12.5.1)."""
    if ";" not in accept:  # no q anywhere (the usual header): as listed
        return [part.strip().lower() for part in accept.split(",")]
    ranked = []
    for position, part in enumerate(accept.split(",")):
        base, *params = part.split(";")
        quality = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    quality = float(value.strip())
                except ValueError:
                    quality = -1.0
                if not 0 <= quality <= 1:  # a malformed weight (abc, 1.5, none): that range is ignored
                    quality = 0.0
        if quality > 0:
            ranked.append((-quality, position, base.strip().lower()))
    return [base for _, _, base in sorted(ranked)]


def accepts(accept: str | None, media_type: str) -> bool:
    """Whether Accept takes this one media type (no Accept takes any): for routes that answer in one type only."""
    if not accept:
        return True
    kind = media_type.split("/")[0] + "/*"
    return any(base in ("*/*", "", kind, media_type) for base in accepted_ranges(accept))


def response_type(accept: str | None, request_type: str) -> str:
    """The best type in Accept (by q-value, then as listed) that can answer this request; when Accept is absent or
    */* comes first, the request's own type (or the one its format names)."""
    own = FORMATS[request_type]
    default = own.default_answer or request_type
    if not accept:
        return default
    # A GeoJSON answer gives back the body's features, or a table's rows as features: a JSON batch has neither.
    answering = [t for t, fmt in FORMATS.items() if fmt.answers and fmt.streamed == own.streamed and
                 (t != GEOJSON or own.decode_table is not None)]
    ranges = accepted_ranges(accept)
    for base in ranges:
        if base in ("*/*", ""):
            return default
        if base.endswith("/*"):  # a subtype wildcard: the default if it is of that type, else the first that is
            of_type = [default] if default.startswith(base[:-1]) else [t for t in answering if t.startswith(base[:-1])]
            if of_type:
                return of_type[0]
        elif base in answering:
            return base
    if GEOJSON in ranges and own.decode_table is None:
        raise NotAcceptable(f"a {GEOJSON} answer needs the points as a table: send GeoJSON, CSV or Arrow",
                            field="Accept")
    raise NotAcceptable(f"cannot answer {accept!r} to a {request_type} request", field="Accept")


def json_shape(accept: str | None, answer_type: str, given: str | None) -> str:
    """A JSON answer's shape: rows or columns, from the `shape` parameter, else from the `shape` parameter of
    application/json in Accept (when JSON is the answer), else rows. Checked before the body is read; the parameter
    asking for columns with another answer type is refused rather than ignored."""
    shape = given
    if shape is None and accept and answer_type == JSON:
        for part in accept.split(","):
            base, *media_params = part.split(";")
            if base.strip().lower() == JSON:
                for param in media_params:
                    key, _, value = param.partition("=")
                    if key.strip().lower() == SHAPE.name:
                        shape = value.strip().strip('"').lower()
                break
    if shape is None:
        return ROWS
    if shape not in (ROWS, COLUMNS):
        raise InvalidInput(f"shape must be {ROWS} or {COLUMNS} (got {shape!r})", field=SHAPE.name)
    if shape == COLUMNS and answer_type != JSON:
        raise NotAcceptable(f"shape={COLUMNS} applies to JSON answers; this one is {answer_type}", field=SHAPE.name)
    return shape
