"""Python's cyclic garbage collector in processes that must not stall: a full
pass walks every container object of a process holding the stack's libraries
(and a loaded model), which can take longer than a request's deadline, and it
runs whenever enough objects have survived. Objects frozen (``gc.freeze``) are
left out of every pass."""

from __future__ import annotations

import gc
import time
from collections.abc import Iterator
from contextlib import contextmanager


def settle_collector() -> float:
    """Keep the long-lived objects (the imports, the served model) out of the cyclic
    collector's full passes, which otherwise stall a request now and then; the
    seconds it took. Call it when a model was loaded. It collects first: tracing the
    encoder leaves garbage cycles that reach the whole model, and a frozen object is
    never collected, so frozen uncollected they would keep every swapped-out model
    (item and user tables, index, transitions) in the worker. Frozen and acyclic,
    the old model is freed as soon as the last request that holds it ends. The
    collection passes over the objects made since the last freeze only (the new
    model's)."""
    started = time.perf_counter()
    gc.collect()
    gc.freeze()
    return time.perf_counter() - started


@contextmanager
def collector_settled() -> Iterator[None]:
    """A stretch of timed work in a process that is not a service worker (the load
    generator): the objects made before it out of the collector's passes meanwhile,
    back in them afterwards, so that whatever of them becomes garbage later is
    still collected."""
    settle_collector()
    try:
        yield
    finally:
        gc.unfreeze()
