"""Dataset specs: one small YAML file per dataset (dags/datasets/*.yaml) describes everything a dataset DAG does.

The format is a set of pydantic dataclasses: parsing validates it and names the file and the field of any mistake
(`bad.yaml: layers: unknown layer 'wards' (known: ...)`). The layer names come from the service's layer manifest
(boundaries/manifest.yaml, or ENRICH_MANIFEST), so a layer added there is known here too.

Parsing a spec is cheap and touches nothing but the YAML files (DAG files parse them at import). Values may hold
`${NAME}` or `${NAME:-default}` placeholders; they are resolved when a task runs (`resolve`), from the environment
first, then from the Airflow Variable NAME, so tests and production point the same spec at different places.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    AliasPath,
    BeforeValidator,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.dataclasses import dataclass
from pydantic_core import PydanticCustomError

SPECS_DIR = Path(__file__).resolve().parents[1] / "datasets"
SPECS_ENV = "ENRICH_SPECS_DIRS"  # extra folders of specs (os.pathsep-separated), e.g. for tests
GEOMETRY_LON, GEOMETRY_LAT = "geometry_lon", "geometry_lat"  # where extract puts a GeoJSON source's points
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
_TABLE = re.compile(r"^([a-z_][a-z0-9_]*\.)?[a-z_][a-z0-9_]*$")
_EMAIL = re.compile(r"[^@\s,]+@[^@\s,]+")
_PLACEHOLDER = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_SOURCE_KINDS = {"json": "geojson", "geojson": "geojson", "csv": "csv", "parquet": "parquet"}
_REQUIRED = "is required"


class SpecError(ValueError):
    """A spec file is malformed; the message names the file and the field."""


@lru_cache(maxsize=4)
def _manifest_layers(manifest: str) -> tuple[str, ...]:
    from enrich_service.layers.manifest import load_manifest

    return tuple(load_manifest(Path(manifest)).layers)


def known_layers() -> tuple[str, ...]:
    """The layers the service can tag with: the names in its manifest."""
    from enrich_service.settings import Settings

    return _manifest_layers(str(Settings().manifest))


def default_layers() -> dict[str, str]:
    """Published when a spec names no layers: the service's default layers, each under its own name."""
    from enrich_service.settings import Settings

    return {name: name for name in Settings().default_layers}


def _one_or_many(value: Any) -> Any:
    """`id: pole` and `id: [pole, config_id]` both mean a tuple of names; null means none."""
    if value is None:
        return ()
    return (value,) if isinstance(value, str) else value


def _required(value: Any) -> Any:
    if value is None or value == "":
        raise ValueError(_REQUIRED)
    return value


def _key_error(key: str, message: str) -> PydanticCustomError:
    """A mistake a section's own check finds in one of its keys: reported as `<section>.<key> <message>`."""
    return PydanticCustomError("spec_key", "{key} {message}", {"key": key, "message": message})


def _text(value: Any) -> Any:
    """YAML reads `as_of: 2020-01-01` as a date and `id: 7` as a number: the spec means the text."""
    return value if value is None or isinstance(value, str) else str(value)


def _source_kind(source: dict) -> Any:
    """The kind a source names, else `sql` for a query, else the one its path's suffix says (None: unknown)."""
    if source.get("kind") is not None:
        return source["kind"]
    if source.get("sql"):
        return "sql"
    return _SOURCE_KINDS.get(str(source.get("path") or "").lower().rsplit(".", 1)[-1])


def _matching(pattern: re.Pattern, rule: str) -> AfterValidator:
    def check(value: str) -> str:
        if not pattern.match(value):
            raise ValueError(f"{value!r} must be {rule}")
        return value

    return AfterValidator(check)


Names = Annotated[tuple[str, ...], BeforeValidator(_one_or_many)]
Required = Annotated[str, BeforeValidator(_required), BeforeValidator(_text)]
Text = Annotated[str | None, BeforeValidator(_text)]
_LOOSE = ConfigDict(frozen=True, extra="ignore", populate_by_name=True)
_STRICT = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


