"""A layer of many small polygons (issue 21): a few thousand Voronoi cells over the city's bounding box, plus a few
discs overlapping them, loaded through a manifest like any layer. The fast path must answer exactly what the exact
path answers on points at every vertex, on every edge, a hair either side of edges, inside every cell and at
random; and it must still do the work itself."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import shapely
import yaml

from bench.voronoi import add_to_manifest, voronoi_cells, write_layer
from enrich_service.engine import exact as exact_module
from enrich_service.engine.exact import ExactIndex
from enrich_service.engine.grid import EDGE, SLOT0, SUB, SUB_NONE, SUB_TEST, GridIndex
from enrich_service.engine.rules import RULE_OVERLAP
from enrich_service.layers.reader import geometry_sha256, read_polygons_cached
from enrich_service.layers.store import LayerStore, LayerVersion

from .test_grid import adversarial, check_cells_hold_what_the_geometry_says, lookup_as_exact

CELLS = 3000


@pytest.fixture(scope="module")
def version(store, tmp_path_factory):
    return many_polygons(store, tmp_path_factory.mktemp("many_polygons"))


def many_polygons(store, folder: Path) -> LayerVersion:
    """The layer, written into folder (also built by scripts/mutation.py, without pytest)."""
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


@pytest.mark.parametrize("cells", [64, 256, 2048])
def test_grid_resolution_does_not_change_answers(version, cells):
    """The coarsest grid has a row's cells nearly all special (runs of hundreds of edges: the band test), a finer one
    short runs; fine cells hold a few polygons each."""
    grid, exact = GridIndex.build(version, cells=cells), ExactIndex(version)
    rng = np.random.default_rng(cells)
    x0, y0, x1, y1 = version.bbox
    x, y = rng.uniform(x0, x1, 100_000), rng.uniform(y0, y1, 100_000)
    undecided = lookup_as_exact(grid, exact, "random", x, y)[2]
    assert undecided.mean() < 0.001
    if cells == 64:  # runs of more edges than a record holds: some special cells take the band test instead
        i, j = ((x - grid.x0) / grid.cw).astype(int), ((y - grid.y0) / grid.ch).astype(int)
        v = grid.cells[j, i]
        assert (grid.rec[-3 - v[v < -1]] < 0).sum() > 20


def special_points(grid, version, rng, n) -> tuple[np.ndarray, np.ndarray]:
    """Random points in the grid's special cells (those answered by a record or the band test, not one read)."""
    x0, y0, x1, y1 = version.bbox
    x, y = rng.uniform(x0, x1, n * 8), rng.uniform(y0, y1, n * 8)
    i, j = ((x - grid.x0) / grid.cw).astype(int), ((y - grid.y0) / grid.ch).astype(int)
    special = grid.cells[j, i] < -1
    return x[special][:n], y[special][:n]


def test_points_level_with_vertices(version):
    """A ray along the row through a vertex shared by two or three cells: points at exactly the height of every
    vertex, a fraction of a grid cell to a few cells either side of it, so the run's crossing count meets the
    vertex (the half-open rule must count it once), plus random points in special cells."""
    grid, exact = GridIndex.build(version), ExactIndex(version)
    rng = np.random.default_rng(2122)
    xy = np.unique(shapely.get_coordinates(shapely.get_rings(version.parts)), axis=0)
    xy = xy[(xy[:, 1] > version.bbox[1]) & (xy[:, 1] < version.bbox[3])]  # not along the bbox's own edges
    offsets = rng.choice([-3.0, -1.0, -0.5, -0.1, 0.1, 0.5, 1.0, 3.0], len(xy)) * grid.cw
    x, y = xy[:, 0] + offsets, xy[:, 1].copy()
    sx, sy = special_points(grid, version, rng, 100_000)
    for name, px, py in (("level", x, y), ("special", sx, sy)):
        undecided = lookup_as_exact(grid, exact, name, px, py)[2]
        assert undecided.mean() < 0.01, name  # answered by the grid, not handed back


