"""numba's parallel kernels (the grid lookup, the JSON row copy) run on the threadpool, so two requests may call
them at once. The OpenMP and TBB threading layers take that; the workqueue layer, which numba falls back to when
neither libgomp nor tbb is installed (a slim container image, say), terminates the whole process when it sees
concurrent use. There, the calls take turns: each one uses every core anyway."""

from __future__ import annotations

import os
import threading

import numba

_turns = threading.Lock()
_threadsafe = False  # known after the first parallel call: numba picks its layer then


def run_parallel(kernel, *args):
    global _threadsafe
    if _threadsafe:
        return kernel(*args)
    with _turns:
        out = kernel(*args)
        _threadsafe = numba.threading_layer() != "workqueue"
        return out


def passive_threads() -> None:
    """OpenMP's threads sleep as soon as a parallel kernel ends, unless the environment says otherwise. By default
    libgomp keeps them spinning for a while after each kernel, on the cores the event loop and the other worker need:
    a 1M-point request cost 140-200 ms of CPU with them spinning, 110-160 ms without, for the same wall time
    (docs/engine.md). Read when numba first loads libgomp, so set before the first parallel call."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
