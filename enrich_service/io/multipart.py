"""A file uploaded the way a browser form (or `curl -F file=@points.csv`) sends it: multipart/form-data with one
file part, and text parts that carry the request's options.

The body has been read under the service's size limit already; Starlette's parser (python-multipart) splits it.
The file's media type comes from its name first, since browsers label a .csv application/vnd.ms-excel and curl
labels most files application/octet-stream, then from its part's Content-Type, then from its first bytes.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from python_multipart.multipart import parse_options_header
from starlette.datastructures import Headers, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from ..errors import InvalidInput, MalformedBody, UnknownParameter, UnsupportedMediaType
from .formats import media_type
from .geojson import looks_like_geojson
from .json_body import without_bom
from .media import ARROW, CSV, GEOJSON, JSON, MULTIPART, NDJSON

BY_EXTENSION = {".csv": CSV, ".tsv": CSV, ".tab": CSV, ".txt": CSV, ".geojson": GEOJSON, ".json": JSON,
                ".arrow": ARROW, ".arrows": ARROW, ".ipc": ARROW, ".ndjson": NDJSON, ".jsonl": NDJSON}
_BY_PART_TYPE = {CSV: CSV, "text/tab-separated-values": CSV, "application/csv": CSV, GEOJSON: GEOJSON,
                 JSON: JSON, ARROW: ARROW, NDJSON: NDJSON}
_MAX_FIELDS = 50
# The request body in OpenAPI: the file, and any query parameter of the route as a text field.
FORM_SCHEMA = {"type": "object", "required": ["file"], "properties": {
    "file": {"type": "string", "format": "binary", "description": "A CSV, GeoJSON, JSON or Arrow file"}}}


@dataclass
class Upload:
    data: bytes
    media_type: str  # the file's media type, as the bulk decoders know them
    content_type: str  # its part's Content-Type as sent (a charset declared there applies to the file)
    filename: str | None
    fields: dict[str, str]  # the form's text parts: request options


def is_form(content_type: str | None) -> bool:
    return (content_type or "").split(";")[0].strip().lower() == MULTIPART


async def unwrap(content_type: str | None, read: Callable[[], Awaitable[bytes]], params: Mapping[str, Any],
                 known: Collection[str]) -> tuple[Upload | None, str | None, str, dict[str, Any]]:
    """A bulk request's body as its route reads it: (the upload or None, the Content-Type and registered media type
    of what is to be decoded, the route's parameters with a form's fields added). Only a form is read here."""
    if not is_form(content_type):
        return None, content_type, media_type(content_type), dict(params)
    upload = await read_upload(await read(), content_type or "")
    return upload, upload.content_type, upload.media_type, form_options(upload.fields, params, known)


async def _once(body: bytes) -> AsyncGenerator[bytes, None]:
    yield body


async def read_upload(body: bytes, content_type: str, max_field_bytes: int = 1 << 16) -> Upload:
    """The one file of a multipart/form-data body, with its media type and the form's other (text) fields."""
    _, params = parse_options_header(content_type)
    if not params.get(b"boundary"):
        raise MalformedBody("multipart/form-data without a boundary; let the client (browser, curl -F) set the "
                            "Content-Type", field="Content-Type")
    parser = MultiPartParser(Headers({"content-type": content_type}), _once(body), max_files=2,
                             max_fields=_MAX_FIELDS, max_part_size=max_field_bytes)
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        raise MalformedBody(f"the form cannot be read: {exc.message}", field="body") from None
    try:
        files = [(name, value) for name, value in form.multi_items() if isinstance(value, UploadFile)]
        fields: dict[str, str] = {}
        for name, value in form.multi_items():
            if isinstance(value, str):
                if name in fields:
                    raise InvalidInput(f"form field {name!r} is given twice; give it once", field=name)
                fields[name] = value
        if not files:
            raise InvalidInput("the form has no file part; send the file as e.g. curl -F file=@points.csv",
                               field="file")
        if len(files) > 1:
            raise InvalidInput(f"the form has several files ({', '.join(name for name, _ in files)}); send one "
                               f"per request", field=files[1][0])
        name, upload = files[0]
        data = await upload.read()
        part_type = upload.content_type or "application/octet-stream"
        return Upload(data=data, media_type=file_media_type(upload.filename, part_type, data, name),
                      content_type=part_type, filename=upload.filename, fields=fields)
    finally:
        await form.close()


def file_media_type(filename: str | None, part_type: str, data: bytes, field: str = "file") -> str:
    suffix = PurePosixPath(filename or "").suffix.lower()
    kind = BY_EXTENSION.get(suffix) or _BY_PART_TYPE.get(part_type.split(";")[0].strip().lower())
    if kind is None:
        if suffix not in ("", ".dat", ".bin"):
            raise UnsupportedMediaType(f"file {filename!r}: {suffix} files are not read here; upload a CSV, "
                                       f"GeoJSON, JSON or Arrow file", field=field)
        head = without_bom(data[:64]).lstrip()
        kind = JSON if head.startswith((b"{", b"[")) else CSV
    if kind == JSON and looks_like_geojson(data):
        kind = GEOJSON
    if kind == NDJSON:
        raise UnsupportedMediaType("NDJSON is streamed: send it as the request body (Content-Type: "
                                   f"{NDJSON}), not in a form", field=field)
    return kind


def form_options(fields: dict[str, str], query: Mapping[str, Any], known: Collection[str]) -> dict[str, Any]:
    """The query's options with the form's text fields added: a browser form sends its options as fields. A field
    the route does not take is refused (as in the query string); one given in both with another value too."""
    merged = dict(query)
    for name, value in fields.items():
        if name not in known:
            raise UnknownParameter.of(name, known)
        given = query.get(name)
        if given not in (None, "") and str(given) != value:
            raise InvalidInput(f"{name} is given in both the form ({value[:60]!r}) and the query string "
                               f"({str(given)[:60]!r}); give it once", field=name)
        merged[name] = value
    return merged


_SUFFIX = {CSV: ".csv", GEOJSON: ".geojson", JSON: ".json", ARROW: ".arrows"}


def content_disposition(filename: str | None, answer_type: str) -> str | None:
    """The answer to an upload as a download named after the file: stops.geojson -> stops-enriched.geojson."""
    stem = PurePosixPath((filename or "").replace("\\", "/")).stem
    if not stem:
        return None
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in stem)[:100]
    return f'attachment; filename="{safe}-enriched{_SUFFIX.get(answer_type, "")}"'