def sub_cell_codes(grid, x, y) -> np.ndarray:
    """Each point's sub-cell code in its special cell's record (every point must lie in a special cell)."""
    fi, fj = (x - grid.x0) / grid.cw, (y - grid.y0) / grid.ch
    i, j = fi.astype(int), fj.astype(int)
    place = SLOT0 - grid.cells[j, i].astype(np.int64)
    sub = ((fj - j) * SUB).astype(int) * SUB + ((fi - i) * SUB).astype(int)
    return (grid.rec[place + 3 + sub // 4].astype(np.int64) >> (8 * (sub % 4))) & 0xFF


def test_sub_cells_answer_most_special_points_as_the_exact_path_does(version):
    """A special cell's record answers the sub-cells that no edge comes near by itself, without the run's edges:
    most random points in special cells take that way (on 50,000 Voronoi cells it cut a 1M-point lookup by a
    quarter, docs/engine.md), and each such answer is the exact path's, overlaps of the discs included (a sub-cell
    in two features is left to the run test, which names the rule)."""
    grid, exact = GridIndex.build(version), ExactIndex(version)
    assert (grid.cells < EDGE).any()
    x, y = special_points(grid, version, np.random.default_rng(2124), 200_000)
    code = sub_cell_codes(grid, x, y)
    resolved = code != SUB_TEST
    assert resolved.mean() > 0.5, resolved.mean()
    assert (code[resolved] == SUB_NONE).sum() < resolved.sum()  # the cells tile the bbox: nearly all in a feature
    feature, rule, undecided = lookup_as_exact(grid, exact, "sub-cells", x[resolved], y[resolved])
    assert not undecided.any() and (rule == 0).all()
    # The discs' overlaps in special cells all go to the run test.
    _, want_rule = exact.tag(x, y)
    overlap = want_rule == RULE_OVERLAP
    assert overlap.sum() > 100 and not resolved[overlap].any()


def test_points_on_grid_lines(version):
    """Points on the grid's own cell boundaries and centres, where a run's crossings are split between cells."""
    grid, exact = GridIndex.build(version), ExactIndex(version)
    rng = np.random.default_rng(2123)
    n = 100_000
    i, j = rng.integers(0, 2048, n), rng.integers(0, 2048, n)
    frac = rng.choice([0.0, 0.5], (2, n))
    x, y = grid.x0 + (i + frac[0]) * grid.cw, grid.y0 + (j + frac[1]) * grid.ch
    undecided = lookup_as_exact(grid, exact, "grid lines", x, y)[2]
    assert undecided.mean() < 0.001


def test_grid_from_the_disk_cache_agrees_with_exact_path(version, tmp_path, monkeypatch):
    """The second build of the same geometry reads the first one's file (building again would fail here), and what
    it reads answers as the exact path does."""
    GridIndex.build(version, cache_dir=tmp_path)
    files = list((tmp_path / "grids").glob("*.pickle"))
    assert len(files) == 1 and version.source.sha256[:16] in files[0].name

    def no_build(*args, **kwargs):
        raise AssertionError("built again instead of read from the cache")

    monkeypatch.setattr(GridIndex, "__init__", no_build)
    grid, exact = GridIndex.build(version, cache_dir=tmp_path), ExactIndex(version)
    rng = np.random.default_rng(2124)
    x0, y0, x1, y1 = version.bbox
    rx, ry = rng.uniform(x0, x1, 200_000), rng.uniform(y0, y1, 200_000)
    ax, ay = adversarial(version, rng)
    for name, x, y in (("random", rx, ry), ("edges", ax, ay)):
        undecided = lookup_as_exact(grid, exact, name, x, y)[2]
        if name == "random":
            assert undecided.mean() < 0.001


def test_grid_cache_is_keyed_by_the_geometry_read(version, tmp_path, monkeypatch):
    """The disk cache's key is the digest of the geometry the reader returned (kept in its own cache with it, read
    back bit for bit), not a pass over the polygons: the same file read afresh or from the cache names the same
    geometry, and other geometry under the same file sha256 (a reader change, say) gets a grid and tiles of its
    own, never the cached ones."""
    fresh = read_polygons_cached(version.source.path, version.source.sha256, "EPSG:4326", "test", tmp_path)
    again = read_polygons_cached(version.source.path, version.source.sha256, "EPSG:4326", "test", tmp_path)
    assert fresh.geometry_sha256 == again.geometry_sha256 == version.geometry_sha256
    assert version.geometry_sha256 == geometry_sha256(shapely.to_wkb(version.geoms))

    moved = dataclasses.replace(version, geoms=shapely.transform(version.geoms, lambda xy: xy + [1e-4, 0]),
                                parts=shapely.transform(version.parts, lambda xy: xy + [1e-4, 0]))
    moved.geometry_sha256 = geometry_sha256(shapely.to_wkb(moved.geoms))
    shapely.prepare(moved.parts)
    built = []  # which geometry each grid was built from (a stand-in build: what is read or built is the point)
    monkeypatch.setattr(GridIndex, "__init__", lambda grid, v, cells: built.append(v.bbox))
    for v in (version, moved, version, moved):
        GridIndex.build(v, cache_dir=tmp_path)
        ExactIndex(v, cache_dir=tmp_path)
    assert built == [version.bbox, moved.bbox]
    assert len(list((tmp_path / "grids").glob("*.pickle"))) == len(list((tmp_path / "tiles").glob("*.pickle"))) == 2
    rng = np.random.default_rng(2125)
    x0, y0, x1, y1 = moved.bbox
    x, y = rng.uniform(x0, x1, 5_000), rng.uniform(y0, y1, 5_000)
    cached_tiles, fresh_tiles = ExactIndex(moved, cache_dir=tmp_path), ExactIndex(moved)
    assert all(np.array_equal(a, b) for a, b in zip(cached_tiles.tag(x, y), fresh_tiles.tag(x, y)))


def test_exact_tiles_from_the_disk_cache(version, tmp_path, monkeypatch):
    """The exact path's tiles, read back from the cache, are the ones it works out."""
    built = ExactIndex(version, cache_dir=tmp_path)
    monkeypatch.setattr(exact_module, "_tile_boxes", lambda parts: pytest.fail("tiles worked out again"))
    read = ExactIndex(version, cache_dir=tmp_path)
    assert np.array_equal(built._tile_part, read._tile_part)
    assert len(read._tile_part) > len(version.parts)  # parts of several tiles among them


# The records (int32 cells: a special cell holds the place of its record, the edges of the run of special cells from
# it to the nearest resolved cell along the row, or -1 for the band test) and the cells themselves, held to the exact
# path and shapely at three resolutions: a few polygons per cell (2048, the default), tens (256: long runs) and
# hundreds (64: runs of hundreds of edges, a few longer than a record holds: the band test). Lean enough for the mutation run (scripts/mutation.py builds the layer and
# the exact answers once, then runs the check per mutant).
RUN_RESOLUTIONS = (2048, 256, 64)


def run_probes(version, rng) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Random points over the bbox, points within a micrometre either side of the bbox's sides (in the grid's
    padding: runs that end off the grid), every vertex and edge midpoint and points a hair either side of
    each edge (adversarial), and a point inside each feature."""
    x0, y0, x1, y1 = version.bbox
    along, across = rng.uniform(0, 1, 20_000), rng.uniform(-1e-6, 1e-6, 20_000)
    side = np.arange(20_000) % 4
    mx = np.select([side == 0, side == 1], [x0 + across, x1 + across], x0 + along * (x1 - x0))
    my = np.select([side == 2, side == 3], [y0 + across, y1 + across], y0 + along * (y1 - y0))
    inner = shapely.get_coordinates(shapely.point_on_surface(version.geoms))
    return {"random": (rng.uniform(x0, x1, 100_000), rng.uniform(y0, y1, 100_000)), "margin": (mx, my),
            "edges": adversarial(version, rng),
            "inside": (inner[:, 0], inner[:, 1])}


def exact_answers(exact, probes) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The exact path's (feature, rule) per probe: shapely's covers and contains with the rule (rules.winners)."""
    return {name: exact.tag(x, y) for name, (x, y) in probes.items()}


def check_grid_runs_follow_the_exact_path(version, probes, truth, exact, cells: int) -> None:
    grid = GridIndex.build(version, cells=cells)
    check_cells_hold_what_the_geometry_says(version, grid, exact, np.random.default_rng(cells))
    # What the check is for: int32 cells holding records' places, and records running right and left (and, on the
    # coarsest grid, giving way to the band test), each where it is the cheapest (records that never run left are the choice's inputs broken:
    # row_start, edge_col).
    assert grid.cells.dtype == np.int32
    special = np.flatnonzero(grid.cells.ravel() <= SLOT0)
    place = SLOT0 - grid.cells.ravel()[special].astype(np.int64)
    count, end, col = grid.rec[place], grid.rec[place + 2], special % cells
    ways = {"band": (count < 0).sum(), "right": ((count >= 0) & (end > col)).sum(),
            "left": ((count >= 0) & (end < col)).sum()}
    assert ways["right"] > 0 and ways["left"] > 0, ways
    if cells == min(RUN_RESOLUTIONS):  # only there are runs longer than a record holds
        assert ways["band"] > 0, ways
    for name, (x, y) in probes.items():
        feature, rule, undecided = grid.lookup(x, y)
        want, want_rule = truth[name]
        wrong = np.flatnonzero(~undecided & ((feature != want) | (rule != want_rule)))
        assert wrong.size == 0, (cells, name, wrong.size, x[wrong[:3]], y[wrong[:3]], feature[wrong[:3]],
                                 want[wrong[:3]])
        if name == "random":
            assert undecided.mean() < 0.001
            assert (rule == RULE_OVERLAP).sum() > 300  # the discs' overlaps, answered by the grid
        if name == "margin":
            assert undecided.mean() < 0.01 and (feature < 0).sum() > 5000  # outside the bbox: no feature
        if name == "edges":
            assert undecided[: len(shapely.get_coordinates(shapely.get_rings(version.parts)))].all()
        if name == "inside":
            assert (~undecided).mean() > 0.99


@pytest.fixture(scope="module")
def run_truth(version):
    probes, exact = run_probes(version, np.random.default_rng(3121)), ExactIndex(version)
    return probes, exact_answers(exact, probes), exact


@pytest.mark.parametrize("cells", RUN_RESOLUTIONS)
def test_grid_runs_follow_the_exact_path(version, run_truth, cells):
    check_grid_runs_follow_the_exact_path(version, *run_truth, cells)
