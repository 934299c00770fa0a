"""Independent truth for the edge and overlap rule, computed in PostGIS from first principles.

For every layer version, the expected answer for each point is decided in SQL alone (nothing from the engine: not
its rank, not its areas, not its idea of which points are on an edge):

1. the features that cover the point (ST_Covers);
2. one holding it in its interior (ST_Contains) beats one it only touches;
3. then the smaller ST_Area on geography;
4. then the lower key, then file order (fid).

The points are the ones where a wrong rule shows: every vertex shared by three or more features, a sample of the
vertices shared by two, of all vertices and of edge midpoints, a point inside every overlap, the known vertex at
(-117.1077713, 32.9453249), and each of those moved by less than a millimetre in eight directions (some under the
grid's EPS, some over it). The grid path and the exact path must both give the SQL answer, feature and rule, on
every one of them.
"""

from __future__ import annotations

import contextlib

import numpy as np
import psycopg
import pytest
import shapely

from enrich_service.engine.exact import ExactIndex
from enrich_service.engine.grid import GridIndex
from enrich_service.engine.rules import RULE_EDGE, RULE_NONE, RULE_OVERLAP
from enrich_service.postgis import load_layers, table_name

SCHEMA = "test_rule_truth"
VERSIONS = [("council_district", 0), ("council_district", 1), ("neighborhood", 0), ("zip", 0), ("city_limits", 0)]
# The vertex shared by Miramar Ranch North, Rancho Penasquitos and Los Penasquitos Canyon (issue 17).
KNOWN = (-117.1077713, 32.9453249)
# Under a millimetre: below the grid's EPS (1e-9 deg), and above it (2e-9 to 8e-9 deg = 0.2 to 0.9 mm).
NUDGES_DEG = (4e-10, 2e-9, 8e-9)
DIRECTIONS = np.array([(1, 0), (-1, 0), (0, 1), (0, -1), (1, 1), (1, -1), (-1, 1), (-1, -1)], dtype=float)


@contextlib.contextmanager
def layers_in_schema(dsn: str, store, schema: str):
    """A connection to PostGIS with every layer version loaded into a fresh `schema`, dropped afterwards."""
    with psycopg.connect(dsn) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        conn.execute(f"CREATE SCHEMA {schema}")
        conn.commit()
        load_layers(conn, store, schema=schema)
        yield conn
        conn.rollback()
        conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        conn.commit()


@pytest.fixture(scope="module")
def pg(pg_dsn, store):
    with layers_in_schema(pg_dsn, store, SCHEMA) as conn:
        yield conn


def probe_points(version, rng, per_kind: int = 1500) -> np.ndarray:
    """(n, 2) lon/lat: shared vertices, vertices, midpoints, overlap interiors, and their sub-millimetre nudges."""
    coords, feat = shapely.get_coordinates(version.geoms, return_index=True)
    # How many features hold each distinct vertex exactly.
    pairs = np.unique(np.column_stack([coords, feat]), axis=0)
    vertex, owners = np.unique(pairs[:, :2], axis=0, return_counts=True)
    triple = vertex[owners >= 3]
    double = vertex[owners == 2]
    pick = lambda a, k: a[rng.choice(len(a), min(k, len(a)), replace=False)] if len(a) else a.reshape(0, 2)  # noqa: E731
    rings = shapely.get_coordinates(shapely.get_rings(version.parts))
    mids = (rings[1:] + rings[:-1]) / 2
    overlaps = []
    tree = shapely.STRtree(version.geoms)
    for a, b in tree.query(version.geoms, predicate="overlaps").T:
        if a < b:
            inter = shapely.intersection(version.geoms[a], version.geoms[b])
            if shapely.area(inter) > 0:
                for part in shapely.get_parts(inter):
                    if shapely.get_type_id(part) in (3, 6) and shapely.area(part) > 1e-12:
                        p = shapely.point_on_surface(part)
                        overlaps.append((p.x, p.y))
                # Vertices of one lying inside the other: on a boundary, yet in a neighbour's interior.
                for c, d in ((a, b), (b, a)):
                    xy = shapely.get_coordinates(version.geoms[c])
                    overlaps.extend(map(tuple, xy[shapely.contains_xy(version.geoms[d], xy[:, 0], xy[:, 1])][:50]))
    # The vertices on the layer's bbox: the grid's outer cells and its origin.
    extreme = coords[[coords[:, 0].argmin(), coords[:, 0].argmax(), coords[:, 1].argmin(), coords[:, 1].argmax()]]
    base = np.concatenate([triple, extreme, pick(double, per_kind), pick(vertex, per_kind), pick(mids, per_kind),
                           np.array(overlaps, dtype=float).reshape(-1, 2), np.array([KNOWN])])
    # Each base point moved by a sub-millimetre step in each of eight directions (step chosen per point).
    step = rng.choice(NUDGES_DEG, len(base))[:, None, None]
    nudged = (base[:, None, :] + DIRECTIONS[None, :, :] * step).reshape(-1, 2)
    return np.concatenate([base, nudged])


