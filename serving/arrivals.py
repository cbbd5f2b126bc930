"""When a request arrived: the start of its deadline, and the sign that a worker
is queueing (``serving.connections``).

uvicorn creates a request's asyncio task as soon as it has parsed the request's
headers. The scoring handlers run on the event loop, one after another, so a
request that comes in while another is being answered waits for its task to
start; that wait is part of its latency, and nothing inside the task sees it
unless the task knows when it was created. ``stamp_task_creation`` makes a
loop record that in every task it creates, in the task's own context.
"""

from __future__ import annotations

import asyncio
import contextvars
import time

_CREATED: contextvars.ContextVar[float] = contextvars.ContextVar("recsys_task_created")


def stamp_task_creation(loop: asyncio.AbstractEventLoop) -> None:
    """Make ``loop`` stamp each task it creates with the monotonic time of its
    creation (read by ``task_created``). A task given a context of its own by its
    creator keeps that context unstamped: it may be shared or already entered."""
    previous = loop.get_task_factory()

    def create(loop, coro, context=None, **kwargs):
        if context is None:
            context = contextvars.copy_context()
            context.run(_CREATED.set, time.monotonic())
        if previous is not None:
            return previous(loop, coro, context=context, **kwargs)
        return asyncio.Task(coro, loop=loop, context=context, **kwargs)

    loop.set_task_factory(create)


def task_created() -> float:
    """When the running task was created; now, where nothing stamped it."""
    created = _CREATED.get(None)
    return time.monotonic() if created is None else created
