"""ASGI middleware that keeps keep-alive clients spread over the service's workers.

The workers of one server accept connections from one shared listening socket, and
a connection stays with the worker that accepted it. Connections opened together
(a client's pool, a load balancer's, a load generator's) are often all accepted by
whichever worker woke first: that worker then queues every request while the
others idle, and the service has the capacity of one worker. So a connection is
answered ``Connection: close`` (which HTTP clients honour by connecting again,
and the new connection goes to whichever worker accepts it):

- when its worker is queueing: it is answering another request at the same
  time, or this request waited for the worker's event loop (behind the requests
  answered on it, ``serving.arrivals``), so the connections leave a busy worker
  first (one per ``SHED_INTERVAL_S`` at most);
- after ``REQUESTS_PER_CONNECTION`` answers in any case, so a lasting imbalance
  between workers that are not queueing yet is redrawn too.

The cost is one TCP handshake per closed connection.
"""

from __future__ import annotations

import time
from collections import OrderedDict

from serving.arrivals import task_created

REQUESTS_PER_CONNECTION = 20
# A request whose task started later than this after its arrival had others
# ahead of it: longer than the loop takes to start a waiting task, shorter than
# any answer.
WAITED_S = 0.001
# At most one connection handed back for queueing per this many seconds: when
# every worker queues (the service at capacity), closing more would only add
# handshakes.
SHED_INTERVAL_S = 0.05
TRACKED_CONNECTIONS = 10_000  # counters kept (the least recently used dropped)


class ConnectionRotation:
    """Closes a client connection after ``requests_per_connection`` answers, or
    after an answer given while the worker had another request in flight."""

    def __init__(self, app, requests_per_connection: int = REQUESTS_PER_CONNECTION):
        if requests_per_connection < 1:
            raise ValueError("requests_per_connection must be at least 1")
        self.app = app
        self.limit = requests_per_connection
        # requests answered so far per client (host, port): one entry per open
        # connection on this worker; the ASGI app runs on one event loop, so no lock
        self.answered: OrderedDict[tuple, int] = OrderedDict()
        self.in_flight = 0  # requests this worker is answering now
        self.shed_at = float("-inf")  # when a connection was last handed back for queueing

    def _last(self, client: tuple) -> bool:
        """Count a request on ``client``'s connection; True when it is its last."""
        count = self.answered.pop(client, 0) + 1
        if count >= self.limit:
            return True
        self.answered[client] = count  # most recently used at the end
        if len(self.answered) > TRACKED_CONNECTIONS:
            self.answered.popitem(last=False)
        return False

    def _shed(self, waited: bool) -> bool:
        """Whether to hand this connection back because its worker is queueing
        (``waited``: the request waited for the worker's event loop)."""
        now = time.monotonic()
        if not (waited or self.in_flight >= 2) or now - self.shed_at < SHED_INTERVAL_S:
            return False
        self.shed_at = now
        return True

    async def __call__(self, scope, receive, send):
        client = scope.get("client")
        if scope["type"] != "http" or not client:
            return await self.app(scope, receive, send)
        key = tuple(client)
        last = self._last(key)
        waited = time.monotonic() - task_created() > WAITED_S

        async def closing_send(message):
            # A worker answering another request meanwhile, or whose requests wait
            # for it, is queueing: its connections are handed back to be accepted
            # by whichever worker can.
            if message["type"] == "http.response.start" and (last or self._shed(waited)):
                self.answered.pop(key, None)
                message = {**message, "headers": [*message.get("headers", ()),
                                                  (b"connection", b"close")]}
            await send(message)

        self.in_flight += 1
        try:
            await self.app(scope, receive, closing_send)
        finally:
            self.in_flight -= 1
