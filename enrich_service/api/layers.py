"""GET /v1/layers: what the service answers with, where each file came from, and its sha256."""

from fastapi import APIRouter, Request

from ..errors import redact_paths
from ..index import current

router = APIRouter(prefix="/v1", tags=["layers"])


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
        "geocode_reference": geocoder.describe() if (geocoder := index.extras.get("geocoder")) else None,
    }
