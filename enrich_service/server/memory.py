"""How this process uses memory around bulk requests and reloads: glibc keeps freed heap for the next request, the
cyclic collector pauses while a bulk step builds millions of objects and never walks the serving index, and a
reload gives what the replaced index held back to the OS. The malloc parts do nothing on another libc."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import gc
from collections.abc import Iterator

_libc: ctypes.CDLL | None
try:
    _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
except OSError:  # no C library by that name (Windows, where the client may run): nothing to tune
    _libc = None
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3


def keep_freed_memory(keep_mb: int) -> None:
    """By default glibc gives each large buffer a fresh mmap and trims the heap as soon as a little is free at its
    top, so every 1M-point request faulted in and zeroed tens of MB of new pages: reading its 24 MB body took
    ~40 ms instead of ~14 and the Arrow round trip 170-250 ms instead of ~135 (bench/pip.py). Buffers up to 32 MB
    (glibc's ceiling for this) now come from the heap, and up to `keep_mb` of freed heap waits for the next
    request. 0 keeps glibc's defaults."""
    mallopt = getattr(_libc, "mallopt", None)
    if mallopt is None or keep_mb <= 0:
        return
    mallopt(_M_MMAP_THRESHOLD, 32 << 20)
    mallopt(_M_TRIM_THRESHOLD, keep_mb << 20)
    mallopt(_M_TOP_PAD, min(keep_mb, 64) << 20)


@contextlib.contextmanager
def paused_gc() -> Iterator[None]:
    """The collector paused while a bulk step builds millions of acyclic objects (also a decorator).

    Parsing or building a 1M-row JSON body allocates millions of dicts and lists that all stay alive until the step
    ends; the collector runs again and again over a heap that only grows, finding nothing. In a process holding many
    objects (bench/pip.py: ~1.2M) orjson parsed a 1M-row answer in 0.9 s paused and in up to 3.4 s not; the
    geocoder's cache file unpickles in 0.11 s instead of 0.75 s.
    Reference counting still frees everything as usual; only cycles wait for the next collection."""
    # Threads may overlap here: whoever found the collector on turns it back on, so it always ends up on.
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def release_freed_memory() -> None:
    """After an index is swapped in: collect the replaced one, freeze the serving one out of the collector's sight,
    and give the freed pages back to the OS.

    The index is ~280k tracked objects (the geocoder's dicts above all) that live until the next reload; every full
    collection walked them all, an 82 ms pause of the event loop, now ~0. Frozen objects are still freed by
    reference counting; the unfreeze first lets this collection reach cycles in the replaced index. A build
    allocates ~100 MB of small objects and arrays; once freed, glibc keeps them in fragmented heaps and RSS climbs
    with each reload (measured: +150 MB over 12 reloads, flat with the trim)."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()
    trim = getattr(_libc, "malloc_trim", None)
    if trim is not None:
        trim(0)
