"""The engine against PostGIS ST_Covers / ST_Contains on the same polygons, and the edge/overlap rule on real quirks."""

from __future__ import annotations

import numpy as np
import pytest
import shapely

from enrich_service.engine.exact import ExactIndex
from enrich_service.engine.rules import RULE_EDGE, RULE_NONE, RULE_OVERLAP
from enrich_service.layers.store import to_metric
from enrich_service.postgis import table_name

from .conftest import real_points
from .test_rule_truth import layers_in_schema

SCHEMA = "test_engine"
CITY_BBOX = (-117.282, 32.535, -116.905, 33.114)


@pytest.fixture(scope="module")
def pg(pg_dsn, store):
    with layers_in_schema(pg_dsn, store, SCHEMA) as conn:
        yield conn


@pytest.fixture(scope="module")
def points():
    x, y = real_points()
    rng = np.random.default_rng(20261125)
    rx = rng.uniform(CITY_BBOX[0], CITY_BBOX[2], 100_000)
    ry = rng.uniform(CITY_BBOX[1], CITY_BBOX[3], 100_000)
    return np.concatenate([x, rx]), np.concatenate([y, ry]), len(x)


def postgis_expected(conn, version, x, y):
    """Per point, the answer the rule gives from PostGIS's predicates: feature (-1 none), rule, on-any-edge."""
    table = table_name(version.layer, version.version)
    conn.execute("DROP TABLE IF EXISTS pts; DROP TABLE IF EXISTS sub")
    conn.execute("CREATE TEMP TABLE pts (i int, geom geometry(Point, 4326))")
    with conn.cursor().copy("COPY pts (i, geom) FROM STDIN") as copy:
        for i, (px, py) in enumerate(zip(x.tolist(), y.tolist())):
            copy.write_row((i, f"SRID=4326;POINT({px!r} {py!r})"))
    # Subdivided pieces keep the join fast; covering is decided per feature (fid), so cuts change nothing. A point in
    # a piece's interior is in its feature's interior (a piece is part of the feature); only a point on a piece's
    # boundary, which may be a cut, is tested against the whole feature.
    conn.execute(f"CREATE TEMP TABLE sub AS SELECT fid, ST_Subdivide(geom, 256) AS geom FROM {SCHEMA}.{table}")
    conn.execute("CREATE INDEX ON sub USING gist (geom); ANALYZE sub; ANALYZE pts")
    rows = conn.execute(
        f"""WITH covers AS (
                SELECT p.i, s.fid, bool_or(ST_Contains(s.geom, p.geom)) AS in_piece
                FROM pts p JOIN sub s ON ST_Covers(s.geom, p.geom) GROUP BY p.i, s.fid)
            SELECT c.i, c.fid, CASE WHEN c.in_piece THEN true ELSE ST_Contains(b.geom, p.geom) END
            FROM covers c JOIN pts p ON p.i = c.i JOIN {SCHEMA}.{table} b ON b.fid = c.fid"""
    ).fetchall()
    conn.rollback()
    n = len(x)
    feature = np.full(n, -1, dtype=np.int32)
    rule = np.zeros(n, dtype=np.int8)
    on_edge = np.zeros(n, dtype=bool)
    if rows:
        pi, fid, inside = (np.array(c) for c in zip(*rows))
        order = np.lexsort((version.rank[fid], ~inside.astype(bool), pi))
        first = np.ones(len(order), dtype=bool)
        first[1:] = pi[order][1:] != pi[order][:-1]
        win = order[first]
        feature[pi[win]] = fid[win]
        rule[pi[win]] = np.where(inside[win], RULE_NONE, RULE_EDGE)
        rule[np.bincount(pi[inside.astype(bool)], minlength=n) >= 2] = RULE_OVERLAP
        on_edge[pi[~inside.astype(bool)]] = True
    return feature, rule, on_edge


@pytest.mark.parametrize("layer,version", [("council_district", 0), ("council_district", 1), ("neighborhood", 0),
                                           ("zip", 0), ("city_limits", 0)])
