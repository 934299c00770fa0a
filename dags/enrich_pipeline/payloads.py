"""What the tasks hand each other through XCom, as types.

TypedDicts rather than dataclasses: on the wire an XCom stays a plain JSON object (readable in the UI, and no class
needs adding to Airflow's `allowed_deserialization_classes` on every worker), while mypy checks every producer and
consumer against these shapes.
"""

from __future__ import annotations

from typing import Any, NotRequired, TypedDict


class Extracted(TypedDict):
    """extract: the source as extract.parquet, a row group per batch."""

    path: str
    rows: int
    columns: list[str]


class BatchPlan(TypedDict):
    """plan_batches: one mapped enrich_batch task per row group."""

    batch: int
    rows: int


class LayerUsed(TypedDict):
    version: str | None
    sha256: str | None
    versions_used: list[dict[str, Any]]


class BatchResult(TypedDict):
    """enrich_batch: batches/batch-NNNNN.parquet is written; the layer set that answered it."""

    batch: int
    rows: int
    layers_sha256: str | None
    layers: dict[str, LayerUsed]


class Assembled(TypedDict):
    """assemble: enriched.parquet, and the layers every batch was tagged with."""

    path: str
    rows: int
    layers: dict[str, Any]
    plausible_area: list[float]


class MatchLevel(TypedDict):
    level: str
    rows: int
    share: float
    tagged: int
    tagged_share: float
    ambiguous: int
    untagged_other: int


class QualityStats(TypedDict):
    """quality_gate: what the gate measured (published in the metadata, without the id lists)."""

    rows: int
    should_match: int
    unmatched: int
    unmatched_share: float
    unlocated: int
    unlocated_share: float
    outside_area: int
    max_unmatched_share: float
    max_unlocated_share: float | None
    unmatched_ids: list[Any]
    unlocated_ids: list[Any]
    match_levels: NotRequired[list[MatchLevel]]  # address specs
    tagged_share: NotRequired[float]


class StagedFile(TypedDict):
    staged: str
    bytes: int
    sha256: str


class StagedFiles(TypedDict, total=False):
    """publish_files: the portal files under hidden staged names ({} without a portal output)."""

    folder: str
    files: dict[str, StagedFile]


class PostgisLoaded(TypedDict, total=False):
    """publish_postgis: the new version table nobody reads yet, or the GeoPackage staged instead ({} without a
    PostGIS output)."""

    table: str
    version_table: str
    rows: int | None
    with_geometry: int
    columns: list[list[str]]
    geopackage: str
    staged: str
    sha256: str


class Rendered(TypedDict):
    """render (report DAG): the chart file, the message and the date it counts as of."""

    png: str
    as_of: str
    html: str


class Fetched(TypedDict):
    """fetch_layers: every layer version found, per layer."""

    source: str
    sha256: dict[str, dict[str, str]]
    files: dict[str, list[dict[str, Any]]]


class Served(TypedDict, total=False):
    """reload_service: the service's answer, and how long each replica took to follow it."""

    status: str
    generation: int
    build_seconds: float
    layers_sha256: str
    replicas_converged_s: dict[str, float]


class LoadedBoundaries(TypedDict):
    """load_postgis: the boundary tables loaded, and the files' sha256."""

    tables: list[Any]
    sha256: dict[str, dict[str, str]]
