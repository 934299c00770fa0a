"""The media types the service reads and answers. Which of them a request may use is the registry in formats.py."""

JSON = "application/json"
ARROW = "application/vnd.apache.arrow.stream"
CSV = "text/csv"
NDJSON = "application/x-ndjson"
GEOJSON = "application/geo+json"
MULTIPART = "multipart/form-data"
