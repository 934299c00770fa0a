"""A query parameter, declared once: for OpenAPI, for strict_query (which refuses any parameter a route does not
declare), and for reading it by hand (api/common.read_query). The request options, the bulk operations and the
table formats declare theirs with it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Param:
    """A query parameter as OpenAPI documents it."""

    name: str
    description: str
    schema: Mapping[str, object] = field(default_factory=lambda: {"type": "string"})
    default: str | None = None
    required: bool = False
    example: object = None

    def openapi(self) -> dict:
        schema = dict(self.schema)
        if self.default is not None:
            schema["default"] = self.default
        out = {"name": self.name, "in": "query", "required": self.required, "schema": schema,
               "description": self.description}
        if self.example is not None:
            out["example"] = self.example
        return out