@dataclass(config=_LOOSE)
class Source:
    kind: Literal["csv", "geojson", "parquet", "sql"]
    path: Text = None  # file path or http(s) URL (csv, geojson, parquet); may hold ${...}
    sql: Text = None
    conn_id: Text = None  # Postgres connection for kind: sql
    column_types: dict[str, str] = Field(default_factory=dict)  # csv: force a column's type (e.g. string)

    @model_validator(mode="before")
    @classmethod
    def _kind(cls, doc: Any) -> Any:
        """The kind from `sql`, else from the path's suffix; then what that kind needs."""
        if not isinstance(doc, dict):
            return doc
        doc = dict(doc)
        if doc.get("kind") is None and not doc.get("sql"):
            _required_key(doc, "path")  # the kind comes from its suffix
        kind = _source_kind(doc)
        if kind not in ("csv", "geojson", "parquet", "sql"):
            raise _key_error("kind", f"must be csv, geojson, parquet or sql (got {kind!r})")
        _required_key(doc, "sql" if kind == "sql" else "path")
        if kind == "sql":
            doc.setdefault("conn_id", "enrich_postgis")
        doc["column_types"] = doc.get("column_types") or {}
        return {**doc, "kind": kind}


@dataclass(config=_LOOSE)
class Coordinates:
    lon: Required
    lat: Required
    crs: Annotated[str, BeforeValidator(_text)] = "EPSG:4326"
    placeholders: Annotated[tuple[tuple[float, float], ...],
                            BeforeValidator(_one_or_many)] = ()  # (lon, lat) pairs that mean "no location"


@dataclass(config=_STRICT)
class Address:
    """Address columns for geocode-join (POST /v1/geocode-join): the street from one column or composed from several
    (number, direction, name, type), an optional cross street (police records: number 0 and a cross street is an
    intersection), city and zip. dags/enrich_pipeline/geocode.py composes them."""

    street: Annotated[Names, BeforeValidator(_required)]  # columns joined with spaces, or one column
    number: Text = None  # the house number column, when not part of `street`
    number_is_block: bool = False  # the number names a hundred block (police: "5500" is the 5500 block)
    cross_street: Names = ()
    city: Text = None
    zip: Text = None
    min_match: Text = None  # coarser matches keep no tags (geocode-join's min_match)


def _layer(name: str | None) -> str | None:
    if name is not None and name not in known_layers():
        raise ValueError(f"unknown layer {name!r} (known: {', '.join(known_layers())})")
    return name


@dataclass(config=_LOOSE)
class Quality:
    layer: Annotated[str, BeforeValidator(_layer)] = "council_district"  # every row inside `within` must have it
    # rows that should have it: those this layer tags (None: every row)
    within: Annotated[str | None, BeforeValidator(_layer)] = "city_limits"
    max_unmatched_share: float = 0.0
    max_unlocated_share: float | None = None  # rows with no usable coordinates (None: not checked)
    # lon/lat bbox of plausible locations (EPSG:4326); a point outside is a row error, counted as unlocated.
    # None: the extent of the `within` layer (or city_limits) with `area_margin_km` around it.
    plausible_area: tuple[float, float, float, float] | None = None
    area_margin_km: float = 20.0
    show: int = 20  # ids listed in the failure message
    # Address specs: the least share of rows of each match level that must carry a `layer` key ({level: share};
    # levels not named are not checked). The gate fails below it (dags/enrich_pipeline/geocode.py).
    min_tagged_share: dict[str, float] = Field(default_factory=dict)

    @field_validator("plausible_area", mode="before")
    @classmethod
    def _bbox(cls, value: Any) -> Any:
        if value is not None and (not isinstance(value, list | tuple) or len(value) != 4
                                  or float(value[0]) >= float(value[2]) or float(value[1]) >= float(value[3])):
            raise ValueError("must be [min_lon, min_lat, max_lon, max_lat]")
        return value


@dataclass(config=_STRICT)
class Publish:
    """Guards and time limits of publishing (spec section `publish`)."""

    max_row_change_share: float | None = 0.2  # rows may change by this share against the last publication
    lock_timeout_seconds: Annotated[float, Field(gt=0)] = 10  # the swap waits this long for a reader's lock
    statement_timeout_seconds: Annotated[float, Field(gt=0)] = 900  # any one statement of the publishing connection
    task_timeout_minutes: Annotated[float, Field(gt=0)] = 60  # execution_timeout of every task
    run_timeout_minutes: Annotated[float, Field(gt=0)] = 360  # dagrun_timeout


@dataclass(config=_LOOSE)
class PostgisOutput:
    table: Annotated[Required, _matching(_TABLE, "[schema.]table in lower case")]  # "schema.table" or "table"
    conn_id: str = "enrich_postgis"


