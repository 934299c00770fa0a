"""Work whose request is gone stops: a timed-out request's thread ends at its next check instead of running on.

`offload` runs CPU work in a thread with a flag of its own; when the awaiting request is cancelled (the request
timeout, a client that went away), the flag is set and the answer (504) does not wait for the thread. Long Python
loops call `raise_if_cancelled()` every few hundred items; vectorized steps are short and are not interrupted.
"""

from __future__ import annotations

import threading


class Cancelled(Exception):
    """Raised inside offloaded work whose request was cancelled; nobody is waiting for its result."""


_local = threading.local()


def raise_if_cancelled() -> None:
    flag = getattr(_local, "cancelled", None)
    if flag is not None and flag.is_set():
        raise Cancelled()


def run_with_flag(cancelled: threading.Event, fn, *args):
    """Run fn(*args) in this thread with `cancelled` as the flag raise_if_cancelled() reads."""
    _local.cancelled = cancelled
    try:
        return fn(*args)
    finally:
        _local.cancelled = None
