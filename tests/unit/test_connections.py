"""ConnectionRotation: which answers close their connection."""

import asyncio
import time

import pytest

from serving.arrivals import stamp_task_creation
from serving.connections import SHED_INTERVAL_S, WAITED_S, ConnectionRotation


class App:
    """An ASGI app answering 200; ``hold`` keeps answers open until released."""

    def __init__(self):
        self.hold: asyncio.Event | None = None

    async def __call__(self, scope, receive, send):
        if self.hold is not None:
            await self.hold.wait()
        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": b"{}"})


async def _closes(rotation: ConnectionRotation, client: tuple) -> bool:
    """Whether the answer to one request from ``client`` closes its connection."""
    sent = []

    async def send(message):
        sent.append(message)

    await rotation({"type": "http", "client": client, "path": "/recommend"}, None, send)
    headers = sent[0]["headers"]
    assert (b"content-type", b"application/json") in headers  # the app's own kept
    return (b"connection", b"close") in headers


def test_every_nth_answer_on_a_connection_closes_it():
    rotation = ConnectionRotation(App(), requests_per_connection=3)

    async def run():
        one, other = ("127.0.0.1", 5000), ("127.0.0.1", 5001)
        first = [await _closes(rotation, one) for _ in range(7)]
        # the other connection counts on its own
        second = [await _closes(rotation, other) for _ in range(3)]
        return first, second

    first, second = asyncio.run(run())
    assert first == [False, False, True, False, False, True, False]
    assert second == [False, False, True]


def test_an_answer_given_while_another_is_in_flight_closes_its_connection():
    app = App()
    rotation = ConnectionRotation(app, requests_per_connection=100)

    async def run():
        release = app.hold = asyncio.Event()
        held = asyncio.create_task(_closes(rotation, ("127.0.0.1", 5000)))
        await asyncio.sleep(0.01)  # the first request is in flight, unanswered
        app.hold = None
        busy = await _closes(rotation, ("127.0.0.1", 5001))
        # queueing still, but one connection was just handed back: at capacity,
        # closing every connection would only add handshakes
        busy_again = await _closes(rotation, ("127.0.0.1", 5003))
        await asyncio.sleep(SHED_INTERVAL_S)
        busy_later = await _closes(rotation, ("127.0.0.1", 5004))
        release.set()
        held = await held
        alone = await _closes(rotation, ("127.0.0.1", 5002))
        return busy, busy_again, busy_later, held, alone

    busy, busy_again, busy_later, held, alone = asyncio.run(run())
    assert busy is True  # answered while another waited: this worker is queueing
    assert busy_again is False
    assert busy_later is True
    assert held is False  # answered once the other had gone
    assert alone is False  # nothing else in flight


def test_a_non_positive_count_is_refused():
    with pytest.raises(ValueError, match="at least 1"):
        ConnectionRotation(App(), requests_per_connection=0)


def test_an_answer_to_a_request_that_waited_for_the_event_loop_closes_its_connection():
    """Handlers that run on the loop answer one request at a time: a request that
    came in meanwhile waits for its task to start, and its worker is queueing."""
    rotation = ConnectionRotation(App(), requests_per_connection=100)

    async def run():
        stamp_task_creation(asyncio.get_running_loop())
        prompt = await asyncio.create_task(_closes(rotation, ("127.0.0.1", 5000)))
        queued = asyncio.create_task(_closes(rotation, ("127.0.0.1", 5001)))
        time.sleep(10 * WAITED_S)  # the loop busy answering another request
        return prompt, await queued

    prompt, queued = asyncio.run(run())
    assert prompt is False
    assert queued is True
