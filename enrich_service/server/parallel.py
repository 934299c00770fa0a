"""numba's parallel kernels (the grid lookup, the JSON row copy) run on the threadpool, so two requests may call
them at once. The OpenMP and TBB threading layers take that; the workqueue layer, which numba falls back to when
neither libgomp nor tbb is installed (a slim container image, say), terminates the whole process when it sees
concurrent use. There, the calls take turns: each one uses every core anyway."""

from __future__ import annotations

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
