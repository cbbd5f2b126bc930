"""How the service's workers, on one host or many, agree on the model.

Every worker of every replica reports the version it serves in one Redis hash
(``FLEET``: field = worker, value = version and when it last reported; a worker
that stops reporting for ``STALE_S`` is dropped from it). ``/reload`` bumps a
counter (``RELOAD``) that every worker watches, so all of them check the
registry at once instead of at their next poll, and answers when every live
worker reports the new version. Only Redis and the registry are shared: nothing
is written to a host's disk. While Redis is down the workers still converge,
each through its own registry poll.
"""

from __future__ import annotations

import json
import os
import socket
import time

import redis

FLEET = "{recsys:serving}:fleet"
RELOAD = "{recsys:serving}:reload"
STALE_S = 5.0  # a worker silent this long is gone (workers report every REPORT_S)
REPORT_S = 1.0


def worker_name(pid: int | None = None) -> str:
    """``host:pid``, unique across the replicas of a fleet."""
    return f"{socket.gethostname()}:{os.getpid() if pid is None else pid}"


class Fleet:
    def __init__(self, client: redis.Redis, name: str | None = None):
        self.client = client
        self.name = name or worker_name()

    def report(self, version: str) -> None:
        """This worker serves ``version`` (call at least every ``REPORT_S``)."""
        self.client.hset(FLEET, self.name, json.dumps({"version": version, "at": time.time()}))

    def leave(self) -> None:
        self.client.hdel(FLEET, self.name)

    def workers(self) -> dict[str, dict]:
        """name -> {"version", "at"} of every live worker (stale ones removed)."""
        now, live, stale = time.time(), {}, []
        for name, value in self.client.hgetall(FLEET).items():
            name = name.decode() if isinstance(name, bytes) else name
            entry = json.loads(value)
            if now - entry["at"] > STALE_S:
                stale.append(name)
            else:
                live[name] = entry
        if stale:
            self.client.hdel(FLEET, *stale)
        return live

    def versions(self) -> dict[str, str]:
        return {name: entry["version"] for name, entry in self.workers().items()}

    def request_reload(self) -> None:
        self.client.incr(RELOAD)

    def reload_token(self) -> int:
        """Changes whenever a reload is requested (0 before the first)."""
        return int(self.client.get(RELOAD) or 0)

    def wait_all(self, version: str, timeout_s: float) -> dict[str, str]:
        """Wait until every live worker reports ``version``; the versions last seen."""
        deadline = time.monotonic() + timeout_s
        while True:
            seen = self.versions()
            if all(v == version for v in seen.values()) or time.monotonic() > deadline:
                return seen
            time.sleep(0.05)
