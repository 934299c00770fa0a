"""API keys: admin routes always need one; read routes only when ENRICH_READ_REQUIRES_KEY is set.

Keys come from ENRICH_API_KEYS and/or ENRICH_API_KEYS_FILE (one per line), are compared in constant time, and are
never logged.
"""

from __future__ import annotations

import hmac

from fastapi import Request

from ..errors import Unauthorized
from ..settings import Settings, get_settings

HEADER = "X-API-Key"


def configured_keys(settings: Settings) -> list[str]:
    keys = list(settings.api_keys)
    if settings.api_keys_file is not None:
        try:
            lines = settings.api_keys_file.read_text().splitlines()
        except OSError:
            lines = []
        keys += [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    return keys


def check_key(given: str, settings: Settings) -> None:
    """Refuses (401, naming the header) unless `given` is one of the configured keys."""
    keys = configured_keys(settings)
    if not keys:
        raise Unauthorized("no API keys are configured on this service (ENRICH_API_KEYS)", field=HEADER)
    # Compare against every key so timing does not reveal which key, or how much of one, matched.
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(given.encode(), key.encode())
    if not matched:
        raise Unauthorized(f"a valid {HEADER} header is required", field=HEADER)


# Async on purpose: FastAPI runs a plain-def dependency in the threadpool, a hop that cost a single lookup more
# than the lookup itself (~150 us of CPU). These only compare a few strings (and read a short keys file).
async def require_admin_key(request: Request) -> None:
    check_key(request.headers.get(HEADER, ""), get_settings())


async def require_read_key(request: Request) -> None:
    settings = get_settings()
    if settings.read_requires_key:
        check_key(request.headers.get(HEADER, ""), settings)
