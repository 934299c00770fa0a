"""A pickle per derived artefact in the service's own cache folder (ENRICH_CACHE_DIR), keyed by its inputs' sha256
and the digest of the code that derives it: a start or reload with unchanged inputs reads what it built last time.

The folder belongs to the service (never user-supplied files), so pickle is acceptable here. A file that cannot be
read is rebuilt and replaced; a folder that cannot be written only costs the rebuild next time."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import pickle
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from .memory import paused_gc

log = logging.getLogger(__name__)
T = TypeVar("T")


def code_digest(*files: Path) -> str:
    h = hashlib.sha256()
    for path in files:
        h.update(Path(path).read_bytes())
    return h.hexdigest()[:16]


def cached(path: Path, build: Callable[[], T]) -> tuple[T, bool]:
    """(value, True) when read from `path`, else (build(), False) after writing it there atomically."""
    if path.is_file():
        try:
            with open(path, "rb") as f, paused_gc():
                return pickle.load(f), True
        except Exception as exc:  # noqa: BLE001 - a damaged cache file is rebuilt, never fatal
            log.warning("cache file %s unreadable (%s); rebuilding", path, exc)
    value = build()
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".part-")
        with os.fdopen(fd, "wb") as f:
            pickle.dump(value, f, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(tmp, path)
        tmp = None
    except (OSError, pickle.PicklingError, TypeError, AttributeError) as exc:  # disk full, a value pickle refuses
        log.warning("cannot write the cache file %s: %s", path, exc)
    finally:
        if tmp is not None:  # a failed write leaves no .part-* file behind
            with contextlib.suppress(OSError):
                os.unlink(tmp)
    return value, False
