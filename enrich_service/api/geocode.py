"""Geocode-join: addresses to places, tagged with the boundary layers in the same call.

POST /v1/geocode-join takes address records in every registered media type (columns named by query parameters);
GET /v1/geocode answers one address for GIS staff.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request

from ..bulk.geocode_join import GEOCODE_JOIN, MIN_MATCH, geocode_join
from ..bulk.options import OPTION_PARAMS, QueryOptions
from ..errors import InvalidInput
from ..geocode import join
from ..geocode.join import Records
from ..index import current
from ..io.params import Param
from ..io.responses import JSONResponse
from ..settings import get_settings
from .common import declared, query_options, read_query, require_accepts_json, strict_query
from .factory import add_bulk_route
from .schemas import ERROR_RESPONSES, GeocodeJoinRequest, GeocodeJoinResponse, GeocodeRow

router = APIRouter(prefix="/v1", tags=["geocode"], dependencies=[Depends(strict_query)])

ADDRESS = Param("address", "Street address or intersection", required=True,
                example="4608 Gardena Avenue, San Diego, CA 92110")
CITY = Param("city", "Optional; a city other than San Diego is flagged")
ZIP = Param("zip", "5-digit ZIP")
_SINGLE = (ADDRESS, CITY, ZIP, MIN_MATCH)


@router.get("/geocode", response_model=GeocodeRow, responses=ERROR_RESPONSES,
            openapi_extra=declared(ADDRESS, CITY, ZIP, *(OPTION_PARAMS[name] for name in GEOCODE_JOIN.options),
                                   MIN_MATCH),
            summary="Geocode one address and tag it with every requested layer")
def get_geocode(request: Request, options: Annotated[QueryOptions, Depends(query_options)]):
    require_accepts_json(request)
    query = read_query(request.query_params, _SINGLE)
    address, city, zip_code = query[ADDRESS.name], query[CITY.name], query[ZIP.name]
    if address is None:
        raise InvalidInput("address is required", field="address")
    index = current(request.app)
    opts = options.parsed(get_settings())
    records = Records(ids=[None], addresses=[address], cities=[city] if city else None,
                      zips=[zip_code] if zip_code else None)
    joined = geocode_join(index, records, opts, join.check_min_match(query[MIN_MATCH.name]))
    row = join.rows(None, joined)[0]
    del row["id"], row["error"]
    return JSONResponse(row, headers=GEOCODE_JOIN.headers(index, joined))


add_bulk_route(router, "/geocode-join", GEOCODE_JOIN, name="post_geocode_join", json_request=GeocodeJoinRequest,
               response_model=GeocodeJoinResponse,
               summary="Geocode a batch of address records and tag them (JSON, Arrow IPC stream, CSV or NDJSON)")