def test_engine_agrees_with_postgis(pg, store, engine, points, layer, version):
    x, y, n_real = points
    v = store.versions[layer][version]
    feature, rule = engine.tag_version(layer, version, x, y)
    want, want_rule, on_edge = postgis_expected(pg, v, x, y)
    edge = on_edge | (rule == RULE_EDGE)
    # Off the edges: identical, feature and rule, for every real point and every random point.
    mismatch = np.flatnonzero(~edge & ((feature != want) | (rule != want_rule)))
    assert mismatch.size == 0, (
        f"{layer} {v.version}: {mismatch.size} points differ from PostGIS, e.g. "
        f"{[(float(x[i]), float(y[i]), int(feature[i]), int(want[i])) for i in mismatch[:5]]}")
    # On an edge: the documented rule picks one of the features PostGIS says cover the point, never null.
    bad_edge = np.flatnonzero(edge & (want >= 0) & (feature < 0))
    assert bad_edge.size == 0
    # The data exercise the join: most real points are inside the city's layers, a share of random ones too.
    assert (feature[:n_real] >= 0).mean() > (0.45 if layer != "city_limits" else 0.4)
    assert (want >= 0).sum() > 10_000


def test_overlap_of_mission_valley_and_old_town_is_answered_not_dropped(store, engine):
    v = store.versions["neighborhood"][0]
    mv = np.flatnonzero(v.keys == "Mission Valley")[0]
    ot = np.flatnonzero(v.keys == "Old Town San Diego")[0]
    overlap = shapely.intersection(v.geoms[mv], v.geoms[ot])
    acres = shapely.area(to_metric(np.array([overlap]))[0]) / 4046.86
    assert 5.0 < acres < 6.5  # SOURCES.md: a 5.76-acre overlap
    p = shapely.point_on_surface(overlap)
    feature, rule = engine.tag_version("neighborhood", 0, np.array([p.x]), np.array([p.y]))
    smaller = mv if v.area_m2[mv] < v.area_m2[ot] else ot
    assert feature[0] == smaller
    assert rule[0] == RULE_OVERLAP


