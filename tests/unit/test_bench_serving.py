"""The serving bench's load generator against a small real HTTP server on loopback:
how it spreads requests over its connections, and how it counts degraded answers."""

import asyncio
import collections

from bench.serving import drive, open_loop

DEADLINE = b'{"degraded":true,"reason":"past the request deadline: popularity"}'
NO_HISTORY = b'{"degraded":true,"reason":"no history for this user: popularity"}'
ANSWERED = b'{"degraded":false,"reason":null}'


async def _serving(run, answer=lambda n: ANSWERED):
    """``run(port, per_connection)`` against a server answering request n (counted
    from 0) with ``answer(n)``; per_connection counts requests by client port."""
    per_connection: collections.Counter = collections.Counter()
    served = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal served
        client = writer.get_extra_info("peername")[1]
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError:
                break
            length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:"))
            await reader.readexactly(length)
            body = answer(served)
            served += 1
            per_connection[client] += 1
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        return await run(server.sockets[0].getsockname()[1], per_connection)
    finally:
        server.close()


def test_requests_take_turns_on_the_connections_opened_beforehand():
    async def run(port, per_connection):
        samples = await drive(port, ["u1", "u2"], rate=200, seconds=0.5, connections=4)
        return samples, per_connection

    samples, per_connection = asyncio.run(_serving(run))
    assert len(samples) == 100 and all(s.status == 200 for s in samples)
    # one answer at a time at this rate: the four connections in turn, a quarter each
    assert sorted(per_connection.values()) == [25, 25, 25, 25]


def test_degraded_answers_are_counted_by_reason():
    def answer(n):
        return DEADLINE if n % 10 == 3 else NO_HISTORY if n % 25 == 7 else ANSWERED

    async def run(port, per_connection):
        return await open_loop(port, ["u1"], rate=200, seconds=0.5)

    row = asyncio.run(_serving(run, answer))
    assert row["requests"] == 100 and row["errors"] == 0
    assert row["degraded_reasons"] == {"past the request deadline": 10,
                                       "no history for this user": 4}
    assert row["degraded"] == 14


def test_the_schedule_runs_with_the_generators_heap_out_of_the_collector():
    """A full collection over the generator's process (the stack, a loaded model)
    would stall the pacer past requests' deadlines: while the schedule runs, what
    existed before it is frozen; afterwards it is back in the collector's care."""
    import gc

    frozen_while_serving = []

    def answer(n):
        frozen_while_serving.append(gc.get_freeze_count())
        return ANSWERED

    async def run(port, per_connection):
        return await drive(port, ["u1"], rate=200, seconds=0.25, connections=2)

    samples = asyncio.run(_serving(run, answer))
    assert len(samples) == 50 and all(s.status == 200 for s in samples)
    assert gc.get_freeze_count() == 0
    # every object alive when the schedule began, this test's included
    assert len(frozen_while_serving) == 50 and min(frozen_while_serving) > 10_000
