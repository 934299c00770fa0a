"""The fast path answers exactly what the exact path answers, on 1M random points, the real points, and points
placed on and next to every edge and vertex; and it leaves almost nothing to the exact path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import shapely
import yaml

from enrich_service.engine.exact import ExactIndex
from enrich_service.engine.grid import EDGE, EPS, SLOT0, GridIndex
from enrich_service.engine.rules import RULE_OVERLAP
from enrich_service.layers.store import LayerStore, to_metric

from .conftest import real_points

VERSIONS = [("council_district", 0), ("council_district", 1), ("neighborhood", 0), ("zip", 0), ("city_limits", 0)]


def adversarial(version, rng) -> tuple[np.ndarray, np.ndarray]:
    """Every vertex, every edge midpoint, and points a hair (1e-9 to 1e-6 deg) either side of edges."""
    coords = shapely.get_coordinates(shapely.get_rings(version.parts))
    mid = (coords[1:] + coords[:-1]) / 2
    normal = np.column_stack([-(coords[1:, 1] - coords[:-1, 1]), coords[1:, 0] - coords[:-1, 0]])
    length = np.hypot(normal[:, 0], normal[:, 1])
    normal = np.divide(normal, length[:, None], out=np.zeros_like(normal), where=length[:, None] > 0)
    offsets = rng.choice([-1e-6, -1e-8, -EPS * 2, EPS / 2, EPS * 2, 1e-8, 1e-6], len(mid))[:, None]
    pts = np.concatenate([coords, mid, mid + normal * offsets])
    return pts[:, 0], pts[:, 1]


def lookup_as_exact(grid, exact, name, x, y) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The grid's answers, asserted equal to the exact path's on every point the grid decides."""
    feature, rule, undecided = grid.lookup(x, y)
    want, want_rule = exact.tag(x, y)
    wrong = np.flatnonzero(~undecided & ((feature != want) | (rule != want_rule)))
    assert wrong.size == 0, (name, wrong[:5], x[wrong[:5]], y[wrong[:5]])
    return feature, rule, undecided


@pytest.mark.parametrize("layer,vi", VERSIONS)
def test_grid_agrees_with_exact_path(store, layer, vi):
    version = store.versions[layer][vi]
    grid, exact = GridIndex.build(version), ExactIndex(version)
    rng = np.random.default_rng(1125)
    x0, y0, x1, y1 = version.bbox
    rx, ry = rng.uniform(x0, x1, 1_000_000), rng.uniform(y0, y1, 1_000_000)
    px, py = real_points()
    ax, ay = adversarial(version, rng)
    for name, x, y in (("random", rx, ry), ("real", px, py), ("edges", ax, ay)):
        feature, rule, undecided = lookup_as_exact(grid, exact, name, x, y)
        if name == "random":
            # The grid must do the work, not hand it to the exact path.
            assert undecided.mean() < 0.001
            assert (feature >= 0).sum() > 100_000
        if name == "edges":
            # Points on an edge are exactly the ones handed back.
            assert undecided[: len(shapely.get_coordinates(shapely.get_rings(version.parts)))].all()


def test_the_grid_kernel_has_one_signature_for_every_source_of_points(store):
    """Coordinates from an Arrow body are the body's read-only buffers (not copied); from JSON or a single lookup,
    writable arrays. The lookup kernel sees both as read-only, so numba compiles (and a worker loads) it once, and
    a writable caller's array is not written."""
    import pyarrow as pa

    from enrich_service.engine.grid import _lookup_serial
    from enrich_service.io.tables import coordinate

    grid = GridIndex.build(store.versions["zip"][0])
    px, py = real_points()
    table = pa.table({"lon": px[:1000], "lat": py[:1000]})
    x, y = coordinate(table, "lon", {}), coordinate(table, "lat", {})
    assert not x.flags.writeable and np.shares_memory(x, table.column("lon").chunk(0).to_numpy())
    writable = px[:1000].copy(), py[:1000].copy()
    from_arrow, from_json = grid.lookup(x, y), grid.lookup(*writable)
    assert all(np.array_equal(a, b) for a, b in zip(from_arrow, from_json))
    assert writable[0].flags.writeable and np.array_equal(writable[0], px[:1000])
    x_types = {str(sig[0]) for sig in _lookup_serial.signatures}
    assert x_types == {"readonly array(float64, 1d, C)"}, x_types


def test_engine_with_grid_equals_engine_without(store):
    from enrich_service.engine.tagger import Engine

    fast, slow = Engine(store, use_grid=True), Engine(store, use_grid=False)
    rng = np.random.default_rng(7)
    x, y = rng.uniform(-117.3, -116.9, 300_000), rng.uniform(32.5, 33.12, 300_000)
    days = rng.choice(np.array(["2015-01-01", "2023-06-01", "NaT"], dtype="datetime64[D]"), len(x))
    valid = np.ones(len(x), dtype=bool)
    a = fast.tag(x, y, valid, ["council_district", "neighborhood", "zip", "city_limits"], dates=days)
    b = slow.tag(x, y, valid, ["council_district", "neighborhood", "zip", "city_limits"], dates=days)
    for layer in a.layers:
        assert (a.layers[layer].codes == b.layers[layer].codes).all()
        assert (a.layers[layer].rule == b.layers[layer].rule).all()


