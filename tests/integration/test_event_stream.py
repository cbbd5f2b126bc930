"""The event bus on a real Redis: the consumer drains the stream into the offline
log exactly once across crashes (before the write, between the write and the
ack, a real SIGKILL), takes over a dead consumer's entries, and trims only what
every group has acknowledged."""

import collections
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from infra import event_stream, redis_server
from infra.event_stream import StreamConsumer
from orchestration.consume import OfflineLogConsumer
from orchestration.sources.event_log import logged_stream_ids


def events(n: int, start: int = 0) -> list[dict]:
    return [{"user_id": f"u{i % 97}", "item_id": f"i{i}", "event_type": "click",
             "timestamp": 1_600_000_000.0 + i, "rating": None} for i in range(start, start + n)]


@pytest.fixture
def stream(home):
    client = redis_server.ensure(home).client()
    yield client
    client.close()


def logged(home) -> collections.Counter:
    """How many times each event (by item id, unique per event here) is in the log."""
    counts = collections.Counter()
    for path in home.event_log_dir.glob("*.jsonl"):
        for line in path.read_text().splitlines():
            counts[json.loads(line)["item_id"]] += 1
    return counts


def test_a_drain_writes_every_event_once_then_trims_the_stream(home, stream):
    ids = event_stream.publish(stream, events(2500))
    assert len(ids) == len(set(ids)) == 2500
    done = OfflineLogConsumer(home, "c1").drain()
    assert (done.read, done.written, done.already_logged) == (2500, 2500, 0)
    assert done.trimmed == 2500 and event_stream.length(stream) == 0
    assert set(logged_stream_ids(home.event_log_dir)) == set(ids)
    event_stream.publish(stream, events(10, start=2500))
    again = OfflineLogConsumer(home, "c1").drain()
    assert (again.read, again.written) == (10, 10)
    counts = logged(home)
    assert len(counts) == 2510 and set(counts.values()) == {1}


def test_a_crash_between_the_write_and_the_ack_writes_nothing_twice(home, stream):
    event_stream.publish(stream, events(300))
    crashed = OfflineLogConsumer(home, "c1")
    entries = crashed.stream.read(1000)  # delivered, written, never acknowledged
    crashed.writer.append({**e.event, "stream_id": e.id} for e in entries)
    assert stream.xpending(event_stream.STREAM, event_stream.OFFLINE_GROUP)["pending"] == 300
    done = OfflineLogConsumer(home, "c1").drain()  # the restart: same name
    assert (done.read, done.written, done.already_logged) == (300, 0, 300)
    assert stream.xpending(event_stream.STREAM, event_stream.OFFLINE_GROUP)["pending"] == 0
    assert set(logged(home).values()) == {1} and len(logged(home)) == 300


def test_entries_of_a_consumer_that_died_before_writing_are_claimed_by_another(home, stream):
    event_stream.publish(stream, events(200))
    OfflineLogConsumer(home, "dead").stream.read(150)  # then it died
    patient = OfflineLogConsumer(home, "other", min_idle_ms=60_000).drain()
    assert patient.read == 50  # the dead one's entries are not idle long enough yet
    time.sleep(0.05)
    taker = OfflineLogConsumer(home, "taker", min_idle_ms=10).drain()
    assert (taker.read, taker.written, taker.already_logged) == (150, 150, 0)
    assert len(logged(home)) == 200 and set(logged(home).values()) == {1}
    assert event_stream.length(stream) == 0


def test_the_stream_is_trimmed_only_below_what_every_group_acknowledged(home, stream):
    event_stream.publish(stream, events(100))
    other = StreamConsumer(stream, "x", group="another-reader")  # has read nothing yet
    OfflineLogConsumer(home, "c1").drain()
    assert event_stream.length(stream) == 100
    first = other.read(40)
    other.ack(first[:30])  # 10 still pending in that group
    assert other.trim() == 30 and event_stream.length(stream) == 70
    other.ack(first[30:])
    assert other.trim() == 10
    assert [e.event["item_id"] for e in other.read(100)] == [f"i{i}" for i in range(40, 100)]


def test_the_consumer_killed_mid_batch_loses_and_doubles_nothing(home, stream):
    """A real consumer process (what ``recsys consume`` runs in the foreground),
    SIGKILLed while it drains, restarted with ``recsys consume --once``."""
    total = 40_000
    for start in range(0, total, 5000):
        event_stream.publish(stream, events(5000, start=start))
    env = {**os.environ, "RECSYS_HOME": str(home.home)}
    # The consumer itself, not the CLI that supervises it: a SIGKILLed CLI cannot
    # pass the signal on, and its consumer would drain on.
    process = subprocess.Popen([sys.executable, "-m", "orchestration.consume", "c1"], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    path = home.event_log_dir / "events-c1.jsonl"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (path.exists() and path.stat().st_size > 0):
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    before = sum(logged(home).values())
    assert 0 < before < total  # killed mid-drain
    subprocess.run([sys.executable, "-m", "orchestration.cli", "consume", "--name", "c1",
                    "--once"], env=env, check=True, capture_output=True)
    counts = logged(home)
    assert len(counts) == total and set(counts.values()) == {1}
    assert event_stream.length(stream) == 0


def test_acknowledged_events_survive_the_embedded_redis_being_killed(home, stream):
    """appendfsync always: what XADD acknowledged is on disk before the reply."""
    ids = []
    for start in range(0, 2000, 10):  # 200 acknowledged calls, as /events makes them
        ids += event_stream.publish(stream, events(10, start=start))
    os.kill(redis_server.running(home).pid, signal.SIGKILL)
    restarted = redis_server.ensure(home).client()
    try:
        kept = [e.id for e in StreamConsumer(restarted, "after").read(5000)]
    finally:
        restarted.close()
    assert kept == ids


def test_a_pending_entry_deleted_by_hand_does_not_hold_the_trim_back(home, stream):
    ids = event_stream.publish(stream, events(5))
    OfflineLogConsumer(home, "c1").stream.read(5)  # delivered, then the consumer died
    stream.xdel(event_stream.STREAM, ids[0])  # an operator removed one meanwhile
    done = OfflineLogConsumer(home, "c1").drain()
    assert (done.read, done.written) == (4, 4)
    assert stream.xpending(event_stream.STREAM, event_stream.OFFLINE_GROUP)["pending"] == 0
    assert event_stream.length(stream) == 0
