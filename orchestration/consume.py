"""``recsys consume``: drain the event stream into the offline event log, each
event exactly once.

Per batch: read entries from the consumer group, append the ones not in the log
yet to this consumer's log file (fsynced), then ``XACK`` them. A crash before the
append loses nothing (the entries stay pending and are delivered again); a crash
between the append and the ack would write them twice, so an entry delivered a
second time is first looked up in the log by its stream id. Batch ingestion
(``raw_events``) runs one drain itself before it reads the log, so a pipeline run
sees every event acknowledged before it started even with no consumer running.
"""

from __future__ import annotations

import logging
import signal
import socket
import threading
from dataclasses import dataclass

import redis

from infra import event_stream
from infra.event_stream import Entry, StreamConsumer
from infra.settings import Settings
from orchestration.sources.event_log import STREAM_ID, EventLogWriter, logged_stream_ids

log = logging.getLogger("recsys.consume")
BATCH = 1000  # entries per read
BLOCK_MS = 1000  # how long a running consumer waits for new entries
# Stream ids carry Redis's clock, log files this host's: how far apart the two may
# be when an entry delivered again is looked up only in files changed after it.
CLOCK_SKEW_S = 300.0


def default_name() -> str:
    """This host's consumer: a restart under the same name takes its own pending
    entries back at once (others' only after they have been idle a while)."""
    return f"consumer-{socket.gethostname()}"


@dataclass
class Drained:
    read: int = 0  # entries read from the stream
    written: int = 0  # appended to the offline log
    already_logged: int = 0  # delivered again, found in the log: acknowledged only
    trimmed: int = 0  # entries removed from the stream (acknowledged by every group)


class OfflineLogConsumer:
    def __init__(self, settings: Settings, name: str | None = None,
                 min_idle_ms: int = 60_000, client: redis.Redis | None = None):
        self.settings = settings
        self.client = client or event_stream.client(settings)
        self.stream = StreamConsumer(self.client, name or default_name(),
                                     min_idle_ms=min_idle_ms)
        self.writer = EventLogWriter(settings.event_log_dir, self.stream.name)

    def _not_logged(self, entries: list[Entry]) -> tuple[list[Entry], int]:
        again = [e for e in entries if e.redelivered]
        if not again:
            return entries, 0
        oldest_s = min(int(e.id.split("-")[0]) for e in again) / 1000
        logged = set(logged_stream_ids(self.settings.event_log_dir,
                                       since_s=oldest_s - CLOCK_SKEW_S))
        fresh = [e for e in entries if not (e.redelivered and e.id in logged)]
        return fresh, len(entries) - len(fresh)

    def step(self, block_ms: int | None = None) -> Drained:
        """One batch: read, write what is new, acknowledge, trim."""
        entries = self.stream.read(BATCH, block_ms)
        fresh, known = self._not_logged(entries)
        if fresh:
            self.writer.append({**e.event, STREAM_ID: e.id} for e in fresh)
        self.stream.ack(entries)  # only now: the log holds every one of them
        trimmed = self.stream.trim() if entries else 0
        return Drained(len(entries), len(fresh), known, trimmed)

    def drain(self) -> Drained:
        """Until the stream has nothing for this consumer."""
        total = Drained()
        while True:
            done = self.step()
            total.read += done.read
            total.written += done.written
            total.already_logged += done.already_logged
            total.trimmed += done.trimmed
            if done.read == 0:
                return total

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                done = self.step(block_ms=BLOCK_MS)
            except redis.RedisError as error:
                log.warning("event stream unavailable (%s): retrying", type(error).__name__)
                stop.wait(1.0)
                continue
            if done.read:
                log.info("%d events: %d written, %d already in the log", done.read,
                         done.written, done.already_logged)


def consume(settings: Settings, name: str | None, once: bool) -> int:
    """The ``recsys consume`` command."""
    consumer = OfflineLogConsumer(settings, name)
    if once:
        done = consumer.drain()
        print(f"{done.read} events read, {done.written} written to "
              f"{consumer.writer.path}, {done.already_logged} already there; "
              f"{event_stream.length(consumer.client)} left in the stream")
        return 0
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    print(f"consuming {event_stream.STREAM} into {consumer.writer.path} (Ctrl-C stops)")
    consumer.run(stop)
    return 0


if __name__ == "__main__":  # what ``recsys consume`` runs in its own process group
    import sys

    sys.exit(consume(Settings.from_env(), sys.argv[1] if len(sys.argv) > 1 else None,
                     once=False))
