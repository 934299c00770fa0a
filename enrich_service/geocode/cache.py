"""Address -> geocode result, so a DAG re-running over the same addresses does no matching work.

One cache per reference digest: a reference whose sha256 changes gets a new, empty cache (the old one is dropped),
while a reload that leaves the reference as it was keeps its cache warm. Bounded: when full, the oldest half goes.
"""

from __future__ import annotations

import threading

DEFAULT_MAX_ENTRIES = 1_000_000

_lock = threading.Lock()
_current: "ResultCache | None" = None


class ResultCache:
    def __init__(self, digest: str, max_entries: int = DEFAULT_MAX_ENTRIES):
        self.digest = digest
        self.max_entries = max_entries
        self._data: dict = {}
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._data)

    def get(self, key):
        # dict.get is atomic under the GIL: readers need no lock.
        return self._data.get(key)

    def put_many(self, items: dict) -> None:
        with self._lock:
            if len(self._data) + len(items) > self.max_entries:
                keep = list(self._data.items())[len(self._data) // 2:]  # insertion order: the newer half
                self._data = dict(keep)
            self._data.update(items)

    def count(self, hits: int, misses: int) -> None:
        self.hits += hits
        self.misses += misses

    def describe(self) -> dict:
        return {"entries": len(self._data), "max_entries": self.max_entries, "hits": self.hits,
                "misses": self.misses, "reference_sha256": self.digest}


def cache_for(digest: str, max_entries: int = DEFAULT_MAX_ENTRIES) -> ResultCache:
    """The process's cache for this reference digest; a new digest replaces (invalidates) the old cache."""
    global _current
    with _lock:
        if _current is None or _current.digest != digest or _current.max_entries != max_entries:
            _current = ResultCache(digest, max_entries)
        return _current