@dataclass(config=_LOOSE)
class PortalOutput:
    folder: Required  # may hold ${...}
    basename: str  # default: the dataset's name (DatasetSpec fills it in)


@dataclass(config=_LOOSE)
class Report:
    recipients: Names
    by: Names = ("council_district", "neighborhood")  # service layers to aggregate by
    subject: Text = None
    conn_id: str = "smtp_default"
    top: int = 15  # rows of the second (neighborhood) table
    entity_id: Names = ()  # id columns naming one counted thing (a meter: pole); () counts rows
    entity: str = "rows"  # what is counted, in words ("meters")
    date_column: Text = None  # optional: the report states the dates the data covers

    @model_validator(mode="before")
    @classmethod
    def _defaults(cls, doc: Any) -> Any:
        if isinstance(doc, dict):
            doc = {k: v for k, v in doc.items() if v is not None or k in ("subject", "date_column")}
            doc.setdefault("entity", "entities" if doc.get("entity_id") else "rows")
            if not doc.get("by"):
                doc.pop("by", None)
        return doc

    @field_validator("recipients")
    @classmethod
    def _someone(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("is empty")
        return value


@dataclass(config=_LOOSE)
class DatasetSpec:
    name: Annotated[Required, _matching(_NAME, "lower_snake_case (it names the DAG and the table)")]
    path: Path  # the spec file (not a YAML key: load_spec sets it)
    source: Source
    description: Annotated[str, BeforeValidator(lambda v: "" if v is None else str(v))] = ""
    id: Names = ()
    coordinates: Coordinates | None = None
    address: Address | None = None
    layers: dict[str, str] = Field(default_factory=default_layers)  # service layer -> output column
    as_of_column: Text = None
    as_of: Text = None
    quality: Quality = Field(default_factory=Quality)
    postgis: PostgisOutput | None = Field(default=None, validation_alias=AliasPath("outputs", "postgis"))
    portal: PortalOutput | None = Field(default=None, validation_alias=AliasPath("outputs", "portal"))
    report: Report | None = None
    schedule: Text = None
    reenrich_on_boundary_change: bool = True
    batch_rows: int = 50_000
    service_conn_id: str = "enrich_service"
    tags: Names = ()
    owners: Names = ()  # e-mail addresses told when a run fails (factory: alerts)
    alert_conn_id: str = "smtp_default"  # the SMTP connection the failure e-mails go through
    publish: Publish = Field(default_factory=Publish)

    @model_validator(mode="before")
    @classmethod
    def _defaults(cls, doc: Any) -> Any:
        """Defaults that depend on other keys: a GeoJSON source's points, the portal's basename."""
        if not isinstance(doc, dict):
            return doc
        doc = {k: v for k, v in doc.items() if v is not None or k in ("coordinates", "address")}
        source = doc.get("source")
        geojson = isinstance(source, dict) and _source_kind(source) == "geojson"
        if geojson and not doc.get("coordinates") and not doc.get("address"):
            doc["coordinates"] = {"lon": GEOMETRY_LON, "lat": GEOMETRY_LAT}  # extract's columns for the points
        outputs = doc.get("outputs")
        portal = outputs.get("portal") if isinstance(outputs, dict) else None
        if isinstance(portal, dict) and not portal.get("basename"):
            outputs = {**outputs, "portal": {**portal, "basename": doc.get("name")}}
            doc["outputs"] = outputs
        if isinstance(doc.get("layers"), list):
            doc["layers"] = {name: name for name in doc["layers"]}
        if not doc.get("layers"):
            doc.pop("layers", None)
        return doc

    @field_validator("layers")
    @classmethod
    def _layers(cls, value: dict[str, str]) -> dict[str, str]:
        for layer in value:
            _layer(layer)
        return value

    @field_validator("owners")
    @classmethod
    def _owners(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for owner in value:
            if not _EMAIL.fullmatch(owner):
                raise ValueError(f"{owner!r} is not an e-mail address")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> DatasetSpec:
        if self.coordinates is None and self.address is None:
            raise ValueError("give coordinates (lon, lat, crs) or address columns")
        if self.postgis is None and self.portal is None:
            raise ValueError("outputs: give postgis and/or portal")
        for layer in self.report.by if self.report else ():
            if layer not in self.layers:
                raise ValueError(f"report.by: {layer!r} is not one of the published layers")
        return self

    @property
    def dag_id(self) -> str:
        return f"enrich_{self.name}"

    @property
    def report_dag_id(self) -> str:
        return f"report_{self.name}"

    @property
    def asset_uri(self) -> str:
        return f"enrich://published/{self.name}"

    @property
    def request_layers(self) -> list[str]:
        """Layers asked of the service: the published ones plus what the quality gate needs."""
        wanted = list(self.layers)
        for extra in (self.quality.layer, self.quality.within):
            if extra and extra not in wanted:
                wanted.append(extra)
        return wanted


def _required_key(doc: dict, key: str) -> Any:
    if doc.get(key) in (None, ""):
        raise _key_error(key, _REQUIRED)
    return doc[key]


_SPEC = TypeAdapter(DatasetSpec)


def _problems(errors: list[Any]) -> list[str]:
    """pydantic's errors in the spec's words: `layers: unknown layer 'wards' (...)`, `source.path is required`,
    `address: unknown keys ['house']`."""
    out: list[str] = []
    unknown: dict[str, list[str]] = {}
    for error in errors:
        where = ".".join(str(p) for p in error["loc"])
        message = str(error["msg"]).removeprefix("Value error, ")
        if error["type"] in ("extra_forbidden", "unexpected_keyword_argument"):
            section, _, key = where.rpartition(".")
            unknown.setdefault(section, []).append(key)
        elif error["type"] == "spec_key":
            out.append(f"{where}.{error['ctx']['key']} {error['ctx']['message']}")
        elif error["type"] == "missing":
            out.append(f"{where} {_REQUIRED}")
        elif message.startswith(("is ", "must ")):
            out.append(f"{where} {message}")
        else:
            out.append(f"{where}: {message}" if where else message)
    out += [f"{section}: unknown keys {sorted(keys)}" for section, keys in unknown.items()]
    return list(dict.fromkeys(out))


def load_spec(path: Path) -> DatasetSpec:
    path = Path(path)
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise SpecError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(doc, dict):
        raise SpecError(f"{path}: a spec is a mapping")
    try:
        return _SPEC.validate_python({**doc, "path": path})
    except ValidationError as exc:
        raise SpecError(f"{path}: " + "; ".join(_problems(exc.errors(include_url=False)))) from None


def spec_dirs() -> list[Path]:
    extra = [Path(p) for p in os.environ.get(SPECS_ENV, "").split(os.pathsep) if p]
    return [SPECS_DIR, *extra]


def load_specs(dirs: list[Path] | None = None) -> list[DatasetSpec]:
    """Every spec in the spec folders, sorted by name; a malformed spec, or two specs of one name, is an error."""
    specs, errors = load_specs_and_errors(dirs)
    if errors:
        raise errors[0]
    return specs


def load_specs_and_errors(dirs: list[Path] | None = None) -> tuple[list[DatasetSpec], list[SpecError]]:
    """The good specs, sorted by name, and one SpecError per bad file: one malformed spec costs only its own DAG."""
    specs: dict[str, DatasetSpec] = {}
    errors: list[SpecError] = []
    for d in dirs if dirs is not None else spec_dirs():
        for path in sorted(Path(d).glob("*.y*ml")):
            try:
                spec = load_spec(path)
                if spec.name in specs:
                    raise SpecError(f"{path}: dataset {spec.name!r} is also defined in {specs[spec.name].path}")
            except SpecError as exc:
                errors.append(exc)
                continue
            specs[spec.name] = spec
    return [specs[k] for k in sorted(specs)], errors


def find_spec(name: str) -> DatasetSpec:
    for spec in load_specs():
        if spec.name == name:
            return spec
    raise SpecError(f"no dataset spec named {name!r} in {', '.join(map(str, spec_dirs()))}")


def resolve(value: str, lookup: Callable[[str], str | None] | None = None) -> str:
    """Replace ${NAME} / ${NAME:-default} from the environment, then Airflow Variables (at task run time)."""

    def sub(m: re.Match) -> str:
        name, default = m.group(1), m.group(2)
        found = os.environ.get(name)
        if found is None:
            found = (lookup or _variable)(name)
        if found is None:
            found = default
        if found is None:
            raise SpecError(f"{value!r}: {name} is set neither in the environment nor as an Airflow Variable")
        return found

    return _PLACEHOLDER.sub(sub, value)


def _variable(name: str) -> str | None:
    try:
        from airflow.sdk import Variable

        return Variable.get(name, default=None)
    except Exception:  # outside a task (no Airflow context): only the environment counts
        return None