def check_cells_hold_what_the_geometry_says(version, grid, exact, rng, n: int = 20_000) -> None:
    """Sampled cells against shapely: a cell that no polygon boundary comes within EPS of and that lies inside at
    most one feature answers by itself (the feature holding its centre, as the exact path says, or none); every
    other cell is special (its points go to a test). A cell the grid sends to a test when it need not is no wrong
    answer, but the grid's work undone: so both ways are checked."""
    size = grid.cells.shape[0]
    i, j = rng.integers(0, size, n), rng.integers(0, size, n)
    bx, by = grid.x0 + i * grid.cw, grid.y0 + j * grid.ch  # the corners as the grid computes them
    boxes = shapely.box(bx, by, bx + grid.cw, by + grid.ch)
    coords, ring = shapely.get_coordinates(shapely.get_rings(version.parts), return_index=True)
    same = ring[1:] == ring[:-1]  # every ring edge as its own line: a box meets a few, not a whole ring
    tree = shapely.STRtree(shapely.linestrings(np.stack([coords[:-1][same], coords[1:][same]], axis=1)))
    near = np.zeros(n, dtype=bool)
    near[tree.query(boxes, predicate="dwithin", distance=EPS)[0]] = True
    clear = np.ones(n, dtype=bool)  # Euclidean EPS vs the grid's padded box: a margin either side
    clear[tree.query(boxes, predicate="dwithin", distance=2 * EPS)[0]] = False
    feature, rule = exact.tag(bx + grid.cw / 2, by + grid.ch / 2)
    value = grid.cells[j, i].astype(np.int64)
    special = value == EDGE if grid.cells.dtype == np.int8 else value <= SLOT0
    overlap = rule == RULE_OVERLAP
    assert special[near | overlap].all(), "a cell near a boundary or in an overlap answers by itself"
    alone = clear & ~overlap
    wrong = np.flatnonzero(alone & (special | (value != feature)))
    assert wrong.size == 0, ("a cell clear of every boundary does not hold its feature", wrong.size,
                             value[wrong[:3]], feature[wrong[:3]])
    # Both kinds met: with cells far larger than asked (a wrong size or padding) hardly any is clear of a boundary,
    # and the grid answers nothing by itself.
    assert (alone & (feature >= 0)).sum() > 50, "too few cells clear of every boundary: cells larger than asked"
    assert (near | overlap).sum() > 50


@pytest.mark.parametrize("layer,vi", VERSIONS)
def test_cells_hold_what_the_geometry_says(store, layer, vi):
    version = store.versions[layer][vi]
    check_cells_hold_what_the_geometry_says(version, GridIndex.build(version), ExactIndex(version),
                                            np.random.default_rng(29))


def test_feature_areas_are_the_features_own(store):
    """A feature's area (the rule's tie-break) is summed from its parts, projected once for nearest distances too:
    the same float as the area of the whole feature projected, multipolygons included."""
    multi = 0
    for layer, vi in VERSIONS:
        v = store.versions[layer][vi]
        assert np.array_equal(v.area_m2, shapely.area(to_metric(v.geoms))), (layer, vi)
        multi += int((shapely.get_num_geometries(v.geoms) > 1).sum())
    assert multi > 0  # features of several parts, where the sum is a sum


# A layer far smaller than the real ones (300 m across: a park, a few blocks), in San Diego and moved south of the
# equator: the grid's padding and cell size must assume neither a large layer nor positive coordinates.
PLACES = {"san_diego": (-117.16, 32.71), "south_of_the_equator": (-117.16, -32.71)}


def small_layer(folder: Path, centre: tuple[float, float], size: float = 0.003):
    """40 Voronoi cells over a box `size` degrees wide at `centre`, and a disc over a few of them."""
    from bench.voronoi import add_to_manifest, voronoi_cells, write_layer

    bbox = (centre[0] - size / 2, centre[1] - size / 3, centre[0] + size / 2, centre[1] + size / 3)
    polygons = np.concatenate([voronoi_cells(bbox, 40, seed=7), [shapely.Point(centre).buffer(size / 8)]])
    manifest: dict = {"layers": {}}
    path = folder / "small.geojson"
    add_to_manifest(manifest, "small", path, write_layer(path, polygons))
    (folder / "manifest.yaml").write_text(yaml.safe_dump(manifest))
    return LayerStore.load(folder / "manifest.yaml", folder, folder / "cache").versions["small"][0]


def check_a_small_layer(version, exact) -> None:
    rng = np.random.default_rng(41)
    x0, y0, x1, y1 = version.bbox
    mx, my = (x1 - x0) * 0.01, (y1 - y0) * 0.01
    rx, ry = rng.uniform(x0 - mx, x1 + mx, 20_000), rng.uniform(y0 - my, y1 + my, 20_000)
    ax, ay = adversarial(version, rng)
    grid = GridIndex.build(version)
    for name, x, y in (("random", rx, ry), ("edges", ax, ay)):
        feature, rule, undecided = lookup_as_exact(grid, exact, name, x, y)
        if name == "random":
            assert undecided.mean() < 0.001 and (feature >= 0).mean() > 0.9 and (rule == RULE_OVERLAP).any()
        if name == "edges":  # the bbox's own vertices among them: on the grid's outermost cells
            assert undecided[: len(shapely.get_coordinates(shapely.get_rings(version.parts)))].all()


@pytest.mark.parametrize("place", PLACES)
def test_grid_agrees_with_exact_path_on_a_small_layer_anywhere(tmp_path, place):
    version = small_layer(tmp_path, PLACES[place])
    check_a_small_layer(version, ExactIndex(version))
