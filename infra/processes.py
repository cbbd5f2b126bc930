"""Local processes and ports: whether a pid is alive, a free loopback port."""

from __future__ import annotations

import os
import socket


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
