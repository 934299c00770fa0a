"""The quality gate: of the rows that should have a district (those inside the city limits), how many have none.

Above the spec's `max_unmatched_share` the run fails before anything is published, and the message lists the
first ids. Rows outside the city (half the transit stops) are not failures. `max_unlocated_share`, when set, also
bounds the share of rows with no usable location at all: missing, placeholder, non-numeric or out-of-range
coordinates, and points outside the plausible area (see assemble.py); `outside_area` counts the last kind.
Every failure message names the threshold (the spec setting) and the measured value.
"""

from __future__ import annotations

from pathlib import Path

from .assemble import ERROR, internal
from .extract import ROW
from .payloads import QualityStats
from .spec import DatasetSpec


class QualityGateFailed(Exception):
    pass


def measure(spec: DatasetSpec, enriched_path: Path) -> QualityStats:
    import numpy as np
    import pyarrow.parquet as pq

    q = spec.quality
    table = pq.read_table(enriched_path)
    n = table.num_rows

    def col(layer):
        name = spec.layers[layer] if layer in spec.layers else internal(layer)
        return table.column(name)

    has = col(q.layer).is_valid().to_numpy(zero_copy_only=False)
    inside = (col(q.within).is_valid().to_numpy(zero_copy_only=False) if q.within
              else np.ones(n, dtype=bool))
    failing = inside & ~has
    unlocated = table.column(ERROR).is_valid().to_numpy(zero_copy_only=False)
    should = int(inside.sum())
    stats: QualityStats = {
        "rows": n,
        "should_match": should,
        "unmatched": int(failing.sum()),
        "unmatched_share": float(failing.sum() / should) if should else 0.0,
        "unlocated": int(unlocated.sum()),
        "unlocated_share": float(unlocated.sum() / n) if n else 0.0,
        "outside_area": int(pc_count(table.column(ERROR), "outside the plausible area")),
        "max_unmatched_share": q.max_unmatched_share,
        "max_unlocated_share": q.max_unlocated_share,
        "unmatched_ids": _ids(spec, table, np.flatnonzero(failing)[: q.show]),
        "unlocated_ids": _ids(spec, table, np.flatnonzero(unlocated)[: q.show]),
    }
    if spec.address is not None:  # the share tagged per match level (dags/enrich_pipeline/geocode.py)
        from .geocode import measure as measure_geocode

        levels, tagged = measure_geocode(spec, table)
        stats["match_levels"], stats["tagged_share"] = levels, tagged
    return stats


def check(spec: DatasetSpec, stats: QualityStats) -> None:
    q = spec.quality
    problems = []
    if stats["unmatched_share"] > q.max_unmatched_share:
        within = f"inside {q.within}" if q.within else "in the dataset"
        problems.append(
            f"{stats['unmatched']} of {stats['should_match']} rows {within} have no {q.layer} "
            f"({stats['unmatched_share']:.4%} > quality.max_unmatched_share {q.max_unmatched_share:.4%}); "
            f"first ids: {stats['unmatched_ids']}")
    if q.max_unlocated_share is not None and stats["unlocated_share"] > q.max_unlocated_share:
        problems.append(
            f"{stats['unlocated']} of {stats['rows']} rows have no usable location, {stats['outside_area']} of "
            f"them outside the plausible area ({stats['unlocated_share']:.4%} > quality.max_unlocated_share "
            f"{q.max_unlocated_share:.4%}); first ids: {stats['unlocated_ids']}")
    if spec.address is not None:
        from .geocode import problems as geocode_problems

        problems += geocode_problems(spec, stats)
    if problems:
        raise QualityGateFailed(f"{spec.name}: quality gate failed, nothing published: " + "; ".join(problems))


def pc_count(column, text: str) -> int:
    import pyarrow as pa
    import pyarrow.compute as pc

    col = column.cast(pa.string())
    return int(pc.sum(pc.match_substring(col, text)).as_py() or 0)


def _ids(spec: DatasetSpec, table, rows) -> list:
    cols = list(spec.id) or [ROW]
    picked = {c: table.column(c).take(rows).to_pylist() for c in cols}
    if len(cols) == 1:
        return picked[cols[0]]
    return ["|".join(str(picked[c][i]) for c in cols) for i in range(len(rows))]