def test_point_on_a_shared_district_edge_goes_to_the_smaller_district(store, engine):
    v = store.versions["council_district"][1]
    coords = [set(map(tuple, shapely.get_coordinates(g))) for g in v.geoms]
    # A vertex two districts share exactly: the point lies on both boundaries.
    a, b, shared = next((a, b, sorted(coords[a] & coords[b])[len(coords[a] & coords[b]) // 2])
                        for a in range(len(coords)) for b in range(a + 1, len(coords)) if coords[a] & coords[b])
    feature, rule = engine.tag_version("council_district", 1, np.array([shared[0]]), np.array([shared[1]]))
    assert rule[0] == RULE_EDGE
    # The smaller district by geodesic area, computed here (not the engine's rank), and not a near tie.
    from pyproj import Geod

    area = [abs(Geod(ellps="WGS84").geometry_area_perimeter(v.geoms[i])[0]) for i in (a, b)]
    assert max(area) > 1.01 * min(area)
    assert feature[0] == (a if area[0] < area[1] else b)
    # The grid hands this point to the exact path, whose answer it is; a fresh exact index gives it every time.
    from enrich_service.engine.grid import GridIndex

    assert GridIndex.build(v).lookup(np.array([shared[0]]), np.array([shared[1]]))[2][0]
    for _ in range(2):
        f2, r2 = ExactIndex(v).tag(np.array([shared[0]]), np.array([shared[1]]))
        assert (f2[0], r2[0]) == (feature[0], rule[0])


def test_nearest_within_reports_the_distance(store, engine):
    # About 190 m west of the westernmost district vertex, in the Pacific: outside every district.
    coords = shapely.get_coordinates(store.versions["council_district"][1].geoms)
    west = coords[np.argmin(coords[:, 0])]
    lon, lat = np.array([west[0] - 0.002]), np.array([west[1]])
    result = engine.tag(lon, lat, np.array([True]), ["council_district"])
    assert result.layers["council_district"].codes[0] == -1
    near = engine.tag(lon, lat, np.array([True]), ["council_district"], nearest_within_m=1500)
    tags = near.layers["council_district"]
    assert tags.keys()[0] is not None
    assert 150 < tags.distance_m[0] <= 200
    assert tags.rule_names()[0] == "nearest"


def test_parsed_layers_come_back_from_the_disk_cache_identical(store, tmp_path):
    from enrich_service.layers.store import LayerStore
    from enrich_service.settings import Settings

    from .conftest import BOUNDARIES

    manifest = Settings().manifest
    first = LayerStore.load(manifest, BOUNDARIES, tmp_path)
    files = sorted((tmp_path / "layers").glob("*.pickle"))
    assert len(files) == 5  # one per layer version
    files[0].write_bytes(b"not a pickle")  # a damaged cache file is rebuilt, never fatal
    for again in (LayerStore.load(manifest, BOUNDARIES, tmp_path), LayerStore.load(manifest, BOUNDARIES, tmp_path)):
        for name, versions in first.versions.items():
            for a, b in zip(versions, again.versions[name]):
                assert (a.keys == b.keys).all() and a.repairs == b.repairs
                assert shapely.equals_exact(a.geoms, b.geoms, 0).all()
    assert files[0].read_bytes() != b"not a pickle"


@pytest.mark.parametrize("layer,vi", [("council_district", 1), ("neighborhood", 0), ("zip", 0)])
def test_tiles_cover_every_part_and_stay_small(store, layer, vi):
    """The R-tree's tiles of a part: within its bbox, no larger than the bbox / 16 (or 0.005 deg), not overlapping,
    and every vertex of the part (its far bbox edges included) lies in one of them."""
    from enrich_service.engine.exact import _tile_boxes

    v = store.versions[layer][vi]
    owners, boxes = _tile_boxes(v.parts)
    bounds = shapely.bounds(v.parts)[owners]
    step = np.maximum(np.maximum((bounds[:, 2] - bounds[:, 0]) / 16, (bounds[:, 3] - bounds[:, 1]) / 16), 0.005)
    assert np.bincount(owners).max() <= 17 * 17  # about 16 x 16 per part at most: tiles narrow, not multiply
    assert shapely.intersects(v.parts[owners], shapely.box(*boxes.T)).all()  # no tile misses its part
    assert (boxes[:, 0] <= boxes[:, 2]).all() and (boxes[:, 1] <= boxes[:, 3]).all()
    assert (boxes[:, :2] >= bounds[:, :2]).all() and (boxes[:, 2:] <= bounds[:, 2:]).all()
    assert (boxes[:, 2] - boxes[:, 0] <= step * (1 + 1e-9)).all() and (boxes[:, 3] - boxes[:, 1] <= step * (1 + 1e-9)).all()
    # Tiles of one part do not overlap: their areas add up to at most the bbox's.
    tile_area = np.bincount(owners, (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]), len(v.parts))
    part_bounds = shapely.bounds(v.parts)
    assert (tile_area <= (part_bounds[:, 2] - part_bounds[:, 0]) * (part_bounds[:, 3] - part_bounds[:, 1]) * (1 + 1e-9)
            + 1e-15).all()
    xy, ring = shapely.get_coordinates(shapely.get_rings(v.parts), return_index=True)
    _, ring_part = shapely.get_rings(v.parts, return_index=True)
    part = ring_part[ring]
    point, found = ExactIndex(v).candidates(xy[:, 0], xy[:, 1])
    hit = np.zeros(len(xy), dtype=bool)
    hit[point[found == part[point]]] = True
    assert hit.all(), xy[~hit][:5]
    # And every part covering a random point of the layer's bbox is among that point's candidates.
    rng = np.random.default_rng(5)
    x0, y0, x1, y1 = v.bbox
    rx, ry = rng.uniform(x0, x1, 20_000), rng.uniform(y0, y1, 20_000)
    want_point, want_part = shapely.STRtree(v.parts).query(shapely.points(rx, ry), predicate="intersects")
    point, found = ExactIndex(v).candidates(rx, ry)
    n = len(v.parts)
    assert np.isin(want_point * n + want_part, point * n + found).all()


def test_one_point_at_a_time_answers_as_the_batch(store):
    """The exact path on single points (a batch with one candidate pair, or one covering pair) as on a batch."""
    v = store.versions["neighborhood"][0]
    ex = ExactIndex(v)
    pts = shapely.get_coordinates(shapely.point_on_surface(v.geoms[:20]))
    pts = np.concatenate([pts, [[-117.5, 32.5]]])  # and one far outside
    feature, rule = ex.tag(pts[:, 0].copy(), pts[:, 1].copy())
    assert (feature[:20] >= 0).all() and feature[20] == -1
    for i, (px, py) in enumerate(pts):
        f1, r1 = ex.tag(np.array([px]), np.array([py]))
        assert (f1[0], r1[0]) == (feature[i], rule[i]), i


@pytest.mark.parametrize("layer,vi", [("council_district", 1), ("neighborhood", 0)])
def test_nearest_within_matches_a_brute_force_search(store, engine, layer, vi):
    """Points outside every feature: the nearest feature within 1,500 m is the one a search over every part finds
    (distance in metres, then rank), not only among the R-tree's candidates."""
    from enrich_service.layers.store import to_metric

    v = store.versions[layer][vi]
    rng = np.random.default_rng(11)
    x0, y0, x1, y1 = v.bbox
    x, y = rng.uniform(x0 - 0.02, x1 + 0.02, 4000), rng.uniform(y0 - 0.02, y1 + 0.02, 4000)
    outside = ~shapely.intersects_xy(shapely.union_all(v.geoms), x, y)
    x, y = x[outside][:150], y[outside][:150]
    pm = to_metric(shapely.points(x, y))
    d = shapely.distance(v.parts_metric[None, :], pm[:, None])  # (points, parts)
    best = np.full(len(x), -1)
    for i in range(len(x)):
        feat = v.part_feature
        per_feature = np.full(v.n_features, np.inf)
        np.minimum.at(per_feature, feat, d[i])
        ok = per_feature <= 1500
        if ok.any():
            cand = np.flatnonzero(ok)
            best[i] = cand[np.lexsort((v.rank[cand], np.round(per_feature[cand], 6)))][0]
    result = engine.tag(x, y, np.ones(len(x), dtype=bool), [layer],
                        as_of=v.effective_from, nearest_within_m=1500)
    tags = result.layers[layer]
    offset = sum(w.n_features for w in store.versions[layer][:vi])
    got = np.where(tags.codes >= 0, tags.codes - offset, -1)
    assert (best >= 0).sum() > 20 and (best < 0).sum() > 0
    assert (got == best).all(), np.flatnonzero(got != best)[:5]
    hit = best >= 0
    dist = np.array([d[i][v.part_feature == best[i]].min() if hit[i] else np.nan for i in range(len(x))])
    np.testing.assert_allclose(tags.distance_m[hit], np.round(dist[hit], 2), atol=0.011)
    assert np.isnan(tags.distance_m[~hit]).all()
    assert (tags.rule_names()[hit] == "nearest").all()
    # Points inside a feature in the same request: their own feature, 0 m, not "nearest".
    inside = shapely.get_coordinates(shapely.point_on_surface(v.geoms[:3]))
    both = engine.tag(np.concatenate([inside[:, 0], x[:5]]), np.concatenate([inside[:, 1], y[:5]]),
                      np.ones(8, dtype=bool), [layer], as_of=v.effective_from, nearest_within_m=1500).layers[layer]
    assert list(both.codes[:3] - offset) == [0, 1, 2] and list(both.distance_m[:3]) == [0.0, 0.0, 0.0]
    assert list(np.where(both.codes[3:] >= 0, both.codes[3:] - offset, -1)) == list(best[:5])  # misses in a mix
    assert all(r != "nearest" for r in both.rule_names()[:3])
    only_inside = engine.tag(inside[:, 0].copy(), inside[:, 1].copy(), np.ones(3, dtype=bool), [layer],
                             as_of=v.effective_from, nearest_within_m=1500).layers[layer]
    assert list(only_inside.distance_m) == [0.0, 0.0, 0.0]  # a batch with no miss at all


@pytest.mark.parametrize("layer", ["council_district", "neighborhood", "zip", "city_limits"])
def test_a_point_inside_each_feature_gets_its_key(store, engine, layer):
    """A plain request (no dates): a point inside every feature of the newest version answers that feature's key,
    the first feature included (its code is the version's offset, not 0)."""
    v = store.versions[layer][-1]
    p = shapely.get_coordinates(shapely.point_on_surface(v.geoms))
    inside = shapely.contains_xy(v.geoms, p[:, 0], p[:, 1])
    # a point inside two overlapping features answers the rule's winner, not necessarily its own feature
    alone = inside & (np.array([shapely.contains_xy(v.geoms, px, py).sum() for px, py in p]) == 1)
    tags = engine.tag(p[:, 0].copy(), p[:, 1].copy(), np.ones(len(p), dtype=bool), [layer]).layers[layer]
    assert alone[0] and alone.mean() > 0.9
    assert list(tags.keys()[alone]) == list(v.keys[alone])
