"""The bugs issue 17 planted by hand, planted again in memory: each must make the suite's own checks fail.

Each test rewrites one line of the real function (its source, `plant`) or one array, exactly as the bug did, runs
the check from the test module meant to catch it, and asserts that check fails. If the line a plant targets is
rewritten, `plant` fails and says so: the plant is then updated to the new code, never dropped.

| bug | check that catches it |
|---|---|
| the rule without "interior beats boundary" | test_rule_truth (PostGIS truth) |
| the tie-break reversed (larger area wins) | test_rule_truth (PostGIS truth), exact and grid paths |
| as_of ignored for undated rows in a batch with dated rows | test_versions.test_engine_mixed_batch |
| the switch day off by one | test_versions.test_version_on_the_switch_days |
| the quality gate's max_unlocated_share check off | test_quality_gate.check_unlocated_gate |
| the PostGIS swap made non-atomic | test_mutations.test_a_non_atomic_swap_is_seen_by_a_reader (below) |
"""

from __future__ import annotations

import inspect
import sys
import textwrap

import numpy as np
import psycopg
import pytest

from enrich_service.engine import exact, rules, tagger
from enrich_service.engine.exact import ExactIndex
from enrich_service.engine.grid import GridIndex
from enrich_service.errors import NoVersionInForce
from enrich_service.layers.store import LayerStore

from . import test_quality_gate, test_rule_truth, test_versions

SCHEMA = "test_mutations"


def plant(monkeypatch, owner, name: str, old: str, new: str) -> None:
    """Replace `owner.name` (a function or method) by its own source with `old` rewritten to `new`."""
    func = inspect.getattr_static(owner, name)
    source = textwrap.dedent(inspect.getsource(func))
    assert source.count(old) == 1, f"the mutation site moved: {old!r} is not in {name} any more; update the plant"
    module = sys.modules[func.__module__]
    namespace = dict(vars(module))
    exec(compile(source.replace(old, new), module.__file__, "exec"), namespace)
    monkeypatch.setattr(owner, name, namespace[name])


# ---- the rule -------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def truth(pg_dsn, store):
    """PostGIS's answers (test_rule_truth.rule_in_sql) on the probe points of the planning areas and the 2021
    districts: the layers with overlaps and with shared edges."""
    rng = np.random.default_rng(1717)
    out = {}
    with test_rule_truth.layers_in_schema(pg_dsn, store, SCHEMA) as conn:
        for layer, vi in (("neighborhood", 0), ("council_district", 1)):
            v = store.versions[layer][vi]
            pts = test_rule_truth.probe_points(v, rng, per_kind=500)
            out[layer] = (v, pts, *test_rule_truth.rule_in_sql(conn, v, pts, schema=SCHEMA))
    return out


def wrong_answers(v, pts, want, want_rule) -> dict[str, int]:
    """How many probe points each path answers against the truth (a fresh index of each, after any plant)."""
    x, y = pts[:, 0].copy(), pts[:, 1].copy()
    f, r = ExactIndex(v).tag(x, y)
    g, gr, undecided = GridIndex.build(v).lookup(x, y)
    d = ~undecided
    return {"exact": int(((f != want) | (r != want_rule)).sum()),
            "grid": int(((g[d] != want[d]) | (gr[d] != want_rule[d])).sum())}


def test_unplanted_code_answers_every_probe_point_as_postgis(truth):
    for v, pts, want, want_rule in truth.values():
        assert wrong_answers(v, pts, want, want_rule) == {"exact": 0, "grid": 0}


def test_the_rule_without_interior_beats_boundary_is_caught(monkeypatch, truth):
    plant(monkeypatch, rules, "winners", "np.lexsort((rank, ~inside, point))", "np.lexsort((rank, point))")
    assert exact.rules.winners is rules.winners
    v, pts, want, want_rule = truth["neighborhood"]
    assert wrong_answers(v, pts, want, want_rule)["exact"] > 0


def test_the_tie_break_reversed_is_caught(monkeypatch, truth):
    for layer in truth:
        v, pts, want, want_rule = truth[layer]
        monkeypatch.setattr(v, "rank", (v.n_features - 1 - v.rank).astype(np.int32))  # larger area wins
        wrong = wrong_answers(v, pts, want, want_rule)
        assert wrong["exact"] > 0, layer
        if layer == "neighborhood":  # overlaps: interior points the grid decides itself
            assert wrong["grid"] > 0


# ---- the version switch -----------------------------------------------------------------------------------------

def test_as_of_ignored_for_undated_rows_is_caught(monkeypatch, store, engine):
    plant(monkeypatch, tagger, "row_days", 'days[np.isnat(days)] = np.datetime64(as_of, "D")', "pass")
    probe = test_versions.probe_point(store)
    with pytest.raises(AssertionError):
        test_versions.test_engine_mixed_batch(store, engine, probe, "2022-12-09", True)


@pytest.mark.parametrize("as_of", ["2012-12-03", "2022-12-10"])
def test_the_switch_day_off_by_one_is_caught(monkeypatch, store, as_of):
    plant(monkeypatch, LayerStore, "version_index", 'side="right"', 'side="left"')
    # 2012-12-03 is then refused (NoVersionInForce), 2022-12-10 answered with the 2011 lines (AssertionError).
    with pytest.raises((AssertionError, NoVersionInForce)):
        test_versions.test_version_on_the_switch_days(store, as_of)


