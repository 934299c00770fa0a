"""Admin: rebuild the index from the current layer sources, validate it, accept it and swap it in (API key required).

The accepted set (layers/accepted.py) is what every other worker and replica then follows; a refusal (409) names the
failed check in `check` and changes nothing anywhere."""

from fastapi import APIRouter, Depends, Request

from ..index import current
from ..server.reload import reload_every_worker
from ..server.security import require_admin_key
from .layers import describe_index
from .schemas import ErrorBody

router = APIRouter(prefix="/v1/admin", tags=["admin"], dependencies=[Depends(require_admin_key)])


@router.post("/reload", responses={401: {"model": ErrorBody, "description": "Missing or wrong X-API-Key"},
                                   409: {"model": ErrorBody, "description": "The new index was refused; the old one "
                                                                            "keeps serving"}},
             summary="Rebuild the index in the background, validate it, swap it in atomically (in every worker)")
async def reload(request: Request) -> dict:
    index = await reload_every_worker(request.app)
    return {"status": "reloaded", "generation": index.generation, "build_seconds": round(index.build_seconds, 3),
            "layers_sha256": index.layers_sha256, "versions": index.versions()}


@router.get("/layers", responses={401: {"model": ErrorBody, "description": "Missing or wrong X-API-Key"},
                                  503: {"model": ErrorBody, "description": "Layers still loading"}},
            summary="GET /v1/layers with the full detail: the files on the server each layer came from")
def layers_detail(request: Request) -> dict:
    return describe_index(current(request.app))
