"""The layer manifest (boundaries/manifest.yaml): which layers exist, their versions and where each file comes from."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path

import yaml


def _error(message: str) -> Exception:
    """A LayerSourceError, imported when raised: errors.py brings FastAPI, which reading the manifest (the DAGs do at
    parse time) does not need."""
    from ..errors import LayerSourceError

    return LayerSourceError(message)


@dataclass(frozen=True)
class FileSpec:
    """One file the service needs: its name, where to download it, and the sha256 it must have."""

    file: str
    sha256: str
    url: str | None = None


@dataclass(frozen=True)
class VersionSpec:
    version: str
    effective_from: dt.date
    source: FileSpec
    crs: str = "EPSG:4326"
    fields: tuple[str, ...] = ()
    keys: tuple[str, ...] = ()  # when listed: exactly the keys this version's file must have (validate.py)


@dataclass(frozen=True)
class LayerSpec:
    name: str
    description: str
    key: str
    label: str | None
    label_template: str | None
    versions: tuple[VersionSpec, ...]  # sorted by effective_from
    min_city_coverage: float | None = None  # share of the city limits the newest version must cover (validate.py)

    def effective_to(self, i: int) -> dt.date | None:
        """Last day version i is in force (None: still in force)."""
        if i + 1 < len(self.versions):
            return self.versions[i + 1].effective_from - dt.timedelta(days=1)
        return None


@dataclass(frozen=True)
class SanityPoint:
    """A place whose answer is known; an index that answers it differently is refused."""

    name: str
    lon: float
    lat: float
    expect: dict[str, str]


@dataclass(frozen=True)
class Manifest:
    layers: dict[str, LayerSpec]
    reference: dict[str, FileSpec] = field(default_factory=dict)
    sanity_points: tuple[SanityPoint, ...] = ()


def _file_spec(raw: dict, where: str) -> FileSpec:
    try:
        return FileSpec(file=str(raw["file"]), sha256=str(raw["sha256"]).lower(), url=raw.get("url"))
    except KeyError as exc:
        raise _error(f"manifest: {where} lacks {exc.args[0]!r}") from None


def load_manifest(path: Path) -> Manifest:
    try:
        # libyaml's parser where PyYAML has it: the pure-Python one took ~10 ms a read, and a start reads it 4 times
        raw = yaml.load(Path(path).read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except (OSError, yaml.YAMLError) as exc:
        raise _error(f"cannot read layer manifest {path}: {exc}") from None
    layers: dict[str, LayerSpec] = {}
    for name, spec in (raw.get("layers") or {}).items():
        versions = []
        for v in spec.get("versions") or []:
            where = f"layer {name} version {v.get('version')}"
            versions.append(
                VersionSpec(
                    version=str(v["version"]),
                    effective_from=v["effective_from"] if isinstance(v["effective_from"], dt.date)
                    else dt.date.fromisoformat(str(v["effective_from"])),
                    source=_file_spec(v, where),
                    crs=str(v.get("crs", "EPSG:4326")),
                    fields=tuple(v.get("fields") or ()),
                    keys=tuple(str(k) for k in v.get("keys") or ()),
                )
            )
        if not versions:
            raise _error(f"manifest: layer {name} has no versions")
        versions.sort(key=lambda v: v.effective_from)
        layers[name] = LayerSpec(
            name=name,
            description=str(spec.get("description", "")),
            key=str(spec["key"]),
            label=spec.get("label"),
            label_template=spec.get("label_template"),
            versions=tuple(versions),
            min_city_coverage=float(spec["min_city_coverage"]) if spec.get("min_city_coverage") else None,
        )
    reference = {k: _file_spec(v, f"geocode_reference {k}") for k, v in (raw.get("geocode_reference") or {}).items()}
    sanity = tuple(SanityPoint(name=str(p["name"]), lon=float(p["lon"]), lat=float(p["lat"]),
                               expect={k: str(v) for k, v in p["expect"].items()})
                   for p in raw.get("sanity_points") or [])
    return Manifest(layers=layers, reference=reference, sanity_points=sanity)
