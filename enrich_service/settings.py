"""The single source of configuration: environment variables prefixed ENRICH_ (or an env file)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parents[1]


def _split_csv(value: object) -> object:
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ENRICH_", env_file=None, extra="ignore")

    # Layers
    manifest: Path = REPO_ROOT / "boundaries" / "manifest.yaml"
    boundary_dir: Path | None = Field(
        default=None, description="Folder holding the layer files; unset: download from the manifest URLs"
    )
    cache_dir: Path = Path.home() / ".cache" / "enrich-service"
    reference_dir: Path | None = Field(default=None, description="Folder holding the geocoder's reference CSVs")
    default_layers: Annotated[list[str], NoDecode] = ["council_district", "neighborhood", "zip"]
    accepted_dir: Path | None = Field(
        default=None, description="Folder of the accepted layer set, shared by every replica (layers/accepted.py); "
                                  "unset: under cache_dir, one per boundary folder and manifest")
    follow_interval_s: float = Field(default=2.0, ge=0, description="How often a worker looks for a newly accepted "
                                                                    "layer set (0: never; SIGHUP still reloads)")

    # Engine
    use_grid: bool = Field(default=True, description="Answer through the grid fast path (off: exact path only)")
    grid_cells: int = Field(default=2048, ge=64, le=16384, description="Fast-path grid cells per side")
    threads: int = Field(default=0, ge=0, description="Worker threads for the batch engine (0: one per core)")

    # Limits
    max_batch: int = Field(default=10_000_000, ge=1, description="Most points in one request")
    max_body_bytes: int = Field(default=1 << 30, ge=1024, description="Largest request body")
    request_timeout_s: float = 120.0
    header_timeout_s: float = Field(default=15.0, gt=0, description="A request's headers must arrive within this "
                                                                   "(slow clients; slow_clients.py)")
    body_timeout_s: float = Field(default=60.0, gt=0, description="Longest wait for the next piece of a request "
                                                                 "body before answering 408 (slow clients)")
    keep_alive_timeout_s: float = Field(default=5.0, gt=0, description="Idle keep-alive connections closed after")
    geocode_cache_max_bytes: int = Field(default=256 << 20, ge=0, description="Geocode result cache bound (bytes "
                                                                            "of keys and results, estimated)")
    keep_freed_mb: int = Field(default=256, ge=0, description="Freed heap kept for the next bulk request (glibc); "
                                                              "0: glibc's defaults. See memory.py")
    warm_heap_mb: int = Field(default=48, ge=0, description="Heap touched at start-up and after each reload, kept "
                                                           "for the first bulk request (a 1M-point request's "
                                                           "share); counts in the idle RSS. See memory.py")

    # Security
    api_keys: Annotated[list[str], NoDecode] = []
    api_keys_file: Path | None = None
    read_requires_key: bool = False
    cors_origins: Annotated[list[str], NoDecode] = []

    # The page at / (enrich_service/api/page.py)
    tile_url: str | None = Field(
        default=None, description="Base map tiles for the page, e.g. https://tiles.example.org/{z}/{x}/{y}.png "
                                  "(a Leaflet URL template); unset: the page draws the boundary layers on a plain "
                                  "background, fully usable offline")
    tile_attribution: str = Field(default="", description="Credit shown under the base map (HTML allowed)")
    tile_max_zoom: int = Field(default=19, ge=1, le=24)
    web_assets_dir: Path = Field(
        default=REPO_ROOT / "node_modules",
        description="The npm packages the page and /docs serve (leaflet, papaparse, swagger-ui-dist, redoc), as "
                    "installed by `npm ci` from package-lock.json (scripts/install.sh; /app/node_modules in the image)")

    # CSV answers and portal files: formula escaping (csv_safety.py)
    csv_formula_escape: Literal["text", "all", "off"] = "text"
    csv_raw_columns: Annotated[list[str], NoDecode] = Field(default=[], description="Columns written without "
                                                                                  "formula escaping")

    # Logs
    log_level: str = "INFO"
    json_logs: bool = True

    # PostGIS (CLI load-postgis and the DAGs)
    postgis_dsn: str | None = None

    # Lists come from the environment as "a,b,c".
    _split_lists = field_validator("default_layers", "api_keys", "cors_origins", "csv_raw_columns",
                                   mode="before")(_split_csv)


def accepted_dir(settings: Settings) -> Path:
    if settings.accepted_dir is not None:
        return settings.accepted_dir
    import hashlib

    source = f"{settings.boundary_dir or 'download'}|{Path(settings.manifest).resolve()}"
    return Path(settings.cache_dir) / "accepted" / hashlib.sha256(source.encode()).hexdigest()[:12]


@lru_cache
def get_settings() -> Settings:
    return Settings()
