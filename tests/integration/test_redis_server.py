"""The embedded Redis lifecycle (a real redis-server)."""

import re
import time
from urllib.parse import urlsplit

import pytest
import redis

from infra import redis_server
from infra.processes import pid_alive
from infra.settings import Settings


def test_embedded_redis_start_reuse_stop_restart_keeps_data(home):
    first = redis_server.ensure(home)
    assert first.url.startswith("redis://127.0.0.1:")
    assert (home.redis_dir / "server.json").exists()
    first.client().set("feature", "kept")
    # The local client goes over the Unix socket; TCP sees the same data.
    assert first.socket == str(home.redis_dir / "redis.sock")
    assert first.client().connection_pool.connection_kwargs["path"] == first.socket
    assert redis.Redis.from_url(first.url).get("feature") == b"kept"
    # Reused while alive: same server, same pid.
    assert redis_server.ensure(home) == first
    assert redis_server.stop(home) is True
    assert redis_server.running(home) is None
    try:
        redis.Redis.from_url(first.url, socket_timeout=1).ping()
    except redis.ConnectionError:
        pass
    else:
        raise AssertionError("the server still answers after stop")
    # A restart (new pid, same address) keeps the data (append-only file under home).
    second = redis_server.ensure(home)
    assert second.pid != first.pid
    assert second.url == first.url
    assert second.client().get("feature") == b"kept"
    assert redis_server.stop(home) is True
    assert redis_server.stop(home) is False


def test_external_redis_url_is_honoured(home):
    external = redis_server.ensure(home)  # stands in for a server run by someone else
    settings = Settings(home=home.home / "other", redis_url=external.url)
    assert redis_server.ensure(settings).url == external.url
    assert redis_server.ensure(settings).pid is None
    assert redis_server.ensure(settings).socket is None
    assert not (settings.redis_dir / "server.json").exists()


def test_restart_waits_for_a_store_that_loads_longer_than_the_timeout(home):
    """A big store loads its append-only file for longer than ``ensure``'s timeout:
    it answers LOADING meanwhile, which is waited for, not taken for a failure."""
    server = redis_server.ensure(home)
    client = server.client()
    client.execute_command("DEBUG", "POPULATE", 1_000_000, "key", 64)
    client.bgrewriteaof()  # into the append-only file (the populate is not logged)
    while client.info("persistence")["aof_rewrite_in_progress"]:
        time.sleep(0.05)
    assert redis_server.stop(home) is True
    timeout = 0.05
    restarted = redis_server.ensure(home, timeout=timeout)
    assert restarted.client().dbsize() == 1_000_000
    loaded = re.findall(r"DB loaded from append only file: ([0-9.]+) seconds",
                        (home.redis_dir / "redis.log").read_text())
    assert float(loaded[-1]) > timeout  # it did load for longer than the timeout
    assert redis_server.stop(home) is True


def test_a_server_that_exits_while_loading_fails_at_once(home):
    """A server that exits while loading (here: an append-only file it cannot read)
    is an error naming its log, without waiting out the timeout."""
    home.redis_dir.mkdir(parents=True, exist_ok=True)
    (home.redis_dir / "appendonly.aof").write_bytes(b"not an append-only file\r\n")
    started = time.monotonic()
    with pytest.raises(RuntimeError, match="redis.log"):
        redis_server.ensure(home, timeout=30.0)
    assert time.monotonic() - started < 10.0
    assert "Bad file format" in (home.redis_dir / "redis.log").read_text()


def test_a_server_started_but_not_recorded_is_reused_not_doubled(home):
    """When the process that started the server died before recording it, the
    next one finds it by its pid file and port: one server per home, not a second
    appending to the same file."""
    first = redis_server.ensure(home)
    first.client().set("feature", "kept")
    (home.redis_dir / "server.json").unlink()
    again = redis_server.ensure(home)
    assert again == first
    assert again.client().get("feature") == b"kept"
    assert (home.redis_dir / "server.json").exists()
    assert redis_server.stop(home) is True
    assert not pid_alive(first.pid)


def test_an_unreadable_port_file_gets_a_new_port(home):
    """A port file cut short (a crash while it was written) is no reason not to
    start: the server gets a new port, and the file says which."""
    home.redis_dir.mkdir(parents=True, exist_ok=True)
    (home.redis_dir / "port").write_text("")
    server = redis_server.ensure(home)
    port = urlsplit(server.url).port
    assert (home.redis_dir / "port").read_text() == str(port)
    assert server.client().ping() is True
    assert redis_server.stop(home) is True
