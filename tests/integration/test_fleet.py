"""The fleet board in Redis through which every worker of every replica agrees on
the model after /reload."""

import json
import threading
import time

from infra import redis_server
from serving.workers import FLEET, STALE_S, Fleet


def test_workers_lists_live_workers_and_forgets_silent_ones(home):
    client = redis_server.ensure(home).client()
    Fleet(client, "host-a:1").report("1")
    client.hset(FLEET, "host-b:2", json.dumps({"version": "1", "at": time.time() - STALE_S - 1}))
    me = Fleet(client, "host-c:3")
    me.report("2")
    assert me.versions() == {"host-a:1": "1", "host-c:3": "2"}
    assert not client.hexists(FLEET, "host-b:2")
    me.leave()
    assert me.versions() == {"host-a:1": "1"}


def test_a_reload_request_changes_the_token_and_wait_all_sees_every_worker(home):
    client = redis_server.ensure(home).client()
    me, peer = Fleet(client, "a:1"), Fleet(client, "b:2")
    assert me.reload_token() == 0
    me.request_reload()
    first = peer.reload_token()
    me.request_reload()
    assert peer.reload_token() == first + 1
    me.report("2")
    peer.report("1")
    threading.Timer(0.3, peer.report, args=("2",)).start()
    started = time.monotonic()
    assert me.wait_all("2", timeout_s=10) == {"a:1": "2", "b:2": "2"}
    assert 0.25 < time.monotonic() - started < 5
    peer.report("1")
    assert me.wait_all("2", timeout_s=0.2) == {"a:1": "2", "b:2": "1"}  # timed out
