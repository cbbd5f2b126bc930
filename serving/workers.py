"""How the service's worker processes agree on the model after ``/reload``.

``bentoml serve`` runs ``RECSYS_SERVING_WORKERS`` processes, and a request reaches
one of them. Each worker writes the version it serves to a file of its own, and
watches a request file that ``/reload`` rewrites. The worker that gets the call
swaps, rewrites the request file, and answers once every live worker serves the
same version (or after a timeout). Plain files under ``$RECSYS_HOME/serving``:
no dependency on Redis, which may be the thing that is down.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from infra.files import atomic_write_text
from infra.processes import pid_alive

REQUEST = "reload-request"


class WorkerBoard:
    def __init__(self, directory: Path, pid: int | None = None):
        self.directory = directory
        self.pid = os.getpid() if pid is None else pid
        (directory / "workers").mkdir(parents=True, exist_ok=True)

    @property
    def _mine(self) -> Path:
        return self.directory / "workers" / f"{self.pid}.version"

    def report(self, version: str) -> None:
        """This worker now serves ``version``."""
        atomic_write_text(self._mine, version)

    def leave(self) -> None:
        self._mine.unlink(missing_ok=True)

    def versions(self) -> dict[int, str]:
        """pid -> version of every live worker (files of dead ones are removed)."""
        out = {}
        for path in (self.directory / "workers").glob("*.version"):
            pid = int(path.stem)
            if not pid_alive(pid):
                path.unlink(missing_ok=True)
                continue
            try:
                out[pid] = path.read_text()
            except FileNotFoundError:  # the worker left meanwhile
                continue
        return out

    def request_reload(self) -> None:
        (self.directory / REQUEST).write_text(f"{self.pid} {time.time_ns()}")

    def reload_token(self) -> str | None:
        """Changes whenever a reload is requested; None before the first."""
        try:
            return (self.directory / REQUEST).read_text()
        except FileNotFoundError:
            return None

    def wait_all(self, version: str, timeout_s: float) -> dict[int, str]:
        """Wait until every live worker reports ``version``; the versions last seen."""
        deadline = time.monotonic() + timeout_s
        while True:
            seen = self.versions()
            if all(v == version for v in seen.values()) or time.monotonic() > deadline:
                return seen
            time.sleep(0.05)
