"""Response classes per media type."""

from __future__ import annotations

import orjson
from starlette.responses import Response

JSON = "application/json"
ARROW = "application/vnd.apache.arrow.stream"
CSV = "text/csv"
NDJSON = "application/x-ndjson"
MEDIA_TYPES = (JSON, ARROW, CSV, NDJSON)


class JSONResponse(Response):
    """orjson: numpy scalars and arrays serialize as they are, and faster than the standard library."""

    media_type = JSON

    def render(self, content: object) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS)


class ArrowResponse(Response):
    media_type = ARROW


class CSVResponse(Response):
    media_type = CSV


class NDJSONResponse(Response):
    media_type = NDJSON
