"""Response classes per media type."""

from __future__ import annotations

from collections.abc import Mapping

import orjson
from starlette.background import BackgroundTask
from starlette.responses import JSONResponse as _StarletteJSON
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

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
    """An Arrow IPC stream; given as a list of parts (io/arrow_stream.stream_parts), each part is sent as it is, the
    answer table's own column buffers among them, with Content-Length: no copy of the whole stream is made."""

    media_type = ARROW
    parts: list[memoryview] | None = None

    def __init__(self, content: object = None, status_code: int = 200, headers: Mapping[str, str] | None = None,
                 media_type: str | None = None, background: BackgroundTask | None = None) -> None:
        if isinstance(content, list):
            self.parts = [memoryview(part).cast("B") for part in content]
            headers = {**(headers or {}), "content-length": str(sum(part.nbytes for part in self.parts))}
            content = None
        super().__init__(content, status_code, headers, media_type, background)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.parts is None:
            return await super().__call__(scope, receive, send)
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        last = len(self.parts) - 1
        for i, part in enumerate(self.parts):
            await send({"type": "http.response.body", "body": part, "more_body": i < last})
        if not self.parts:
            await send({"type": "http.response.body", "body": b""})
        if self.background is not None:
            await self.background()


class CSVResponse(Response):
    media_type = CSV


class GeoJSONResponse(Response):
    media_type = GEOJSON


class NDJSONResponse(StreamingResponse):
    """Answer lines streamed as they are computed, for a request whose body has been read (spooled) already:
    Starlette then stops the stream when the client goes away instead of computing the rest for nobody."""

    media_type = NDJSON
