"""Local processes and ports: the processes the project starts (each in its own
process group, its pid under ``$RECSYS_HOME/run``), whether a pid is alive, a
free loopback port."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from infra.settings import Settings


def pid_alive(pid: int) -> bool:
    """True while ``pid`` runs (another user's process counts); a zombie is dead."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except OSError:  # no /proc: kill(0) is all there is to know
        return True


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (children, theirs, ...), from /proc. BentoML
    puts its workers in process groups of their own, so a signal to the server's
    group does not reach them."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            # The command name may hold spaces: the fields after its ")" are fixed.
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    out, todo = [], list(children.get(pid, []))
    while todo:
        child = todo.pop()
        out.append(child)
        todo += children.get(child, [])
    return out


def kill_tree(pid: int) -> None:
    """SIGKILL ``pid``'s process group and every process below it."""
    below = descendants(pid)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    for child in below:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGKILL)


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether ``port`` can be bound now, as a server binds it (SO_REUSEADDR: connections
    in TIME_WAIT do not block it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    """A port the kernel says is free now (another process may take it before use)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def start_process(settings: Settings, name: str, argv: list[str], log_path: Path | None = None,
                  env: dict[str, str] | None = None) -> subprocess.Popen:
    """``argv`` in a process group of its own (its children die with it), its pid
    recorded as ``name`` so that ``stop_process`` (``recsys stop``) finds it;
    ``env``: extra environment."""
    pid_file = settings.pid_file(name)
    pid_file.parent.mkdir(parents=True, exist_ok=True)
    out = open(log_path, "ab") if log_path else None  # noqa: SIM115 (owned by the child)
    process = subprocess.Popen(
        argv, env={**os.environ, "RECSYS_HOME": str(settings.home), **(env or {})},
        stdout=out, stderr=subprocess.STDOUT if out else None, start_new_session=True)
    pid_file.write_text(str(process.pid))
    return process


def stop_process(settings: Settings, name: str, grace_s: float = 15.0) -> bool:
    """SIGTERM to the process group recorded as ``name``, SIGKILL after ``grace_s``
    (a backgrounded ``dagster dev`` ignores SIGTERM). True if it was running."""
    pid_file = settings.pid_file(name)
    if not pid_file.exists():
        return False
    pid = int(pid_file.read_text())
    pid_file.unlink()
    below = descendants(pid)
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.2)
    else:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
    # Children in groups of their own (BentoML's workers) left without their parent.
    while below and time.monotonic() < deadline:
        below = [child for child in below if pid_alive(child)]
        time.sleep(0.1)
    for child in below:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGKILL)
    return True
