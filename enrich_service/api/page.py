"""The page for GIS staff at `/`, and `/docs` and `/redoc`, served by the service itself with no CDN.

Our own HTML/JS/CSS lives in `enrich_service/static`. The third-party code (Leaflet, Papa Parse, Swagger UI, ReDoc)
comes from the npm registry at install time (package-lock.json; `npm ci` in scripts/install.sh and in
Dockerfile.service) into `ENRICH_WEB_ASSETS_DIR`, and is served from there under `/vendor/`. Every URL the page
uses is relative, so it also works behind a proxy that mounts the service under a prefix.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from fastapi import APIRouter, FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse, Response
from fastapi.staticfiles import StaticFiles

from ..settings import Settings, get_settings

STATIC_DIR = Path(__file__).resolve().parents[1] / "static"

# URL folder under /vendor -> the folder inside the npm package that is served (nothing else of node_modules is).
VENDOR = {
    "leaflet": "leaflet/dist",
    "papaparse": "papaparse",
    "swagger-ui": "swagger-ui-dist",
    "redoc": "redoc/bundles",
}
# The files each page needs: one missing means `npm ci` has not run, which is said plainly instead of a blank page.
NEEDS = {
    "page": ["leaflet/dist/leaflet.js", "leaflet/dist/leaflet.css", "papaparse/papaparse.min.js"],
    "docs": ["swagger-ui-dist/swagger-ui-bundle.js", "swagger-ui-dist/swagger-ui.css"],
    "redoc": ["redoc/bundles/redoc.standalone.js"],
}

router = APIRouter(include_in_schema=False)


def mount_assets(app: FastAPI, settings: Settings) -> None:
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    for url, folder in VENDOR.items():
        # check_dir=False: the service starts (and answers the API) without the front-end packages.
        app.mount(f"/vendor/{url}", StaticFiles(directory=settings.web_assets_dir / folder, check_dir=False),
                  name=f"vendor-{url}")


def _missing(page: str) -> Response | None:
    root = get_settings().web_assets_dir
    missing = [name for name in NEEDS[page] if not (root / name).is_file()]
    if not missing:
        return None
    text = (f"<!doctype html><title>Front-end packages missing</title><h1>Front-end packages missing</h1>"
            f"<p>{', '.join(missing)} not found under {root} (ENRICH_WEB_ASSETS_DIR). Install them from the npm "
            f"registry with <code>bash scripts/install.sh</code> (it runs <code>npm ci</code>). The API under "
            f"<code>/v1</code> works without them.</p>")
    return HTMLResponse(text, status_code=503)


def content_security_policy(settings: Settings) -> str:
    """The browser itself refuses any request to a host other than this service (and the tile server, when one is
    configured): ReDoc's bundle, for one, asks a public host for its logo; this policy keeps that request from ever
    leaving the browser. Inline scripts: FastAPI's /docs and /redoc pages start Swagger UI and ReDoc inline."""
    images = "'self' data: blob:"
    if settings.tile_url:
        images += " " + tile_origin(settings.tile_url)
    return (f"default-src 'self'; img-src {images}; style-src 'self' 'unsafe-inline'; "
            "script-src 'self' 'unsafe-inline'; worker-src 'self' blob:; connect-src 'self'; font-src 'self' data:; "
            "object-src 'none'; base-uri 'self'; frame-ancestors 'self'")


def tile_origin(url: str) -> str:
    """scheme://host[:port] of a Leaflet tile URL template; a {s} subdomain becomes a wildcard."""
    parts = urlsplit(url.replace("{s}", "*"))
    return f"{parts.scheme}://{parts.netloc}" if parts.scheme and parts.netloc else ""


def _html(response: Response) -> Response:
    response.headers["Content-Security-Policy"] = content_security_policy(get_settings())
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


def _prefix(request: Request) -> str:
    return request.scope.get("root_path", "").rstrip("/")


@router.get("/")
def page() -> Response:
    # Read per request: a few kB, and an edited page shows without a restart.
    return _missing("page") or _html(HTMLResponse((STATIC_DIR / "index.html").read_text(encoding="utf-8"),
                                                  headers={"Cache-Control": "no-cache"}))


@router.get("/page/config")
def page_config() -> dict:
    """What the page needs from the settings: the base map (optional) and the service's default layers."""
    settings = get_settings()
    return {"tile_url": settings.tile_url, "tile_attribution": settings.tile_attribution,
            "tile_max_zoom": settings.tile_max_zoom, "default_layers": list(settings.default_layers)}


@router.get("/docs")
def swagger_ui(request: Request) -> Response:
    prefix = _prefix(request)
    return _missing("docs") or _html(get_swagger_ui_html(
        openapi_url=f"{prefix}{request.app.openapi_url}", title=f"{request.app.title} - Swagger UI",
        swagger_js_url=f"{prefix}/vendor/swagger-ui/swagger-ui-bundle.js",
        swagger_css_url=f"{prefix}/vendor/swagger-ui/swagger-ui.css",
        swagger_favicon_url=f"{prefix}/static/favicon.svg",
        oauth2_redirect_url=f"{prefix}/docs/oauth2-redirect",
        # No badge that asks a public validator about our schema.
        swagger_ui_parameters={"validatorUrl": None},
    ))


@router.get("/docs/oauth2-redirect")
def swagger_ui_redirect() -> HTMLResponse:
    return get_swagger_ui_oauth2_redirect_html()


@router.get("/redoc")
def redoc(request: Request) -> Response:
    prefix = _prefix(request)
    return _missing("redoc") or _html(get_redoc_html(
        openapi_url=f"{prefix}{request.app.openapi_url}", title=f"{request.app.title} - ReDoc",
        redoc_js_url=f"{prefix}/vendor/redoc/redoc.standalone.js", redoc_favicon_url=f"{prefix}/static/favicon.svg",
        with_google_fonts=False,
    ))
