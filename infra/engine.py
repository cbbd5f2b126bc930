"""Where the offline work runs: ``RECSYS_ENGINE=embedded`` (the default) calls
each block's function in the asset's own process; ``RECSYS_ENGINE=ray`` runs
the same function on the same blocks as Ray tasks, on the cluster at
``RECSYS_RAY_ADDRESS`` or, unset, on a local Ray that is started here (with
``RECSYS_RAY_CPUS`` CPUs and ``RECSYS_RAY_MEMORY_MB`` of memory) and stopped
when the work is done.

The work is cut into blocks whose results do not depend on one another (whole
users, for a point-in-time join): one function, one cut, and the results come
back in block order, so either engine gives the same output. A task's
arguments and result travel through Ray's object store, and a task opens what
it reads by path: on a cluster, ``RECSYS_HOME`` is storage that every node
mounts at the same path.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from infra.settings import Settings

log = logging.getLogger(__name__)

# Ray's object store (the blocks' arguments and results in flight) takes this
# share of RECSYS_RAY_MEMORY_MB; the tasks' own working memory has the rest.
OBJECT_STORE_SHARE = 0.25


class Embedded:
    """Each block in this process, one after the other."""

    name = "embedded"
    parallelism = 1

    def map(self, function: Callable[..., Any], blocks: Iterable[tuple],
            shared: tuple = ()) -> Iterator[Any]:
        """``function(*block, *shared)`` for each block, in block order."""
        for block in blocks:
            yield function(*block, *shared)


class Ray:
    """Each block a Ray task (one CPU each); at most two tasks a CPU in flight, so
    that the driver holds a bounded number of results; results in block order."""

    name = "ray"

    def __init__(self, cpus: int):
        self.parallelism = max(1, cpus)

    def map(self, function: Callable[..., Any], blocks: Iterable[tuple],
            shared: tuple = ()) -> Iterator[Any]:
        """``function(*block, *shared)`` for each block as a task, in block order;
        ``shared`` goes into the object store once, not once a block."""
        import ray

        task = ray.remote(num_cpus=1, max_retries=1)(function)
        refs = [ray.put(value) for value in shared]
        pending: deque = deque()
        for block in blocks:
            pending.append(task.remote(*block, *refs))
            if len(pending) >= 2 * self.parallelism:
                yield ray.get(pending.popleft())
        while pending:
            yield ray.get(pending.popleft())


@contextmanager
def engine(settings: Settings) -> Iterator[Embedded | Ray]:
    """The configured engine for the duration of a piece of work."""
    if settings.engine == "embedded":
        yield Embedded()
        return
    import ray

    started = not ray.is_initialized()
    if started:
        if settings.ray_address:
            ray.init(address=settings.ray_address, log_to_driver=False)
        else:
            memory = settings.ray_memory_mb * 2**20
            # "local", not None: Ray would otherwise join whatever cluster RAY_ADDRESS or
            # the last `ray start` on this host names, and refuse the bounds given.
            ray.init(address="local", num_cpus=settings.ray_cpus, object_store_memory=int(
                memory * OBJECT_STORE_SHARE), _memory=memory, include_dashboard=False,
                log_to_driver=False, configure_logging=False)
        log.info("Ray: %s", ray.cluster_resources())
    try:
        yield Ray(int(ray.cluster_resources().get("CPU", 1)))
    finally:
        if started:
            ray.shutdown()
