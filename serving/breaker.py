"""A circuit breaker for a dependency on the request path (the online store).

Closed: calls go through; ``failures_to_open`` consecutive failures open it.
Open: callers skip the dependency at once (and answer degraded) while a
background prober calls ``probe`` every ``probe_interval_s``; the first probe
that succeeds closes it again. A request never waits on a dependency that is
known to be down, and the dependency gets one probe at a time, not a stampede.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

CLOSED, OPEN = "closed", "open"


class CircuitBreaker:
    def __init__(self, probe: Callable[[], object], failures_to_open: int = 3,
                 probe_interval_s: float = 0.1, name: str = "dependency"):
        if failures_to_open < 1:
            raise ValueError("failures_to_open must be >= 1")
        self.probe, self.name = probe, name
        self.failures_to_open, self.probe_interval_s = failures_to_open, probe_interval_s
        self._lock = threading.Lock()
        self._failures = 0
        self._state = CLOSED
        self._opened_at: float | None = None
        self._stop = threading.Event()
        # Whether a prober runs, set and cleared under the lock: a thread that has
        # closed the breaker but not yet exited counts as gone, so failures that
        # reopen it at that moment start a new prober instead of waiting on one that
        # will never probe again.
        self._probing = False

    @property
    def state(self) -> str:
        return self._state

    def allow(self) -> bool:
        """Whether a call should be tried now (False while open)."""
        return self._state == CLOSED

    def succeeded(self) -> None:
        with self._lock:
            self._failures = 0

    def failed(self) -> None:
        """A call failed; the ``failures_to_open``-th in a row opens the breaker."""
        with self._lock:
            self._failures += 1
            if self._state == CLOSED and self._failures >= self.failures_to_open:
                self._open()

    def _open(self) -> None:
        self._state, self._opened_at = OPEN, time.monotonic()
        if not self._probing:
            self._probing = True
            threading.Thread(target=self._probe_until_closed, name=f"{self.name}-probe",
                             daemon=True).start()

    def _probe_until_closed(self) -> None:
        while not self._stop.wait(self.probe_interval_s):
            try:
                self.probe()
            except Exception:  # any failure of the probe: the dependency is still down
                continue
            with self._lock:
                self._state, self._failures, self._opened_at = CLOSED, 0, None
                self._probing = False
            return
        with self._lock:
            self._probing = False

    def open_for_s(self) -> float:
        """How long the breaker has been open (0 when closed)."""
        opened = self._opened_at
        return 0.0 if opened is None else time.monotonic() - opened

    def close(self) -> None:
        """Stop the prober (service shutdown)."""
        self._stop.set()
