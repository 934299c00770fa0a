"""Response classes per media type."""

from __future__ import annotations

import orjson
from starlette.responses import JSONResponse as _StarletteJSON
from starlette.responses import Response, StreamingResponse

from .media import ARROW, CSV, GEOJSON, JSON, NDJSON


class JSONResponse(_StarletteJSON):
    """orjson: numpy scalars and arrays serialize as they are, and faster than the standard library."""

    media_type = JSON

    def render(self, content: object) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS)


class EncodedJSONResponse(Response):
    """A JSON answer already encoded (bulk answers are written column-wise, io/json_rows.py)."""

    media_type = JSON


class ArrowResponse(Response):
    media_type = ARROW


class CSVResponse(Response):
    media_type = CSV


class GeoJSONResponse(Response):
    media_type = GEOJSON


class NDJSONResponse(StreamingResponse):
    """Answer lines streamed as they are computed, for a request whose body has been read (spooled) already:
    Starlette then stops the stream when the client goes away instead of computing the rest for nobody."""

    media_type = NDJSON
