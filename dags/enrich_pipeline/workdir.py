"""The run-scoped work folder and atomic file writes.

Every DAG run works in `<ENRICH_WORK_DIR>/<dag_id>/<run_id>/` (ENRICH_WORK_DIR from the environment or an Airflow
Variable; default: the system temp folder). With several Celery workers it must be shared storage. A re-run of the
same DAG run reuses (and overwrites) its folder; a new run never sees another run's files.

Files are written to a temporary name in the destination folder and renamed into place (`os.replace`, atomic on
one filesystem): a reader, or a retried task, sees the old file or the new one, never half of one.
"""

from __future__ import annotations

import os
import re
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .spec import resolve


def work_root() -> Path:
    return Path(resolve("${ENRICH_WORK_DIR:-" + os.path.join(tempfile.gettempdir(), "enrich-work") + "}"))


def run_dir(dag_id: str, run_id: str) -> Path:
    path = work_root() / dag_id / safe_name(run_id)
    path.mkdir(parents=True, exist_ok=True)
    return path


def safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", text)


@contextmanager
def atomic_path(dest: Path) -> Iterator[Path]:
    """Yields a temporary path beside `dest`; renames it to `dest` when the block succeeds, removes it otherwise."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    # Hidden, unique, and with the destination's suffix (GDAL picks formats by it).
    tmp = dest.with_name(f".{dest.stem}.{uuid.uuid4().hex[:8]}.tmp{dest.suffix}")
    try:
        yield tmp
        if tmp.exists():
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_parquet(table, dest: Path, **kwargs) -> Path:
    import pyarrow.parquet as pq

    with atomic_path(dest) as tmp:
        pq.write_table(table, tmp, **kwargs)
    return Path(dest)