def rule_in_sql(conn, version, pts: np.ndarray, schema: str = SCHEMA) -> tuple[np.ndarray, np.ndarray]:
    """Per point: the winning fid (-1: none) and the rule code, decided in PostGIS alone (the layers loaded into
    `schema` by enrich_service.postgis.load_layers)."""
    table = f"{schema}.{table_name(version.layer, version.version)}"
    conn.execute("DROP TABLE IF EXISTS truth_pts")
    conn.execute("CREATE TEMP TABLE truth_pts (i int, geom geometry(Point, 4326))")
    with conn.cursor().copy("COPY truth_pts (i, geom) FROM STDIN") as copy:
        for i, (px, py) in enumerate(pts.tolist()):
            copy.write_row((i, f"SRID=4326;POINT({px!r} {py!r})"))
    # Feature by feature, the points in its box (GiST on the points): each feature's geometry meets many points in
    # a row, so PostGIS prepares it once (a cached prepared geometry per call site) and the exact tests stay fast.
    conn.execute("CREATE INDEX ON truth_pts USING gist (geom); ANALYZE truth_pts")
    rows = conn.execute(f"""
        WITH covering AS MATERIALIZED (
            SELECT p.i, b.fid, b.key, ST_Contains(b.geom, p.geom) AS interior
            FROM {table} b JOIN truth_pts p ON ST_Covers(b.geom, p.geom)),
        area AS MATERIALIZED (SELECT fid, ST_Area(geom::geography) AS area FROM {table}),
        ranked AS (
            SELECT c.i, c.fid, c.interior, count(*) FILTER (WHERE c.interior) OVER (PARTITION BY c.i) AS interiors,
                   row_number() OVER (PARTITION BY c.i ORDER BY c.interior DESC, a.area ASC, c.key ASC, c.fid ASC)
                       AS pos
            FROM covering c JOIN area a USING (fid))
        SELECT i, fid, CASE WHEN interiors >= 2 THEN {int(RULE_OVERLAP)}
                            WHEN interior THEN {int(RULE_NONE)} ELSE {int(RULE_EDGE)} END
        FROM ranked WHERE pos = 1""").fetchall()
    conn.rollback()
    feature = np.full(len(pts), -1, dtype=np.int32)
    rule = np.zeros(len(pts), dtype=np.int8)
    if rows:
        i, fid, r = (np.array(c) for c in zip(*rows))
        feature[i], rule[i] = fid, r
    return feature, rule


@pytest.fixture(scope="module")
def truth(pg, store):
    """(points, expected feature, expected rule) per layer version."""
    rng = np.random.default_rng(17)
    out = {}
    for layer, vi in VERSIONS:
        v = store.versions[layer][vi]
        pts = probe_points(v, rng)
        out[layer, vi] = (pts, *rule_in_sql(pg, v, pts))
    return out


def mismatches(version, pts, want, want_rule, feature, rule) -> list:
    bad = np.flatnonzero((feature != want) | (rule != want_rule))
    return [((float(pts[i, 0]), float(pts[i, 1])),
             version.keys[feature[i]] if feature[i] >= 0 else None, int(rule[i]),
             version.keys[want[i]] if want[i] >= 0 else None, int(want_rule[i])) for i in bad[:5]] + \
        ([f"... {bad.size} in all"] if bad.size else [])


@pytest.mark.parametrize("layer,vi", VERSIONS)
def test_grid_and_exact_paths_follow_the_rule_as_postgis_computes_it(store, engine, truth, layer, vi):
    v = store.versions[layer][vi]
    pts, want, want_rule = truth[layer, vi]
    x, y = pts[:, 0].copy(), pts[:, 1].copy()
    exact_feature, exact_rule = ExactIndex(v).tag(x, y)
    assert not mismatches(v, pts, want, want_rule, exact_feature, exact_rule), "exact path"
    grid = GridIndex.build(v)
    g_feature, g_rule, undecided = grid.lookup(x, y)
    decided = ~undecided
    assert not mismatches(v, pts[decided], want[decided], want_rule[decided], g_feature[decided],
                          g_rule[decided]), "grid path (points it decides itself)"
    feature, rule = engine.tag_version(layer, vi, x, y)  # the grid, with its undecided points sent to exact
    assert not mismatches(v, pts, want, want_rule, feature, rule), "engine"
    # The probe exercises what it is meant to: points on edges, on shared vertices, in overlaps, and decided by
    # the grid right next to edges.
    assert (want_rule == RULE_EDGE).sum() > 500
    assert (decided & (want >= 0)).sum() > 1000
    if layer == "neighborhood":
        assert (want_rule == RULE_OVERLAP).sum() > 0


def test_the_known_shared_vertex_goes_to_the_smallest_planning_area(store, engine, truth):
    v = store.versions["neighborhood"][0]
    pts, want, want_rule = truth["neighborhood", 0]
    i = int(np.flatnonzero((pts[:, 0] == KNOWN[0]) & (pts[:, 1] == KNOWN[1]))[0])
    assert v.keys[want[i]] == "Los Penasquitos Canyon" and want_rule[i] == RULE_EDGE
    feature, rule = engine.tag_version("neighborhood", 0, np.array([KNOWN[0]]), np.array([KNOWN[1]]))
    assert (v.keys[feature[0]], rule[0]) == ("Los Penasquitos Canyon", RULE_EDGE)
