"""The media types the service reads and answers, and the content coding it reads (none: bodies come as they are).
Which of the types a request may use is the registry in formats.py."""

from collections.abc import Iterable

JSON = "application/json"
ARROW = "application/vnd.apache.arrow.stream"
CSV = "text/csv"
NDJSON = "application/x-ndjson"
GEOJSON = "application/geo+json"
MULTIPART = "multipart/form-data"


def compressed(encodings: Iterable[str]) -> str | None:
    """The first coding other than identity in Content-Encoding header values (one header or several, each a list),
    or None when the body is sent as it is."""
    for value in encodings:
        for coding in value.split(","):
            coding = coding.strip().lower()
            if coding not in ("", "identity"):
                return coding
    return None
