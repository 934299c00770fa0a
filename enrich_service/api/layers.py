"""GET /v1/layers: what the service answers with, where each file came from, and its sha256."""

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response

from ..errors import InvalidInput, redact_paths
from ..index import current
from ..io.dates import parse_date
from ..layers.features import display_features
from .common import offload, strict_query
from .schemas import ERROR_RESPONSES

router = APIRouter(prefix="/v1", tags=["layers"], dependencies=[Depends(strict_query)])

GEOJSON = "application/geo+json"


@router.get("/layers", summary="Layers, versions, effective dates, feature counts, bbox, source and sha256")
def list_layers(request: Request) -> dict:
    return redact_paths(describe_index(current(request.app)))  # the full detail, file paths too: /v1/admin/layers


def describe_index(index) -> dict:
    return {
        "source": index.store.source_mode,
        "generation": index.generation,
        "built_at": index.built_at.isoformat(),
        "build_seconds": round(index.build_seconds, 3),
        "layers": index.store.describe(),
        "geocode_reference": index.geocoder.describe() if index.geocoder else None,
    }


# Each layer's features as GeoJSON for maps (the page at /): display only, answers come from the index.
@router.get("/layers/{layer}/features", responses={**ERROR_RESPONSES, 200: {"content": {GEOJSON: {}}}},
            summary="One version of a layer as GeoJSON, simplified for display (maps, the page at /)")
async def layer_features(
    request: Request,
    layer: str,
    version: Annotated[str | None, Query(description="A version name from GET /v1/layers, e.g. 2011")] = None,
    as_of: Annotated[str | None, Query(description="YYYY-MM-DD: the version in force that day (instead of "
                                                   "`version`); neither: the newest")] = None,
    simplify: Annotated[float, Query(ge=0, le=1000, description="Simplification tolerance in metres (0: the "
                                                                 "published shapes). Display only: lookups always "
                                                                 "use the full shapes")] = 20,
) -> Response:
    index = current(request.app)
    store = index.store
    store.check_layers([layer])
    if version is not None and as_of is not None:
        raise InvalidInput("give version or as_of, not both", field="version")
    if version is not None:
        chosen = next((v for v in store.versions[layer] if v.version == version), None)
        if chosen is None:
            known = ", ".join(v.version for v in store.versions[layer])
            raise InvalidInput(f"layer {layer} has no version {version!r}; versions: {known}", field="version")
    else:
        chosen = store.version_on(layer, parse_date(as_of, "as_of"))
    features = await offload(display_features, chosen, simplify)
    headers = {"ETag": features.etag, "Cache-Control": "public, max-age=3600", "Vary": "Accept-Encoding",
               "X-Enrich-Version": chosen.version, "X-Enrich-Sha256": chosen.source.sha256}
    if request.headers.get("if-none-match") == features.etag:
        return Response(status_code=304, headers=headers)
    if "gzip" in request.headers.get("accept-encoding", ""):
        return Response(features.gzipped, media_type=GEOJSON, headers={**headers, "Content-Encoding": "gzip"})
    return Response(features.body, media_type=GEOJSON, headers=headers)