# ---- the quality gate -------------------------------------------------------------------------------------------

def test_the_unlocated_share_gate_switched_off_is_caught(monkeypatch, live_service, tmp_path):
    from .conftest import REPO

    if str(REPO / "dags") not in sys.path:
        sys.path.append(str(REPO / "dags"))
    import os

    if "airflow" not in sys.modules and "AIRFLOW_HOME" not in os.environ:
        monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path / "airflow_home"))
    from enrich_pipeline import quality

    plant(monkeypatch, quality, "check",
          'q.max_unlocated_share is not None and stats["unlocated_share"] > q.max_unlocated_share', "False")
    with pytest.raises(AssertionError, match="the gate passed 25% unlocated rows"):
        test_quality_gate.check_unlocated_gate(live_service, tmp_path)


# ---- the PostGIS swap -------------------------------------------------------------------------------------------

SWAP_TABLE = "public.mutations_swap_probe"


def _drop_swap_probe(conn) -> None:
    """The published view, its version tables and its catalog row (publish.py: versions behind a stable view)."""
    schema, table = SWAP_TABLE.split(".")
    conn.execute(f"DROP VIEW IF EXISTS {SWAP_TABLE}")
    for (name,) in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = %s AND tablename LIKE %s",
                                (schema, f"{table}%")).fetchall():
        conn.execute(f'DROP TABLE IF EXISTS {schema}."{name}"')
    if conn.execute("SELECT to_regclass(%s)", (f"{schema}.enrich_publications",)).fetchone()[0]:
        conn.execute(f"DELETE FROM {schema}.enrich_publications WHERE table_name = %s", (SWAP_TABLE,))


def check_swap_is_atomic(enriched) -> None:
    """Re-publish a table while another session reads it after every statement the publisher sends: it must see
    the whole old table, or wait for the swap (lock timeout), never no table or a part of one."""
    from enrich_pipeline.publish import publish_postgis

    from .conftest import PG_DSN

    seen: list = []
    with psycopg.connect(PG_DSN, autocommit=True) as reader, psycopg.connect(PG_DSN, autocommit=True) as conn:
        reader.execute("SET lock_timeout = '100ms'")

        class Watched:
            """The publisher's connection, with a read from the other session after each statement."""

            def __getattr__(self, name):
                return getattr(conn, name)

            def execute(self, *args, **kwargs):
                out = conn.execute(*args, **kwargs)
                try:
                    seen.append(reader.execute(f"SELECT count(*) FROM {SWAP_TABLE}").fetchone()[0])
                except psycopg.errors.LockNotAvailable:
                    seen.append("waits")
                except psycopg.Error as exc:
                    seen.append(type(exc).__name__)
                return out

        _drop_swap_probe(conn)
        try:
            n = publish_postgis(conn, SWAP_TABLE, enriched, comment="first")["rows"]
            publish_postgis(Watched(), SWAP_TABLE, enriched, comment="again")
            published = [r[0] for r in conn.execute(f"SELECT rid FROM {SWAP_TABLE} ORDER BY rid").fetchall()]
        finally:
            _drop_swap_probe(conn)
    assert len(seen) >= 5 and set(seen) <= {n, "waits"}, seen
    import pyarrow.parquet as pq

    assert published == sorted(pq.read_table(enriched, columns=["rid"]).column("rid").to_pylist())


@pytest.fixture(scope="module")
def enriched(live_service, tmp_path_factory):
    """A small enriched.parquet made by the pipeline (test_quality_gate's passing case)."""
    from .conftest import REPO

    if str(REPO / "dags") not in sys.path:
        sys.path.append(str(REPO / "dags"))
    tmp = tmp_path_factory.mktemp("swap")
    test_quality_gate.gate(live_service, tmp, test_quality_gate.rows_with(9, at_sea=3),
                           "{layer: council_district, within: null, max_unmatched_share: 1.0}")
    return tmp / "enriched.parquet"


@pytest.mark.postgis
def test_the_swap_is_atomic_for_a_reader(enriched):
    check_swap_is_atomic(enriched)


@pytest.mark.postgis
def test_a_non_atomic_swap_is_seen_by_a_reader(monkeypatch, enriched):
    from enrich_pipeline import publish
    from enrich_service.postgis import publish as pg

    # The non-atomic swap as it would be written today: the view dropped and made again (in the one swap helper
    # the DAG's _switch_view calls), outside a transaction.
    plant(monkeypatch, pg, "point_view",
          'conn.execute(sql.SQL("CREATE OR REPLACE VIEW {} AS SELECT {} FROM {}").format(',
          'conn.execute(sql.SQL("DROP VIEW IF EXISTS {}").format(view)); '
          'conn.execute(sql.SQL("CREATE VIEW {} AS SELECT {} FROM {}").format(')
    plant(monkeypatch, publish, "publish_postgis", "with conn.transaction():", "if True:")
    with pytest.raises(AssertionError, match="UndefinedTable"):
        check_swap_is_atomic(enriched)
