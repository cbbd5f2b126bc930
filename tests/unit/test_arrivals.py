"""serving.arrivals: a task knows when it was created, however long it waited to start."""

import asyncio
import contextvars
import time

import uvloop

from serving.arrivals import stamp_task_creation, task_created


def test_a_task_that_waited_for_the_loop_knows_when_it_was_created():
    async def run():
        loop = asyncio.get_running_loop()
        stamp_task_creation(loop)

        async def waited() -> float:
            return time.monotonic() - task_created()

        before = time.monotonic()
        queued = asyncio.create_task(waited())
        time.sleep(0.03)  # the loop busy answering another request
        first = await queued
        prompt = await asyncio.create_task(waited())
        # a task given a context of its own is left alone: its "arrival" is now
        own = await asyncio.create_task(waited(), context=contextvars.Context())
        return before, first, prompt, own

    before, first, prompt, own = uvloop.run(run())
    assert 0.03 <= first <= time.monotonic() - before
    assert prompt < 0.03 and own < 0.03


def test_a_factory_already_on_the_loop_creates_the_tasks_and_they_are_stamped():
    made = []

    def factory(loop, coro, **kwargs):
        made.append(coro.__name__)
        return asyncio.Task(coro, loop=loop, **kwargs)

    async def run():
        loop = asyncio.get_running_loop()
        loop.set_task_factory(factory)
        stamp_task_creation(loop)

        async def waited() -> float:
            return time.monotonic() - task_created()

        queued = asyncio.create_task(waited())
        time.sleep(0.01)
        return await queued

    assert uvloop.run(run()) >= 0.01
    assert "waited" in made  # (the runner's own tasks too, at shutdown)
