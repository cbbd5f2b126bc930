"""The circuit breaker's states: closed, opened by consecutive failures, probed in
the background, closed again by the first probe that succeeds."""

import threading
import time

import pytest

from serving.breaker import CLOSED, OPEN, CircuitBreaker


def wait_for(condition, timeout=2.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.005)
    return False


def test_consecutive_failures_open_it_and_a_success_in_between_resets_the_count():
    breaker = CircuitBreaker(probe=lambda: None, failures_to_open=3, probe_interval_s=60)
    breaker.failed()
    breaker.failed()
    breaker.succeeded()  # not consecutive: the count starts again
    breaker.failed()
    breaker.failed()
    assert breaker.state == CLOSED and breaker.allow()
    breaker.failed()
    assert breaker.state == OPEN and not breaker.allow()
    assert breaker.open_for_s() >= 0
    breaker.close()


def test_while_open_it_probes_in_the_background_and_closes_on_the_first_success():
    down = threading.Event()
    down.set()
    probes = []

    def probe():
        probes.append(time.monotonic())
        if down.is_set():
            raise ConnectionError("still down")

    breaker = CircuitBreaker(probe=probe, failures_to_open=1, probe_interval_s=0.02)
    breaker.failed()
    assert breaker.state == OPEN
    assert wait_for(lambda: len(probes) >= 3)  # it keeps probing while the probe fails
    assert breaker.state == OPEN and not breaker.allow()
    down.clear()
    assert wait_for(lambda: breaker.state == CLOSED)
    assert breaker.allow() and breaker.open_for_s() == 0.0
    count = len(probes)
    time.sleep(0.1)
    assert len(probes) == count  # no probing while closed
    # It opens again after the next run of failures, with a new prober.
    breaker.failed()
    assert breaker.state == OPEN
    assert wait_for(lambda: breaker.state == CLOSED)
    breaker.close()


def test_one_prober_at_a_time():
    started = []
    release = threading.Event()

    def probe():
        started.append(threading.current_thread().name)
        release.wait(1)

    breaker = CircuitBreaker(probe=probe, failures_to_open=1, probe_interval_s=0.01)
    for _ in range(20):
        breaker.failed()
    assert wait_for(lambda: started)
    assert len({t.ident for t in threading.enumerate() if t.name.endswith("-probe")}) == 1
    release.set()
    assert wait_for(lambda: breaker.state == CLOSED)
    breaker.close()


def test_needs_at_least_one_failure_to_open():
    with pytest.raises(ValueError, match="failures_to_open"):
        CircuitBreaker(probe=lambda: None, failures_to_open=0)


def test_reopened_the_moment_its_prober_closed_it_it_still_closes_again():
    """A dependency that flaps: failures reopen the breaker right after a probe
    closed it, while that prober thread may still be finishing. Every reopening
    has a prober, so once the dependency answers the breaker closes."""
    import sys

    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # threads interleave at almost every bytecode
    try:
        for _ in range(20):
            breaker = CircuitBreaker(probe=lambda: None, failures_to_open=1,
                                     probe_interval_s=0.0001)
            end = time.monotonic() + 0.1
            while time.monotonic() < end:  # failures as fast as they come
                breaker.failed()
            assert wait_for(lambda b=breaker: b.state == CLOSED, timeout=1.0)
            breaker.close()
    finally:
        sys.setswitchinterval(switch)
