"""The event bus: accepted events on a Redis Stream, drained by consumer groups.

The service appends each accepted event with ``XADD`` (one transaction per
request: all of a request's events or none). A consumer group reads them with
``XREADGROUP``; an entry stays *pending* until the consumer ``XACK``s it, which it
does only once what it did with the entry is durable. Entries left pending by a
consumer that died are taken over with ``XAUTOCLAIM`` after ``min_idle_ms``. The
stream is trimmed (``XTRIM MINID``) only below the oldest entry some group has not
acknowledged, so no consumer ever misses an entry.

What an acknowledged ``XADD`` survives depends on the Redis server's persistence
(``docs/operations.md``): with ``appendfsync always`` (the embedded Redis's
setting) it is on disk before Redis replies.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import redis

from infra import redis_server
from infra.settings import Settings

# One key (a hash tag keeps it, and anything named after it, on one Redis Cluster slot).
STREAM = "{recsys:events}"
OFFLINE_GROUP = "offline-log"  # the group that drains the stream into the offline log
FIELD = "event"  # each entry holds one field: the event as JSON


@dataclass(frozen=True)
class Entry:
    id: str  # the stream entry id, "<ms>-<seq>"
    event: dict
    redelivered: bool  # read before by some consumer (it may have been written already)


def client(settings: Settings, timeout_s: float | None = None) -> redis.Redis:
    """The Redis holding the stream: ``RECSYS_EVENTS_URL`` (a single Redis: the
    stream is one key), else the online store's Redis."""
    server = (redis_server.RedisServer(url=settings.events_url, pid=None)
              if settings.events_url else redis_server.ensure(settings))
    return server.client(timeout_s=timeout_s)


def publish(client: redis.Redis, events: list[dict]) -> list[str]:
    """Append ``events`` in one MULTI/EXEC: either all are in the stream or none."""
    pipe = client.pipeline(transaction=True)
    for event in events:
        pipe.xadd(STREAM, {FIELD: json.dumps(event, sort_keys=True)})
    return [_text(i) for i in pipe.execute()]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _entries(raw, redelivered: bool) -> tuple[list[Entry], list[str]]:
    """(entries, ids of pending entries whose content is gone: deleted by hand
    while pending, which Redis 6.2 still reports)."""
    out, gone = [], []
    for entry_id, fields in raw:
        if not fields:
            gone.append(_text(entry_id))
            continue
        payload = fields.get(FIELD.encode(), fields.get(FIELD))
        out.append(Entry(_text(entry_id), json.loads(payload), redelivered))
    return out, gone


def _after(entry_id: str) -> str:
    """The smallest stream id greater than ``entry_id``."""
    ms, seq = entry_id.split("-")
    return f"{ms}-{int(seq) + 1}"


def _older(a: str, b: str) -> bool:
    return tuple(map(int, a.split("-"))) < tuple(map(int, b.split("-")))


class StreamConsumer:
    """One consumer of a group. ``read`` returns, in this order: entries this
    consumer was given before and never acknowledged (it crashed), entries idle
    for ``min_idle_ms`` in other consumers' pending lists (they crashed), then new
    entries. The caller makes them durable, then calls ``ack``."""

    def __init__(self, client: redis.Redis, name: str, group: str = OFFLINE_GROUP,
                 min_idle_ms: int = 60_000):
        self.client = client
        self.name = name
        self.group = group
        self.min_idle_ms = min_idle_ms
        self._own_pending_done = False
        self._claim_cursor = "0-0"
        try:  # from the stream's start: entries written before any consumer ran count
            client.xgroup_create(STREAM, group, id="0", mkstream=True)
        except redis.ResponseError as error:
            if "BUSYGROUP" not in str(error):
                raise

    def _delivered(self, raw, redelivered: bool) -> list[Entry]:
        entries, gone = _entries(raw, redelivered)
        if gone:  # nothing to write: acknowledged, or they would hold the trim back
            self.client.xack(STREAM, self.group, *gone)
        return entries

    def read(self, count: int, block_ms: int | None = None) -> list[Entry]:
        if not self._own_pending_done:
            # Id 0: this consumer's own pending entries (none for a new name).
            reply = self.client.xreadgroup(self.group, self.name, {STREAM: "0"}, count=count)
            raw = reply[0][1] if reply else []
            if len(raw) < count:
                self._own_pending_done = True
            entries = self._delivered(raw, True)
            if entries:
                return entries
        reply = self.client.xautoclaim(STREAM, self.group, self.name, self.min_idle_ms,
                                       start_id=self._claim_cursor, count=count)
        self._claim_cursor = _text(reply[0])
        claimed = self._delivered(reply[1], True)
        if claimed:
            return claimed
        reply = self.client.xreadgroup(self.group, self.name, {STREAM: ">"}, count=count,
                                       block=block_ms)
        return self._delivered(reply[0][1], False) if reply else []

    def ack(self, entries: list[Entry]) -> None:
        if entries:
            self.client.xack(STREAM, self.group, *[e.id for e in entries])

    def trim(self) -> int:
        """Remove entries every group has acknowledged; how many were removed."""
        return trim_acknowledged(self.client)


def trim_acknowledged(client: redis.Redis) -> int:
    """``XTRIM MINID`` at the oldest entry that some group still needs: its oldest
    pending entry, or the first entry after what it was last given. No group: no
    trim (a group created later reads from the start)."""
    groups = client.xinfo_groups(STREAM)
    if not groups:
        return 0
    floor = None
    for group in groups:
        name = _text(group["name"])
        summary = client.xpending(STREAM, name)
        needed = (_text(summary["min"]) if summary["pending"]
                  else _after(_text(group["last-delivered-id"])))
        if floor is None or _older(needed, floor):
            floor = needed
    return client.xtrim(STREAM, minid=floor, approximate=False)


def length(client: redis.Redis) -> int:
    return client.xlen(STREAM)


def delete_user_entries(client: redis.Redis, user_id: str, page: int = 1000) -> int:
    """``XDEL`` every entry of one user (a deletion request); how many. A pending
    entry deleted this way is acknowledged by the consumer that next reads it."""
    deleted, start = 0, "-"
    while True:
        entries = client.xrange(STREAM, min=start, max="+", count=page)
        if not entries:
            return deleted
        mine = [entry_id for entry_id, fields in entries
                if json.loads(fields.get(FIELD.encode(), fields.get(FIELD, b"{}")))
                .get("user_id") == user_id]
        if mine:
            deleted += client.xdel(STREAM, *mine)
        if len(entries) < page:
            return deleted
        start = _after(_text(entries[-1][0]))
