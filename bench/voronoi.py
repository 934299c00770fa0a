"""Synthetic layers of many small polygons (issue 21): Voronoi cells over a bounding box, written as GeoJSON and
added to a copy of the manifest, so the service loads them like any layer (no code change). Used by
`bench/pip.py --voronoi` and tests/test_many_polygons.py."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import shapely
import yaml


def voronoi_cells(bbox: tuple[float, float, float, float], cells: int, seed: int) -> np.ndarray:
    """`cells` Voronoi polygons of seeded uniform points, clipped to bbox: they tile it, neighbours share edges."""
    rng = np.random.default_rng(seed)
    x, y = rng.uniform(bbox[0], bbox[2], cells), rng.uniform(bbox[1], bbox[3], cells)
    box = shapely.box(*bbox)
    polys = shapely.get_parts(shapely.voronoi_polygons(shapely.multipoints(np.column_stack([x, y])), extend_to=box))
    return shapely.intersection(polys, box)


def write_layer(path: Path, polygons: np.ndarray) -> str:
    """The polygons as a GeoJSON FeatureCollection keyed by `cell`; returns its sha256."""
    geometries = shapely.to_geojson(polygons)
    features = b",".join(b'{"type":"Feature","properties":{"cell":%d},"geometry":%s}' % (i, g.encode())
                         for i, g in enumerate(geometries))
    body = b'{"type":"FeatureCollection","features":[' + features + b"]}"
    path.write_bytes(body)
    return hashlib.sha256(body).hexdigest()


def add_to_manifest(manifest: dict, name: str, path: Path, sha256: str) -> None:
    manifest.setdefault("layers", {})[name] = {
        "description": f"synthetic Voronoi cells ({path.name}; bench and tests only)", "key": "cell",
        "versions": [{"version": "synthetic", "effective_from": "1900-01-01", "file": path.name, "sha256": sha256,
                      "crs": "EPSG:4326"}]}


def voronoi_manifest(folder: Path, base_manifest: Path | None, boundary_dir: Path | None,
                     bbox: tuple[float, float, float, float], counts: list[int]) -> tuple[Path, list[str]]:
    """folder/manifest.yaml: a copy of base_manifest (or an empty one) with a `voronoi_<n>` layer per count, and
    the folder holding the synthetic files plus links to the files in boundary_dir. Seeded: the same files and
    sha256 every run, so the service's caches keyed by sha256 hold."""
    folder.mkdir(parents=True, exist_ok=True)
    manifest = yaml.safe_load(base_manifest.read_text()) if base_manifest else {"layers": {}}
    names = []
    for n in counts:
        name = f"voronoi_{n}"
        path = folder / f"{name}.geojson"
        sha = write_layer(path, voronoi_cells(bbox, n, seed=n)) if not path.is_file() else \
            hashlib.sha256(path.read_bytes()).hexdigest()
        add_to_manifest(manifest, name, path, sha)
        names.append(name)
    for src in boundary_dir.iterdir() if boundary_dir else ():
        link = folder / src.name
        if not link.exists():
            link.symlink_to(src)
    out = folder / "manifest.yaml"
    out.write_text(yaml.safe_dump(manifest, sort_keys=False))
    return out, names
