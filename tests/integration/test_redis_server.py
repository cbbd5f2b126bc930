"""The embedded Redis lifecycle (a real redis-server)."""

import redis

from infra import redis_server
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
