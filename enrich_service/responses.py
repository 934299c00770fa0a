"""Response classes per media type."""

from __future__ import annotations

import orjson
from starlette.responses import JSONResponse as _StarletteJSON
from starlette.responses import Response, StreamingResponse

JSON = "application/json"
ARROW = "application/vnd.apache.arrow.stream"
CSV = "text/csv"
NDJSON = "application/x-ndjson"
MEDIA_TYPES = (JSON, ARROW, CSV, NDJSON)


class JSONResponse(_StarletteJSON):
    """orjson: numpy scalars and arrays serialize as they are, and faster than the standard library."""

    media_type = JSON

    def render(self, content: object) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS)


class ArrowResponse(Response):
    media_type = ARROW


class CSVResponse(Response):
    media_type = CSV


class NDJSONResponse(StreamingResponse):
    """Answer lines streamed as they are computed, for a request whose body has been read (spooled) already:
    Starlette then stops the stream when the client goes away instead of computing the rest for nobody."""

    media_type = NDJSON


class NDJSONStreamResponse(Response):
    """Streams answer lines while the request body is still being read, in one coroutine.

    Starlette's StreamingResponse listens for disconnects by calling receive() concurrently, which swallows the
    request body chunks a streaming route still needs; here the content iterator is the only reader.
    """

    media_type = NDJSON

    def __init__(self, content, status_code: int = 200, headers: dict | None = None):
        super().__init__(None, status_code=status_code, headers=headers, media_type=NDJSON)
        # Streamed: no Content-Length (the empty body of __init__ would set one to 0).
        self.raw_headers = [(k, v) for k, v in self.raw_headers if k != b"content-length"]
        self.body_iterator = content

    async def __call__(self, scope, receive, send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        async for chunk in self.body_iterator:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
