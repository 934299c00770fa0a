"""Lint the dataset specs before they reach Airflow (CI runs it: tests/test_spec_lint.py).

    python dags/enrich_pipeline/lint.py [SPEC_DIR ...] [--env-file env/dev.env ...] [--secrets-example FILE]

Beyond what parsing refuses (spec.py: a malformed file, an unknown layer, a bad e-mail address), a spec that would
only fail later, on a schedule, is refused here: no owners to tell when it fails, a `${NAME}` placeholder that no
deployment sets, an Airflow connection no deployment defines, a report counting entities by a column that is not
part of the id, two specs of one name. Exit status 1 and one line per problem, naming the file and the field.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from pathlib import Path

if __package__ in (None, ""):  # run as a script: the package is the folder beside this file
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from enrich_pipeline.spec import _PLACEHOLDER, SPECS_DIR, DatasetSpec, load_specs_and_errors
else:
    from .spec import _PLACEHOLDER, SPECS_DIR, DatasetSpec, load_specs_and_errors


def _env_keys(path: Path) -> set[str]:
    return {m.group(1) for m in re.finditer(r"^([A-Za-z_][A-Za-z0-9_]*)=", Path(path).read_text(), re.M)}


def _conn_ids(spec: DatasetSpec) -> dict[str, str]:
    """field -> Airflow connection id, for every connection a run of this spec may open."""
    out = {"service_conn_id": spec.service_conn_id}
    if spec.owners:
        out["alert_conn_id"] = spec.alert_conn_id
    if spec.source.kind == "sql" and spec.source.conn_id:
        out["source.conn_id"] = spec.source.conn_id
    if spec.postgis:
        out["outputs.postgis.conn_id"] = spec.postgis.conn_id
    if spec.report:
        out["report.conn_id"] = spec.report.conn_id
    return out


def lint_spec(spec: DatasetSpec, env_files: Sequence[Path] = (), secrets_example: Path | None = None) -> list[str]:
    where = f"{spec.path}: "
    problems = []
    if not spec.owners:
        problems.append(f"{where}owners: nobody is told when a run fails (list their e-mail addresses)")
    for m in _PLACEHOLDER.finditer(spec.path.read_text()):
        name, default = m.group(1), m.group(2)
        for env in env_files:
            if default is None and name not in _env_keys(env):
                problems.append(f"{where}${{{name}}} is not set in {env} (and has no :-default)")
    if secrets_example is not None:
        defined = _env_keys(secrets_example)
        for field, conn_id in _conn_ids(spec).items():
            if f"AIRFLOW_CONN_{conn_id.upper()}" not in defined:
                problems.append(f"{where}{field}: no AIRFLOW_CONN_{conn_id.upper()} in {secrets_example}")
    if spec.report and spec.report.entity_id:
        missing = [c for c in spec.report.entity_id if c not in spec.id]
        if missing:
            problems.append(f"{where}report.entity_id: {missing} not in id {list(spec.id)} (the report counts "
                            f"distinct ids, so they must be id columns)")
    return problems


def lint(dirs: list[Path], env_files: Sequence[Path] = (), secrets_example: Path | None = None) -> list[str]:
    specs, errors = load_specs_and_errors(dirs)
    problems = [str(e) for e in errors]
    if not specs and not errors:
        problems.append(f"no specs in {', '.join(map(str, dirs))}")
    for spec in specs:
        problems += lint_spec(spec, env_files, secrets_example)
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dirs", nargs="*", type=Path, default=[SPECS_DIR])
    parser.add_argument("--env-file", type=Path, action="append", default=[],
                        help="a deployment's settings (KEY=VALUE): every ${NAME} must be set there")
    parser.add_argument("--secrets-example", type=Path,
                        help="the list of secret keys: every connection a spec uses must be there")
    args = parser.parse_args(argv)
    problems = lint(args.dirs, args.env_file, args.secrets_example)
    for p in problems:
        print(p, file=sys.stderr)
    print(f"{len(problems)} problem(s) in {', '.join(map(str, args.dirs))}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
