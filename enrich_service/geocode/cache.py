"""Address -> geocode result, so a DAG re-running over the same addresses does no matching work.

One cache per reference digest: a reference whose sha256 changes gets a new, empty cache (the old one is dropped),
while a reload that leaves the reference as it was keeps its cache warm. Bounded in entries and in bytes (keys and
results, estimated): when either is passed, the oldest half goes. An address longer than an address can be
(normalize.MAX_ADDRESS_CHARS) is refused on its row by the matcher ("address is longer than 300 characters") and
never cached, so a few posts of 1 MB addresses cannot fill it.
"""

from __future__ import annotations

import threading

from .normalize import MAX_ADDRESS_CHARS

DEFAULT_MAX_ENTRIES = 1_000_000
DEFAULT_MAX_BYTES = 256 << 20
# A cached entry beyond its texts: the dict slot, the key and result tuples, floats (measured with tracemalloc on
# real results: ~330 bytes; rounded up).
ENTRY_OVERHEAD = 400

_lock = threading.Lock()
_current: ResultCache | None = None


def _text_bytes(value: object) -> int:
    if value.__class__ is str:
        return len(value) + 49  # a str object's header
    if value.__class__ is tuple:
        return sum(_text_bytes(v) for v in value)
    return 0


def entry_bytes(key: object, result: object) -> int:
    return ENTRY_OVERHEAD + _text_bytes(key) + _text_bytes(result)


def _short(key: object) -> bool:
    """Keys are (address, zip): an address past MAX_ADDRESS_CHARS is refused by the matcher, not worth a slot."""
    address = key[0] if key.__class__ is tuple and key else key
    return not (address.__class__ is str and len(address) > MAX_ADDRESS_CHARS)


class ResultCache:
    def __init__(self, digest: str, max_entries: int = DEFAULT_MAX_ENTRIES, max_bytes: int = DEFAULT_MAX_BYTES):
        self.digest = digest
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._data: dict = {}  # key -> (result, its size)
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._data)

    @property
    def bytes(self) -> int:
        return self._bytes

    def get(self, key):
        # dict.get is atomic under the GIL: readers need no lock.
        entry = self._data.get(key)
        return entry[0] if entry is not None else None

    def put_many(self, items: dict) -> None:
        sized = {key: (result, entry_bytes(key, result)) for key, result in items.items() if _short(key)}
        added = sum(size for _, size in sized.values())
        with self._lock:
            if added > self.max_bytes:  # a batch bigger than the whole cache: keep what fits of it, alone
                self._data, self._bytes = {}, 0
                for key, entry in sized.items():
                    if self._bytes + entry[1] > self.max_bytes:
                        break
                    self._data[key] = entry
                    self._bytes += entry[1]
                return
            while self._data and (len(self._data) + len(sized) > self.max_entries
                                  or self._bytes + added > self.max_bytes):
                keep = list(self._data.items())[len(self._data) // 2:]  # insertion order: the newer half
                self._data = dict(keep)
                self._bytes = sum(size for _, size in self._data.values())
            for key, entry in sized.items():
                old = self._data.get(key)
                self._bytes += entry[1] - (old[1] if old is not None else 0)
                self._data[key] = entry

    def clear(self) -> None:
        """Empty, counts too (after the start-up warm-up's own lookups)."""
        with self._lock:
            self._data, self._bytes = {}, 0
            self.hits = self.misses = 0

    def count(self, hits: int, misses: int) -> None:
        self.hits += hits
        self.misses += misses

    def describe(self) -> dict:
        return {"entries": len(self._data), "max_entries": self.max_entries, "bytes": self._bytes,
                "max_bytes": self.max_bytes, "hits": self.hits, "misses": self.misses,
                "reference_sha256": self.digest}


def cache_for(digest: str, max_entries: int = DEFAULT_MAX_ENTRIES, max_bytes: int | None = None) -> ResultCache:
    """The process's cache for this reference digest; a new digest replaces (invalidates) the old cache."""
    global _current
    if max_bytes is None:
        from ..settings import get_settings

        max_bytes = get_settings().geocode_cache_max_bytes
    with _lock:
        if _current is None or _current.digest != digest or _current.max_entries != max_entries or \
                _current.max_bytes != max_bytes:
            _current = ResultCache(digest, max_entries, max_bytes)
        return _current
