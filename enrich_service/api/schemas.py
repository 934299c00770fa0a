"""Request and response shapes for the OpenAPI document. The bulk routes parse bodies themselves (a pydantic
model per point costs more than the join); these models describe what they accept and answer."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from ..bulk.geocode_join import MIN_MATCH
from ..engine.tagger import MAX_NEAREST_M
from ..geocode.matcher import LEVELS

LAYER_EXAMPLE = ["council_district", "neighborhood", "zip"]


class PointIn(BaseModel):
    id: str | int | float | None = Field(default=None, description="Echoed back; any string or number")
    lon: float = Field(description="Longitude, or x in the request CRS", examples=[-117.1627])
    lat: float = Field(description="Latitude, or y in the request CRS", examples=[32.7167])
    date: str | None = Field(default=None, description="YYYY-MM-DD: picks the layer versions in force that day")


class PointColumnsIn(BaseModel):
    """The points as one array per key, each with a value per point: the cheapest JSON body to write and read."""

    model_config = ConfigDict(extra="forbid")
    id: list[str | int | float | None] | None = Field(default=None, description="Echoed back; any strings or numbers")
    lon: list[float | None] = Field(description="Longitudes, or x in the request CRS", examples=[[-117.1627]])
    lat: list[float | None] = Field(description="Latitudes, or y in the request CRS", examples=[[32.7167]])
    date: list[str | None] | None = Field(default=None, description="YYYY-MM-DD per point")


class PipRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelled option is refused (422 naming it), never ignored
    points: list[PointIn] | PointColumnsIn = Field(
        description="A list of {id, lon, lat, date?} objects, or an object of arrays {id, lon, lat, date?}")
    layers: list[str] | str | None = Field(default=None, examples=[LAYER_EXAMPLE],
                                           description="Layers to tag with, a list or a comma-separated string "
                                                       "(default: ENRICH_DEFAULT_LAYERS)")
    as_of: str | None = Field(default=None, description="YYYY-MM-DD: the layer versions in force that day")
    crs: str | int | None = Field(default=None, description="CRS of lon/lat, e.g. EPSG:2230 or 2230 "
                                                            "(default EPSG:4326)")
    nearest_within_m: float | None = Field(default=None, ge=0, le=MAX_NEAREST_M,
                                           description="Outside every polygon but within this many metres of "
                                                       "one: that polygon, with the distance")


class PipRow(BaseModel):
    """One answer per point, in input order: for each layer `<layer>` (its key) and `<layer>_rule`."""

    model_config = ConfigDict(extra="allow")
    id: str | int | float | bool | None = None
    flags: str | None = None
    error: str | None = None


class RowError(BaseModel):
    row: int
    id: str | int | float | bool | None = None
    field: str | None = None
    detail: str


class LayerUsed(BaseModel):
    version: str
    sha256: str
    versions_used: list[dict]


class PipResponse(BaseModel):
    results: list[PipRow]
    count: int
    layers: dict[str, LayerUsed]
    errors: list[RowError]


class PointAnswer(BaseModel):
    """GET /v1/pip: each layer's key under the layer's name (null where none), plus labels and rules."""

    model_config = ConfigDict(extra="allow")
    lon: float
    lat: float
    labels: dict[str, str | None]
    rules: dict[str, str | None]
    details: dict[str, dict]
    flags: list[str]
    layers: dict[str, LayerUsed]


class AddressRecord(BaseModel):
    id: str | int | float | None = Field(default=None, description="Echoed back; any string or number")
    address: str = Field(description="Street address or intersection", examples=["4608 Gardena Avenue"])
    city: str | None = Field(default=None, description="Optional; a city other than San Diego is flagged")
    zip: str | int | None = Field(default=None, description="Optional 5-digit ZIP: disambiguates same-named "
                                                            "streets and is the fallback location")
    lon: float | None = Field(default=None, description="Optional coordinates from an earlier geocode, checked "
                                                        "for the known bad cases (city centroid, 0/0, swapped)")
    lat: float | None = None
    date: str | None = Field(default=None, description="YYYY-MM-DD: tag with the layer versions in force that day")


class GeocodeJoinRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelled option is refused (422 naming it)
    records: list[AddressRecord] = Field(min_length=1)
    layers: list[str] | str | None = Field(default=None, examples=[LAYER_EXAMPLE],
                                           description="Layers to tag with (default: ENRICH_DEFAULT_LAYERS)")
    as_of: str | None = Field(default=None, description="YYYY-MM-DD: the layer versions in force that day")
    nearest_within_m: float | None = Field(default=None, ge=0, le=MAX_NEAREST_M)
    min_match: str | None = Field(default=None, description=MIN_MATCH.description)


class GeocodeRow(BaseModel):
    """One answer per record, in input order; then `<layer>` and `<layer>_rule` for each layer."""

    model_config = ConfigDict(extra="allow")
    id: str | int | float | bool | None = None
    lon: float | None
    lat: float | None
    match: str = Field(description=f"One of {', '.join(LEVELS)}")
    score: float = Field(ge=0, le=1)
    matched_address: str | None = Field(description="The reference address, block, intersection or street matched")
    reason: str | None = Field(description="Why the match is not more precise (or none)")
    flags: str | None = None
    error: str | None = None


class GeocodeJoinResponse(BaseModel):
    results: list[GeocodeRow]
    count: int
    layers: dict[str, LayerUsed]
    geocode_reference: str = Field(description="sha256 of the reference the geocodes come from")
    errors: list[RowError]


class ErrorBody(BaseModel):
    detail: str
    code: str
    field: str | None = None
    row: int | None = None


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": text}
    for status, text in ((400, "Malformed body"), (406, "Accept not supported, or an input column the answer's "
                                                             "type cannot hold"),
                         (408, "The body paused longer than ENRICH_BODY_TIMEOUT_S"), (413, "Body or batch too large"),
                         (415, "Content-Type not supported, or a CSV charset undeclared and not UTF-8"),
                         (422, "A field is missing, of the wrong type or out of range, or an unknown parameter; the "
                               "message names it"),
                         (503, "Layers still loading"))
}


def inline_schema(model: type[BaseModel]) -> dict:
    """The model's JSON schema with its $defs inlined: a request body documented through openapi_extra cannot
    point into components, and local $defs do not resolve from inside an OpenAPI document."""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def resolve(node):
        if isinstance(node, dict):
            ref = node.get("$ref", "")
            if ref.startswith("#/$defs/"):
                return resolve(defs[ref.rsplit("/", 1)[1]])
            return {k: resolve(v) for k, v in node.items()}
        if isinstance(node, list):
            return [resolve(v) for v in node]
        return node

    return resolve(schema)
