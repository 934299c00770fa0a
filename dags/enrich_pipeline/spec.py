"""Dataset specs: one small YAML file per dataset (dags/datasets/*.yaml) describes everything a dataset DAG does.

Parsing a spec is cheap and touches nothing but the YAML file (DAG files parse them at import). Values may hold
`${NAME}` or `${NAME:-default}` placeholders; they are resolved when a task runs (`resolve`), from the environment
first, then from the Airflow Variable NAME, so tests and production point the same spec at different places.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

SPECS_DIR = Path(__file__).resolve().parents[1] / "datasets"
SPECS_ENV = "ENRICH_SPECS_DIRS"  # extra folders of specs (os.pathsep-separated), e.g. for tests
KNOWN_LAYERS = ("council_district", "neighborhood", "zip", "city_limits")
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
_PLACEHOLDER = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class SpecError(ValueError):
    """A spec file is malformed; the message names the file and the field."""


@dataclass(frozen=True)
class Source:
    kind: str  # csv | geojson | parquet | sql
    path: str | None = None  # file path or http(s) URL (csv, geojson, parquet); may hold ${...}
    sql: str | None = None
    conn_id: str | None = None  # Postgres connection for kind: sql
    column_types: dict[str, str] = field(default_factory=dict)  # csv: force a column's type (e.g. string)


@dataclass(frozen=True)
class Coordinates:
    lon: str
    lat: str
    crs: str = "EPSG:4326"
    placeholders: tuple[tuple[float, float], ...] = ()  # (lon, lat) pairs that mean "no location"


@dataclass(frozen=True)
class Address:
    """Address columns for geocode-join (POST /v1/geocode-join): the street from one column or composed from several
    (number, direction, name, type), an optional cross street (police records: number 0 and a cross street is an
    intersection), city and zip. dags/enrich_pipeline/geocode.py composes them."""

    street: tuple[str, ...]  # columns joined with spaces: [street_dir, street_name, street_type], or one column
    number: str | None = None  # the house number column, when not part of `street`
    number_is_block: bool = False  # the number names a hundred block (police: "5500" is the 5500 block)
    cross_street: tuple[str, ...] = ()
    city: str | None = None
    zip: str | None = None
    min_match: str | None = None  # coarser matches keep no tags (geocode-join's min_match)

    @classmethod
    def of(cls, doc: dict, where: str) -> Address:
        def cols(value) -> tuple[str, ...]:
            return tuple([value] if isinstance(value, str) else (value or ()))

        street = cols(_need(doc, "street", where + "address."))
        unknown = set(doc) - {"street", "number", "number_is_block", "cross_street", "city", "zip", "min_match"}
        if unknown:
            raise SpecError(f"{where}address: unknown keys {sorted(unknown)}")
        return cls(street=street, number=doc.get("number"), number_is_block=bool(doc.get("number_is_block", False)),
                   cross_street=cols(doc.get("cross_street")), city=doc.get("city"), zip=doc.get("zip"),
                   min_match=doc.get("min_match"))


@dataclass(frozen=True)
class Quality:
    layer: str = "council_district"  # the layer every row inside `within` must have
    within: str | None = "city_limits"  # rows that should have it: those this layer tags (None: every row)
    max_unmatched_share: float = 0.0
    max_unlocated_share: float | None = None  # rows with no usable coordinates (None: not checked)
    # lon/lat bbox of plausible locations (EPSG:4326); a point outside is a row error, counted as unlocated.
    # None: the extent of the `within` layer (or city_limits) with `area_margin_km` around it.
    plausible_area: tuple[float, float, float, float] | None = None
    area_margin_km: float = 20.0
    show: int = 20  # ids listed in the failure message
    # Address specs: the least share of rows of each match level that must carry a `layer` key ({level: share};
    # levels not named are not checked). The gate fails below it (dags/enrich_pipeline/geocode.py).
    min_tagged_share: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Publish:
    """Guards and time limits of publishing (spec section `publish`)."""

    max_row_change_share: float | None = 0.2  # rows may change by this share against the last publication
    lock_timeout_seconds: float = 10  # the swap waits this long for a reader's lock, then fails
    statement_timeout_seconds: float = 900  # any one statement of the publishing connection
    task_timeout_minutes: float = 60  # execution_timeout of every task
    run_timeout_minutes: float = 360  # dagrun_timeout


@dataclass(frozen=True)
class PostgisOutput:
    table: str  # "schema.table" or "table" (public)
    conn_id: str = "enrich_postgis"


@dataclass(frozen=True)
class PortalOutput:
    folder: str  # may hold ${...}
    basename: str


@dataclass(frozen=True)
class Report:
    recipients: tuple[str, ...]
    by: tuple[str, ...] = ("council_district", "neighborhood")  # service layers to aggregate by
    subject: str | None = None
    conn_id: str = "smtp_default"
    top: int = 15  # rows of the second (neighborhood) table
    entity_id: tuple[str, ...] = ()  # id columns naming one counted thing (a meter: pole); () counts rows
    entity: str = "rows"  # what is counted, in words ("meters")
    date_column: str | None = None  # optional: the report states the dates the data covers


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    description: str
    path: Path
    source: Source
    id: tuple[str, ...]
    coordinates: Coordinates | None
    address: Address | None
    layers: dict[str, str]  # service layer -> output column
    as_of_column: str | None
    as_of: str | None
    quality: Quality
    postgis: PostgisOutput | None
    portal: PortalOutput | None
    report: Report | None
    schedule: str | None = None
    reenrich_on_boundary_change: bool = True
    batch_rows: int = 50_000
    service_conn_id: str = "enrich_service"
    tags: tuple[str, ...] = ()
    owners: tuple[str, ...] = ()  # e-mail addresses told when a run fails (factory: alerts)
    alert_conn_id: str = "smtp_default"  # the SMTP connection the failure e-mails go through
    publish: Publish = field(default_factory=Publish)

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

    def column_for(self, layer: str) -> str:
        """The output column of a service layer (its own name when it is not published)."""
        return self.layers.get(layer, layer)


def load_spec(path: Path) -> DatasetSpec:
    try:
        doc = yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as exc:
        raise SpecError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(doc, dict):
        raise SpecError(f"{path}: a spec is a mapping")
    try:
        return _build(Path(path), doc)
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, SpecError):
            raise
        raise SpecError(f"{path}: {exc!r}") from None


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


def resolve(value: str, lookup=None) -> str:
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


def _need(doc: dict, key: str, where: str = ""):
    if key not in doc or doc[key] in (None, ""):
        raise SpecError(f"{where}{key} is required")
    return doc[key]


def _build(path: Path, doc: dict) -> DatasetSpec:
    where = f"{path}: "
    name = str(_need(doc, "name", where))
    if not _NAME.match(name):
        raise SpecError(f"{where}name {name!r} must be lower_snake_case (it names the DAG and the table)")

    src = _need(doc, "source", where)
    kind = src.get("kind")
    if kind is None:
        if src.get("sql"):
            kind = "sql"
        else:
            suffix = str(_need(src, "path", where + "source.")).lower().rsplit(".", 1)[-1]
            kind = {"json": "geojson", "geojson": "geojson", "csv": "csv", "parquet": "parquet"}.get(suffix)
    if kind not in ("csv", "geojson", "parquet", "sql"):
        raise SpecError(f"{where}source.kind must be csv, geojson, parquet or sql (got {kind!r})")
    if kind == "sql":
        _need(src, "sql", where + "source.")
    else:
        _need(src, "path", where + "source.")
    source = Source(kind=kind, path=src.get("path"), sql=src.get("sql"),
                    conn_id=src.get("conn_id", "enrich_postgis" if kind == "sql" else None),
                    column_types=dict(src.get("column_types") or {}))

    ids = doc.get("id") or []
    ids = tuple([ids] if isinstance(ids, str) else ids)

    coords = doc.get("coordinates")
    address = doc.get("address")
    if kind == "geojson" and coords is None:
        coords = {"lon": "lon", "lat": "lat"}  # the features' point geometry, read into lon/lat
    if not coords and not address:
        raise SpecError(f"{where}give coordinates (lon, lat, crs) or address columns")
    coordinates = None
    if coords:
        placeholders = tuple((float(p[0]), float(p[1])) for p in coords.get("placeholders") or [])
        coordinates = Coordinates(lon=_need(coords, "lon", where + "coordinates."),
                                  lat=_need(coords, "lat", where + "coordinates."),
                                  crs=str(coords.get("crs", "EPSG:4326")), placeholders=placeholders)
    addr = Address.of(address, where) if address else None

    layers = doc.get("layers") or {"council_district": "council_district", "neighborhood": "neighborhood",
                                   "zip": "zip"}
    if isinstance(layers, list):
        layers = {name: name for name in layers}
    for layer in layers:
        if layer not in KNOWN_LAYERS:
            raise SpecError(f"{where}layers: unknown layer {layer!r} (known: {', '.join(KNOWN_LAYERS)})")

    q = doc.get("quality") or {}
    quality = Quality(layer=q.get("layer", "council_district"), within=q.get("within", "city_limits"),
                      max_unmatched_share=float(q.get("max_unmatched_share", 0.0)),
                      max_unlocated_share=(None if q.get("max_unlocated_share") is None
                                           else float(q["max_unlocated_share"])),
                      show=int(q.get("show", 20)),
                      min_tagged_share={str(k): float(v) for k, v in (q.get("min_tagged_share") or {}).items()},
                      plausible_area=(None if q.get("plausible_area") is None
                                      else tuple(float(v) for v in q["plausible_area"])),
                      area_margin_km=float(q.get("area_margin_km", 20.0)))
    if quality.plausible_area is not None and (len(quality.plausible_area) != 4
                                               or quality.plausible_area[0] >= quality.plausible_area[2]
                                               or quality.plausible_area[1] >= quality.plausible_area[3]):
        raise SpecError(f"{where}quality.plausible_area must be [min_lon, min_lat, max_lon, max_lat]")
    for layer in (quality.layer, quality.within):
        if layer is not None and layer not in KNOWN_LAYERS:
            raise SpecError(f"{where}quality: unknown layer {layer!r}")

    out = doc.get("outputs") or {}
    pg = out.get("postgis")
    portal = out.get("portal")
    if not pg and not portal:
        raise SpecError(f"{where}outputs: give postgis and/or portal")
    postgis = PostgisOutput(table=_need(pg, "table", where + "outputs.postgis."),
                            conn_id=pg.get("conn_id", "enrich_postgis")) if pg else None
    if postgis and not re.match(r"^([a-z_][a-z0-9_]*\.)?[a-z_][a-z0-9_]*$", postgis.table):
        raise SpecError(f"{where}outputs.postgis.table {postgis.table!r} must be [schema.]table in lower case")
    portal_out = PortalOutput(folder=_need(portal, "folder", where + "outputs.portal."),
                              basename=portal.get("basename", name)) if portal else None

    rep = doc.get("report")
    report = None
    if rep:
        recipients = rep.get("recipients") or []
        report = Report(recipients=tuple([recipients] if isinstance(recipients, str) else recipients),
                        by=tuple(rep.get("by") or ("council_district", "neighborhood")),
                        subject=rep.get("subject"), conn_id=rep.get("conn_id", "smtp_default"),
                        top=int(rep.get("top", 15)),
                        entity_id=tuple([rep["entity_id"]] if isinstance(rep.get("entity_id"), str)
                                        else rep.get("entity_id") or ()),
                        entity=str(rep.get("entity") or ("rows" if not rep.get("entity_id") else "entities")),
                        date_column=rep.get("date_column"))
        if not report.recipients:
            raise SpecError(f"{where}report.recipients is empty")
        for layer in report.by:
            if layer not in layers:
                raise SpecError(f"{where}report.by: {layer!r} is not one of the published layers")

    owners = doc.get("owners") or []
    owners = tuple([owners] if isinstance(owners, str) else owners)
    for owner in owners:
        if not re.fullmatch(r"[^@\s,]+@[^@\s,]+", str(owner)):
            raise SpecError(f"{where}owners: {owner!r} is not an e-mail address")

    return DatasetSpec(
        name=name, description=str(doc.get("description", "")), path=path, source=source, id=ids,
        coordinates=coordinates, address=addr, layers=dict(layers), as_of_column=doc.get("as_of_column"),
        as_of=None if doc.get("as_of") is None else str(doc["as_of"]), quality=quality, postgis=postgis,
        portal=portal_out, report=report, schedule=doc.get("schedule"),
        reenrich_on_boundary_change=bool(doc.get("reenrich_on_boundary_change", True)),
        batch_rows=int(doc.get("batch_rows", 50_000)),
        service_conn_id=doc.get("service_conn_id", "enrich_service"), tags=tuple(doc.get("tags") or ()),
        owners=owners, alert_conn_id=str(doc.get("alert_conn_id", "smtp_default")),
        publish=_publish(doc.get("publish") or {}, where))


def _publish(p: dict, where: str) -> Publish:
    known = set(Publish.__dataclass_fields__)
    unknown = sorted(set(p) - known)
    if unknown:
        raise SpecError(f"{where}publish: unknown setting(s) {unknown} (known: {sorted(known)})")
    out = Publish(**{k: (None if v is None else float(v)) for k, v in p.items()})
    for k in known - {"max_row_change_share"}:
        if getattr(out, k) is None or getattr(out, k) <= 0:
            raise SpecError(f"{where}publish.{k} must be a positive number")
    return out
