"""The fast path answers exactly what the exact path answers, on 1M random points, the real points, and points
placed on and next to every edge and vertex; and it leaves almost nothing to the exact path."""

from __future__ import annotations

import numpy as np
import pytest
import shapely

from enrich_service.engine.exact import ExactIndex
from enrich_service.engine.grid import EPS, GridIndex

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
