"""A layer of many small polygons (issue 21): a few thousand Voronoi cells over the city's bounding box, plus a few
discs overlapping them, loaded through a manifest like any layer. The fast path must answer exactly what the exact
path answers on points at every vertex, on every edge, a hair either side of edges, inside every cell and at
random; and it must still do the work itself."""

from __future__ import annotations

import numpy as np
import pytest
import shapely
import yaml

from bench.voronoi import add_to_manifest, voronoi_cells, write_layer
from enrich_service.engine.exact import ExactIndex
from enrich_service.engine.grid import GridIndex
from enrich_service.engine.rules import RULE_OVERLAP
from enrich_service.layers.store import LayerStore

from .test_grid import adversarial, lookup_as_exact

CELLS = 3000


@pytest.fixture(scope="module")
def version(store, tmp_path_factory):
    folder = tmp_path_factory.mktemp("many_polygons")
    city = store.versions["city_limits"][0].bbox
    polygons = voronoi_cells(city, CELLS, seed=21)
    # Discs over several cells each: points in two features' interiors (the overlap rule), away from any edge.
    centre = np.array([[(city[0] + city[2]) / 2, (city[1] + city[3]) / 2]])
    discs = shapely.buffer(shapely.points(centre + [[0, 0], [0.02, 0.01], [-0.05, 0.03]]), [0.03, 0.015, 0.01])
    manifest: dict = {"layers": {}}
    path = folder / "voronoi.geojson"
    add_to_manifest(manifest, "voronoi", path, write_layer(path, np.concatenate([polygons, discs])))
    (folder / "manifest.yaml").write_text(yaml.safe_dump(manifest))
    return LayerStore.load(folder / "manifest.yaml", folder, folder / "cache").versions["voronoi"][0]


def test_grid_agrees_with_exact_path_on_many_polygons(version):
    assert version.n_features == CELLS + 3
    grid, exact = GridIndex.build(version), ExactIndex(version)
    rng = np.random.default_rng(2121)
    x0, y0, x1, y1 = version.bbox
    rx, ry = rng.uniform(x0, x1, 300_000), rng.uniform(y0, y1, 300_000)
    ax, ay = adversarial(version, rng)
    inner = shapely.get_coordinates(shapely.point_on_surface(version.geoms))
    for name, x, y in (("random", rx, ry), ("edges", ax, ay), ("inside", inner[:, 0], inner[:, 1])):
        feature, rule, undecided = lookup_as_exact(grid, exact, name, x, y)
        if name == "random":
            assert undecided.mean() < 0.001
            assert (feature >= 0).all()  # the cells tile the bounding box
            assert (rule == RULE_OVERLAP).sum() > 1000  # the discs' overlaps are answered by the grid
            assert len(np.unique(feature)) > CELLS * 0.95
        if name == "edges":
            assert undecided[: len(shapely.get_coordinates(shapely.get_rings(version.parts)))].all()
        if name == "inside":
            assert (~undecided).mean() > 0.99


@pytest.mark.parametrize("cells", [256, 2048])
def test_grid_resolution_does_not_change_answers(version, cells):
    """Coarse cells hold tens of small polygons each (long walks, the band test); fine ones a few."""
    grid, exact = GridIndex.build(version, cells=cells), ExactIndex(version)
    rng = np.random.default_rng(cells)
    x0, y0, x1, y1 = version.bbox
    x, y = rng.uniform(x0, x1, 100_000), rng.uniform(y0, y1, 100_000)
    undecided = lookup_as_exact(grid, exact, "random", x, y)[2]
    assert undecided.mean() < 0.001
