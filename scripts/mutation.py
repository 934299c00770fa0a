"""A small in-memory mutation tester for the functions that decide answers (see docs/testing.md).

For each target function it makes one mutant per site (a comparison flipped, + for -, a constant moved by one, a
min for a max, `and` for `or`, a `not`/`~`/unary minus dropped, a subscript assignment deleted...), compiles the
mutated source into the function's own module namespace, swaps it in, and runs the suite's own checks for that
function (the test functions themselves, called with fixtures built once), cheapest first. A mutant is killed when
a check fails or it runs past the time limit. mutmut was tried first: its trampolines do not survive numba or the
TaskFlow closures, and a fresh pytest per mutant costs the PostGIS truth (~15 s) every time.

The numba kernels in engine/grid.py are not mutated (recompiling the kernel chain costs seconds per mutant); the
grid's Python side is, and the kernels' answers are held to the exact path and PostGIS by the checks.

    .venv/bin/python scripts/mutation.py                 # every target
    .venv/bin/python scripts/mutation.py --only rules    # targets whose name contains "rules"
    .venv/bin/python scripts/mutation.py --list          # the mutants, without running them
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import copy
import functools
import inspect
import json
import os
import signal
import sys
import tempfile
import textwrap
import time
import traceback
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "dags")]

# (module, qualified name, check group)
TARGETS = [
    ("enrich_service.engine.rules", "winners", "rule"),
    ("enrich_service.engine.exact", "_tile_boxes", "rule"),
    ("enrich_service.engine.exact", "ExactIndex.candidates", "rule"),
    ("enrich_service.engine.exact", "ExactIndex._tag", "rule"),
    ("enrich_service.engine.grid", "_segments", "grid"),
    ("enrich_service.engine.grid", "GridIndex.__init__", "grid"),
    ("enrich_service.engine.grid", "GridIndex.lookup", "grid"),
    ("enrich_service.engine.tagger", "Engine.tag_version", "rule"),
    ("enrich_service.engine.tagger", "row_days", "version"),
    ("enrich_service.engine.tagger", "Engine.tag", "rule"),
    ("enrich_service.engine.tagger", "_fill_nearest", "rule"),
    ("enrich_service.layers.store", "LayerStore.version_on", "version"),
    ("enrich_service.layers.store", "LayerStore.version_index", "version"),
    ("enrich_pipeline.quality", "measure", "quality"),
    ("enrich_pipeline.quality", "check", "quality"),
    ("enrich_pipeline.publish", "check_guards", "swap"),
    ("enrich_pipeline.publish", "_prepare", "swap"),
    ("enrich_pipeline.publish", "_switch_view", "swap"),
    ("enrich_pipeline.publish", "drop_old_versions", "swap"),
    ("enrich_pipeline.publish", "publish_postgis", "swap"),
    ("enrich_service.postgis.publish", "stage", "swap"),
    ("enrich_service.postgis.publish", "create_table", "swap"),
    ("enrich_service.postgis.publish", "create_index", "swap"),
    ("enrich_service.postgis.publish", "refill", "swap"),
    ("enrich_service.postgis.publish", "point_view", "swap"),
    ("enrich_service.postgis.publish", "upsert", "swap"),
    ("enrich_service.postgis.publish", "drop_versions", "swap"),
    ("enrich_service.geocode.join", "geocode_join", "geocode"),
]

_CMP = {ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt, ast.Eq: ast.NotEq, ast.NotEq: ast.Eq,
        ast.Is: ast.IsNot, ast.IsNot: ast.Is, ast.In: ast.NotIn, ast.NotIn: ast.In}
_BIN = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult, ast.FloorDiv: ast.Mult,
        ast.Mod: ast.FloorDiv, ast.BitAnd: ast.BitOr, ast.BitOr: ast.BitAnd, ast.BitXor: ast.BitOr,
        ast.LShift: ast.RShift, ast.RShift: ast.LShift}
_NAMES = {"min": "max", "max": "min", "minimum": "maximum", "maximum": "minimum", "any": "all", "all": "any"}
_STRINGS = {"right": "left", "left": "right"}


def _sites(tree: ast.AST) -> list[tuple[int, str]]:
    """(node index in ast.walk order, description) of every mutable site."""
    out = []
    # Annotations are not evaluated (from __future__ import annotations): mutating them changes nothing.
    skip = set()
    for node in ast.walk(tree):
        for ann in ([getattr(node, "annotation", None), getattr(node, "returns", None)]):
            if isinstance(ann, ast.AST):
                skip.update(id(n) for n in ast.walk(ann))
    for i, node in enumerate(ast.walk(tree)):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Compare):
            for j, op in enumerate(node.ops):
                if type(op) in _CMP:
                    out.append((i, f"cmp{j}:{type(op).__name__}->{_CMP[type(op)].__name__}"))
        elif isinstance(node, (ast.BinOp, ast.AugAssign)) and type(node.op) in _BIN:
            out.append((i, f"binop:{type(node.op).__name__}->{_BIN[type(node.op)].__name__}"))
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.Not, ast.Invert, ast.USub)):
            out.append((i, f"drop:{type(node.op).__name__}"))
        elif isinstance(node, ast.BoolOp):
            out.append((i, f"boolop:{type(node.op).__name__}"))
        elif isinstance(node, ast.Constant):
            if isinstance(node.value, bool):
                out.append((i, f"const:{node.value}->{not node.value}"))
            elif isinstance(node.value, (int, float)):
                out.append((i, f"const:{node.value}->{node.value + 1}"))
            elif isinstance(node.value, str) and node.value in _STRINGS:
                out.append((i, f"const:{node.value}->{_STRINGS[node.value]}"))
        elif isinstance(node, ast.Name) and node.id in _NAMES:
            out.append((i, f"name:{node.id}->{_NAMES[node.id]}"))
        elif isinstance(node, ast.Attribute) and node.attr in _NAMES:
            out.append((i, f"attr:{node.attr}->{_NAMES[node.attr]}"))
        elif isinstance(node, ast.Assign) and any(isinstance(t, ast.Subscript) for t in node.targets):
            out.append((i, "delete:subscript-assignment"))
    return out


def _mutate(tree: ast.AST, index: int, what: str) -> ast.AST:
    tree = copy.deepcopy(tree)
    node = list(ast.walk(tree))[index]
    kind = what.split(":")[0]
    if kind.startswith("cmp"):
        j = int(kind[3:])
        node.ops[j] = _CMP[type(node.ops[j])]()
    elif kind == "binop":
        node.op = _BIN[type(node.op)]()
    elif kind == "drop":
        node.op = ast.UAdd() if isinstance(node.op, ast.USub) else None
        if node.op is None:  # `not x` / `~x` -> `x`
            _replace(tree, node, node.operand)
    elif kind == "boolop":
        node.op = ast.Or() if isinstance(node.op, ast.And) else ast.And()
    elif kind == "const":
        node.value = (not node.value if isinstance(node.value, bool)
                      else _STRINGS[node.value] if isinstance(node.value, str) else node.value + 1)
    elif kind == "name":
        node.id = _NAMES[node.id]
    elif kind == "attr":
        node.attr = _NAMES[node.attr]
    elif kind == "delete":
        _replace(tree, node, ast.Pass())
    return ast.fix_missing_locations(tree)


def _replace(tree: ast.AST, old: ast.AST, new: ast.AST) -> None:
    for parent in ast.walk(tree):
        for field, value in ast.iter_fields(parent):
            if value is old:
                setattr(parent, field, new)
            elif isinstance(value, list) and any(v is old for v in value):
                setattr(parent, field, [new if v is old else v for v in value])


def _resolve(module_name: str, qualname: str):
    import importlib

    module = importlib.import_module(module_name)
    owner = module
    parts = qualname.split(".")
    for p in parts[:-1]:
        owner = getattr(owner, p)
    return module, owner, parts[-1]


def mutants(module_name: str, qualname: str):
    module, owner, name = _resolve(module_name, qualname)
    func = inspect.getattr_static(owner, name)
    source = textwrap.dedent(inspect.getsource(func))
    first_line = func.__code__.co_firstlineno
    tree = ast.parse(source)
    for index, what in _sites(tree):
        node = list(ast.walk(tree))[index]
        yield index, what, first_line + getattr(node, "lineno", 1) - 1, tree, module, owner, name


@contextlib.contextmanager
def planted(tree, index, what, module, owner, name):
    mutated = _mutate(tree, index, what)
    namespace = dict(vars(module))
    exec(compile(mutated, module.__file__, "exec"), namespace)
    original = inspect.getattr_static(owner, name)
    # Modules that imported the function by name (`from .publish import refill`) hold the original: swap theirs too.
    holders = [(m, attr) for m in list(sys.modules.values()) if m is not None and m is not owner
               and getattr(m, "__name__", "").startswith(("enrich_service", "enrich_pipeline"))
               for attr, value in list(vars(m).items()) if value is original]
    setattr(owner, name, namespace[name])
    for m, attr in holders:
        setattr(m, attr, namespace[name])
    try:
        yield
    finally:
        setattr(owner, name, original)
        for m, attr in holders:
            setattr(m, attr, original)


class Timeout(Exception):
    pass


def _alarm(signum, frame):
    raise Timeout()


# ---- the checks: the suite's own test functions, with fixtures built once -----------------------------------------

class Checks:
    def __init__(self, groups: set[str]):
        import numpy as np
        import psycopg

        from enrich_service.engine.exact import ExactIndex
        from enrich_service.engine.grid import GridIndex
        from enrich_service.engine.tagger import Engine
        from enrich_service.layers.store import LayerStore
        from enrich_service.postgis import load_layers
        from enrich_service.settings import REPO_ROOT
        from tests import (
            conftest,
            test_engine,
            test_grid,
            test_mutation_kills,
            test_mutations,
            test_quality_gate,
            test_rule_truth,
            test_versions,
        )

        self.m = dict(engine=test_engine, grid=test_grid, mutations=test_mutations, quality=test_quality_gate,
                      truth=test_rule_truth, versions=test_versions)
        self.store = LayerStore.load(REPO_ROOT / "boundaries" / "manifest.yaml", conftest.BOUNDARIES,
                                     REPO / ".cache" / "layers")
        self.engine = Engine(self.store)
        self.probe = test_versions.probe_point(self.store)
        self.pg_dsn = conftest.PG_DSN
        self.tmp = Path(tempfile.mkdtemp(prefix="mutation-"))
        self.truth = {}
        if groups & {"rule", "version", "grid"}:
            rng = np.random.default_rng(17)
            with psycopg.connect(conftest.PG_DSN) as conn:
                schema = test_rule_truth.SCHEMA
                conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
                conn.execute(f"CREATE SCHEMA {schema}")
                conn.commit()
                load_layers(conn, self.store, schema=schema)
                for layer, vi in test_rule_truth.VERSIONS:
                    v = self.store.versions[layer][vi]
                    pts = test_rule_truth.probe_points(v, rng)
                    self.truth[layer, vi] = (pts, *test_rule_truth.rule_in_sql(conn, v, pts))
                conn.execute(f"DROP SCHEMA {schema} CASCADE")
                conn.commit()
        if "grid" in groups:  # a layer of 3,003 features (int32 cells, the records), answered by the exact path once
            from tests import test_many_polygons

            self.m["many"] = test_many_polygons
            self.voronoi = test_many_polygons.many_polygons(self.store, self.tmp)
            probes = test_many_polygons.run_probes(self.voronoi, np.random.default_rng(3121))
            exact = ExactIndex(self.voronoi)  # the grid's targets leave the exact path as it is: built once
            self.run_truth = probes, test_many_polygons.exact_answers(exact, probes), exact
            self.exact = {(layer, vi): ExactIndex(self.store.versions[layer][vi]) for layer, vi in test_rule_truth.VERSIONS}
            small = {place: test_grid.small_layer(Path(tempfile.mkdtemp(dir=self.tmp)), centre)
                     for place, centre in test_grid.PLACES.items()}
            self.small = {place: (v, ExactIndex(v)) for place, v in small.items()}
            # The kernels compiled (or read from numba's cache) here, not in every child; serially: a parallel
            # kernel would start OpenMP's threads in this process, and a forked child using them aborts.
            for cells in test_many_polygons.RUN_RESOLUTIONS:
                GridIndex.build(self.voronoi, cells).lookup(*(c[:1000] for c in probes["random"]))
        self.cases = {}
        self.m["kills"] = test_mutation_kills
        if "swap" in groups:  # a small enriched file by hand (test_mutation_kills): no service needed
            self.enriched = test_mutation_kills.write_enriched(self.tmp / "swap.parquet", test_mutation_kills.rows(9))
        if "quality" in groups:
            if "AIRFLOW_HOME" not in os.environ:
                os.environ["AIRFLOW_HOME"] = str(self.tmp / "airflow_home")
            proc, url = conftest.start_service()
            self.url = url
            try:
                real_prepare = test_quality_gate.prepare

                def cached(live_service, tmp_path, rows, quality):  # each case through the service once
                    key = (tuple(rows), quality)
                    if key not in self.cases:
                        self.cases[key] = real_prepare(live_service, self.tmp / f"case{len(self.cases)}", rows,
                                                       quality)
                    return self.cases[key]

                test_quality_gate.prepare = cached
                for name, test in self.quality_tests():
                    test(None, url, self.tmp / name)
                test_quality_gate.check_unlocated_gate(url, self.tmp / "unlocated")
            finally:
                proc.terminate()
                proc.wait(timeout=30)

        if "geocode" in groups:
            from tests import test_geocode

            self.m["geocode"] = test_geocode
            self._stack = contextlib.ExitStack()
            env = {"ENRICH_BOUNDARY_DIR": str(conftest.BOUNDARIES), "ENRICH_REFERENCE_DIR": str(conftest.ADDRESS),
                   "ENRICH_MAX_BATCH": "1000", "ENRICH_API_KEYS": "test-admin-key"}
            self.client = self._stack.enter_context(conftest.ready_app(env))
            from enrich_service.geocode.reference import resolve_reference
            from enrich_service.settings import Settings

            self.files = resolve_reference(Settings(reference_dir=conftest.ADDRESS))

    def quality_tests(self):
        q = self.m["quality"]
        return [(n, getattr(q, n)) for n in dir(q) if n.startswith("test_")]

    def group(self, name: str) -> list[tuple[str, Callable[[], object]]]:
        """[(check name, callable)] for a group, cheapest first."""
        t, v, e = self.m["truth"], self.m["versions"], self.m["engine"]
        out: list[tuple[str, Callable[[], object]]]
        if name == "rule":
            out = [(f"tiles[{layer}]", (lambda layer=layer, vi=vi: e.test_tiles_cover_every_part_and_stay_small(
                self.store, layer, vi))) for layer, vi in (("council_district", 1), ("neighborhood", 0))]
            out += [("one point", lambda: e.test_one_point_at_a_time_answers_as_the_batch(self.store))]
            out += [(f"each feature[{layer}]", (lambda layer=layer: e.test_a_point_inside_each_feature_gets_its_key(
                self.store, self.engine, layer))) for layer in ("council_district", "neighborhood")]
            out += [(f"nearest[{layer}]", (lambda layer=layer, vi=vi: e.test_nearest_within_matches_a_brute_force_search(
                self.store, self.engine, layer, vi))) for layer, vi in (("council_district", 1), ("neighborhood", 0))]
            out += [(f"truth[{layer},{vi}]", (lambda layer=layer, vi=vi: t.test_grid_and_exact_paths_follow_the_rule_as_postgis_computes_it(
                self.store, self.engine, self.truth, layer, vi))) for layer, vi in t.VERSIONS]
            out.append(("known vertex", lambda: t.test_the_known_shared_vertex_goes_to_the_smallest_planning_area(
                self.store, self.engine, self.truth)))
            out += self.group("version")
            return out
        if name == "grid":  # the many-feature runs and the cells (a second or two each), then the rule's checks
            import numpy as np

            many, grid = self.m["many"], self.m["grid"]
            out = [(f"runs[{cells}]", (lambda cells=cells: many.check_grid_runs_follow_the_exact_path(
                self.voronoi, *self.run_truth, cells))) for cells in many.RUN_RESOLUTIONS]
            out += [(f"cells[{layer},{vi}]", (lambda layer=layer, vi=vi: grid.check_cells_hold_what_the_geometry_says(
                self.store.versions[layer][vi], grid.GridIndex.build(self.store.versions[layer][vi]),
                self.exact[layer, vi], np.random.default_rng(29)))) for layer, vi in t.VERSIONS]
            out += [(f"small[{place}]", (lambda place=place: grid.check_a_small_layer(*self.small[place])))
                    for place in grid.PLACES]
            return out + self.group("rule")
        if name == "version":
            out = [(f"switch {d}", (lambda d=d: v.test_version_on_the_switch_days(self.store, d))) for d in v.AS_OF]
            out += [(f"mixed {d} grid={g}", (lambda d=d, g=g: v.test_engine_mixed_batch(
                self.store, self.engine, self.probe, d, g))) for d in v.AS_OF if v.AS_OF[d] for g in (True, False)]
            k = self.m["kills"]
            out += [("row dates", lambda: k.check_row_dates_and_invalid_rows(self.engine, self.probe)),
                    ("nearest bounds", lambda: k.check_nearest_within_bounds(self.engine))]
            out += [("nearest", lambda: e.test_nearest_within_reports_the_distance(self.store, self.engine)),
                    ("overlap", lambda: e.test_overlap_of_mission_valley_and_old_town_is_answered_not_dropped(
                        self.store, self.engine)),
                    ("shared edge", lambda: e.test_point_on_a_shared_district_edge_goes_to_the_smaller_district(
                        self.store, self.engine))]
            return out
        if name == "quality":
            out = [(n, (lambda test=test, n=n: test(None, self.url, self.tmp / n))) for n, test in self.quality_tests()]
            out.append(("unlocated gate", lambda: self.m["quality"].check_unlocated_gate(self.url, self.tmp / "u")))
            out.append(("empty dataset", lambda: self.m["kills"].check_an_empty_dataset_passes_the_gate(self.tmp / "e")))
            out.append(("address gate", self.m["kills"].check_the_address_gate_runs_in_the_quality_check))
            return out
        if name == "geocode":
            g = self.m["geocode"]
            return [("geocode tags", lambda: g.test_get_geocode_tags_the_address(self.client, self.files)),
                    ("bad records", lambda: g.test_one_bad_record_never_fails_the_batch(self.client)),
                    ("flags", lambda: g.test_flags_for_the_known_bad_cases(self.client)),
                    ("dates", lambda: g.test_records_with_a_date_get_the_layer_versions_in_force_that_day(
                        self.client)),
                    ("city limits named", lambda: self.m["kills"].check_a_geocode_naming_city_limits_keeps_it(
                        self.client)),
                    ("early record", lambda: self.m["kills"].check_a_record_dated_before_the_first_version_gets_no_rule(
                        self.client))]
        if name == "swap":
            k = self.m["kills"]
            return [("read back", lambda: k.check_publications_read_back(self.pg_dsn, self.tmp / "back")),
                    ("catalog lock", lambda: k.check_a_switch_waits_for_the_publisher_holding_the_catalog_row(
                        self.pg_dsn, self.tmp / "lock")),
                    ("swap atomic", lambda: self.m["mutations"].check_swap_is_atomic(self.enriched)),
                    ("boundary load", lambda: k.check_boundary_loads_refill_in_place(self.pg_dsn, self.store))]
        raise ValueError(name)


def _run_mutant(checks, group, timeout, *mutant) -> str | None:
    """Plant one mutant (none: the code as it is) and run its group's checks: what killed it, or None when it
    survived."""
    killed_by = None
    signal.alarm(timeout)
    try:
        with planted(*mutant) if mutant else contextlib.nullcontext():
            for check, run in checks.group(group):
                try:
                    run()
                except Timeout:
                    raise
                except BaseException as exc:  # noqa: BLE001 - any failure of a check kills the mutant
                    killed_by = f"{check}: {type(exc).__name__}"
                    break
    except Timeout:
        killed_by = "timeout"
    except Exception as exc:  # the mutant does not even compile or load
        killed_by = f"invalid: {type(exc).__name__}: {exc}"
    finally:
        signal.alarm(0)
    return killed_by


def _in_child(run) -> str | None:
    """Run one mutant in a forked child, so a mutant that crashes the process (a compiled kernel following a bad
    index out of bounds) counts as killed instead of ending the run. The child shares the fixtures built once and
    leaves with os._exit, so it never closes the parent's database connections."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        try:
            outcome = run()
            os.write(write, json.dumps({"killed_by": outcome}).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        data = pipe.read()
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        return f"crash: signal {os.WTERMSIG(status)}"
    if not data:
        return f"crash: exit {os.waitstatus_to_exitcode(status)}"
    return json.loads(data)["killed_by"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", help="run the targets whose name contains this (comma-separated: any of these)")
    parser.add_argument("--list", action="store_true")
    parser.add_argument("--timeout", type=int, default=120, help="seconds a mutant may run before it counts killed")
    parser.add_argument("--json", help="write every mutant's outcome here")
    args = parser.parse_args()
    only = args.only.split(",") if args.only else []
    targets = [t for t in TARGETS if not only or any(o in f"{t[0]}.{t[1]}" for o in only)]
    if args.list:
        for module, qualname, _group in targets:
            for _, what, line, *_ in mutants(module, qualname):
                print(f"{module}.{qualname}:{line} {what}")
        return 0
    import logging

    logging.disable(logging.WARNING)
    t0 = time.monotonic()
    checks = Checks({g for _, _, g in targets})
    print(f"fixtures ready in {time.monotonic() - t0:.0f}s", flush=True)
    results = []
    signal.signal(signal.SIGALRM, _alarm)
    # Each group must pass on the code as it is, in a child like the mutants: otherwise every mutant would count as
    # killed (e.g. a fixture that started OpenMP's threads in this process makes every child that uses them abort).
    for group in dict.fromkeys(g for _, _, g in targets):
        failed = _in_child(functools.partial(_run_mutant, checks, group, args.timeout))
        if failed:
            print(f"the {group} checks fail without any mutant ({failed}): no score", flush=True)
            return 1
    print(f"checks pass unmutated ({time.monotonic() - t0:.0f}s)", flush=True)
    for module, qualname, group in targets:
        for index, what, line, tree, mod, owner, name in mutants(module, qualname):
            site = f"{module}.{qualname}:{line} {what}"
            t1 = time.monotonic()
            killed_by = _in_child(functools.partial(_run_mutant, checks, group, args.timeout, tree, index, what, mod,
                                                    owner, name))
            results.append({"site": site, "killed_by": killed_by, "seconds": round(time.monotonic() - t1, 1)})
            print(("KILLED   " if killed_by else "SURVIVED ") + site + (f"  [{killed_by}]" if killed_by else ""),
                  flush=True)
    killed = sum(r["killed_by"] is not None for r in results)
    print(f"\n{killed} of {len(results)} mutants killed ({killed / max(len(results), 1):.1%}) "
          f"in {time.monotonic() - t0:.0f}s")
    for r in results:
        if r["killed_by"] is None:
            print("survivor:", r["site"])
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception:
        traceback.print_exc()
        sys.exit(1)
