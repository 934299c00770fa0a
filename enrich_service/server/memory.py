"""How this process uses memory around bulk requests and reloads: glibc keeps freed heap for the next request, the
cyclic collector pauses while a bulk step builds millions of objects and never walks the serving index, and a
reload gives what the replaced index held back to the OS. The malloc parts do nothing on another libc."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import gc
import logging
import os
import sys
import time
from collections.abc import Iterator

log = logging.getLogger(__name__)

_libc: ctypes.CDLL | None
try:
    _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
except OSError:  # no C library by that name (Windows, where the client may run): nothing to tune
    _libc = None
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -2, -3, -8


def keep_freed_memory(keep_mb: int) -> None:
    """By default glibc gives each large buffer a fresh mmap and trims the heap as soon as a little is free at its
    top, so every 1M-point request faulted in and zeroed tens of MB of new pages: reading its 24 MB body took
    ~40 ms instead of ~14 and the Arrow round trip 170-250 ms instead of ~135 (bench/pip.py). Buffers up to 32 MB
    (glibc's ceiling for this) now come from the heap, and up to `keep_mb` of freed heap waits for the next
    request. 0 keeps glibc's defaults for this.

    Whatever `keep_mb`, the process keeps one malloc arena instead of glibc's eight: each thread that allocates
    (the threadpool's, numba's) otherwise got an arena of its own, and the start-up's and warm-up's garbage stayed
    scattered over them, ~30 MB of the idle RSS (bench/memory.py). With one, the heap warmed by warm_heap serves
    every thread; the threads that allocate take turns on the GIL anyway."""
    mallopt = getattr(_libc, "mallopt", None)
    if mallopt is None:
        return
    mallopt(_M_ARENA_MAX, 1)
    if keep_mb <= 0:
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


def release_freed_memory(warm_mb: int = 0, collect: bool = True) -> None:
    """After an index is swapped in: collect the replaced one, freeze the serving one out of the collector's sight,
    and give the freed pages back to the OS. `collect=False` when no index was replaced (a worker's start): there
    the full collection found ~10 objects and took ~90 ms.

    The index is ~280k tracked objects (the geocoder's dicts above all) that live until the next reload; every full
    collection walked them all, an 82 ms pause of the event loop, now ~0. Frozen objects are still freed by
    reference counting; the unfreeze first lets this collection reach cycles in the replaced index. A build
    allocates ~100 MB of small objects and arrays; once freed, glibc keeps them in fragmented heaps and RSS climbs
    with each reload (measured: +150 MB over 12 reloads, flat with the trim). Then `warm_mb` of the heap is warmed
    again for the next bulk request (warm_heap)."""
    t0 = time.perf_counter()
    if collect:
        gc.unfreeze()
        gc.collect()
    gc.freeze()
    trim = getattr(_libc, "malloc_trim", None)
    if trim is not None:
        trim(0)
    warmed = warm_heap(warm_mb)
    log.info("freed memory released%s, %.0f MB of heap warmed, in %.0f ms", " (collected)" if collect else "",
             warmed / 2**20, (time.perf_counter() - t0) * 1000)


_PIECE = 8 << 20  # under the 32 MB mmap threshold keep_freed_memory sets: each piece comes from the heap


def warm_heap(mb: int) -> int:
    """Grow the heap by `mb` of touched pages and free them, kept (keep_freed_memory's threshold) for the next bulk
    request: a worker's first 1M-point request otherwise faulted in ~60 MB of fresh pages (~15,000 faults, a third
    of its CPU more than the next ones). Returns the bytes warmed; 0 where the C library is not glibc's."""
    malloc, free, memset = (getattr(_libc, name, None) for name in ("malloc", "free", "memset"))
    if mb <= 0 or malloc is None or free is None or memset is None:
        return 0
    malloc.restype, malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    free.argtypes = [ctypes.c_void_p]
    memset.restype, memset.argtypes = ctypes.c_void_p, [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
    pieces = [malloc(_PIECE) for _ in range(-(-(mb << 20) // _PIECE))]
    for piece in pieces:
        if piece:
            memset(piece, 0, _PIECE)
    for piece in reversed(pieces):
        free(piece)
    return sum(_PIECE for piece in pieces if piece)


_MADV_DONTNEED = 4
# numba's LLVM: start-up runs it (its static initialisers at import, then loading each compiled kernel from numba's
# cache), serving never does once the warm-up has loaded every kernel.
STARTUP_ONLY_LIBRARIES = ("libllvmlite",)


def release_startup_library_pages(names: tuple[str, ...] = STARTUP_ONLY_LIBRARIES) -> int:
    """Unmap the pages of these libraries that start-up touched, and return how many bytes that was.

    Loading libllvmlite.so (LLVM, 170 MB) and numba's kernels maps in 70-110 MB of its code, more when the page
    cache holds the whole file (right after `pip install`): about a quarter of the idle RSS, none of it used again
    by a warmed worker. Only read-only mappings without a private (copied-on-write) page are released, so nothing
    is lost: the pages stay in the page cache, shared, and a later use (numba compiling a new signature) maps them
    back. Linux only; elsewhere nothing happens."""
    madvise = getattr(_libc, "madvise", None)
    if madvise is None:
        return 0
    try:
        smaps = open("/proc/self/smaps").read().splitlines()
    except OSError:
        return 0
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    chosen: list[tuple[int, int, int]] = []  # start, end, resident kB
    span, wanted, rss_kb = (0, 0), False, 0
    for line in smaps:
        head = line.split(maxsplit=5)
        if len(head) >= 5 and "-" in head[0] and not head[0].endswith(":"):  # a mapping's header line
            lo, hi = (int(a, 16) for a in head[0].split("-"))
            span = (lo, hi)
            wanted = "w" not in head[1] and len(head) == 6 and any(name in head[5] for name in names)
        elif wanted and head[0] == "Rss:":
            rss_kb = int(head[1])
        elif wanted and head[0] == "Anonymous:" and head[1] == "0" and rss_kb > 0:
            chosen.append((*span, rss_kb))
    released = 0
    for lo, hi, kb in chosen:
        if madvise(lo, hi - lo, _MADV_DONTNEED) == 0:
            released += kb << 10
    return released


class _NoPandas:
    """A meta path finder that refuses pandas: installed for one call below."""

    def find_spec(self, name, path=None, target=None):
        if name == "pandas":
            raise ModuleNotFoundError("pandas is not for pyarrow in a served worker", name="pandas")
        return None


def served_by_enrich_service() -> bool:
    """This process is a worker of `enrich-service serve` (not a test, a notebook or the CLI's in-process mode)."""
    from .workers import SUPERVISOR_ENV

    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    return (os.environ.get(SUPERVISOR_ENV) == str(os.getppid())  # one of several workers
            or (spec is not None and spec.name == "enrich_service.cli")  # python -m enrich_service.cli serve
            or os.path.basename(sys.argv[0]) == "enrich-service")  # the console script


def keep_pandas_out_of_pyarrow(only_when_served: bool = True) -> bool:
    """Have pyarrow settle, once, that pandas is not installed; True when it did.

    pyarrow imports pandas on its first conversion to or from numpy, to recognise pandas objects that a worker never
    hands it: 25-30 MB of the idle RSS and ~0.3 s of the first bulk request (or of the warm-up). pyarrow looks for
    pandas once per process and remembers the answer; it is asked here while pandas cannot be found. pandas itself
    stays importable (the geocoder reads its reference CSVs with it when its cache is cold). Only in a worker of
    `enrich-service serve`, before anything converts: a process that passes pandas objects to pyarrow (the client,
    tests, notebooks) keeps pyarrow's pandas support, and nothing changes where pandas is imported already."""
    if "pandas" in sys.modules or (only_when_served and not served_by_enrich_service()):
        return False
    import pyarrow as pa

    finder = _NoPandas()
    sys.meta_path.insert(0, finder)
    try:
        with contextlib.suppress(AttributeError):  # pyarrow's private shim: if it is gone, the C++ side still asks
            _ = pa.lib._pandas_api.have_pandas  # the Python side's one look
        pa.array([0.0]).to_numpy(zero_copy_only=False)  # the C++ side's one look
    finally:
        sys.meta_path.remove(finder)
    return "pandas" not in sys.modules
