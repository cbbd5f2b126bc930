"""``make bench SECTIONS=faults``: the real service under open-loop load while a
dependency fails, on loopback only, every loop bounded in time.

The service (``bentoml serve``, its default workers, the embedded Redis) answers
``/recommend`` at each rate in ``RATES`` for ``BEFORE_S + FAULT_S + AFTER_S``
seconds while, ``BEFORE_S`` seconds in, one fault is injected for ``FAULT_S``:

- ``redis_stopped``: the embedded Redis stopped (SIGTERM), then started again;
- ``redis_frozen``: the embedded Redis frozen with SIGSTOP (a hung server or a
  network partition), then SIGCONT;
- ``worker_killed``: one service worker killed with SIGKILL (the server starts a
  new one);
- ``mlflow_unreachable``: the MLflow tracking server (which the service uses
  here, over the bench's store) killed, and ``/reload`` called meanwhile; the
  service must keep serving the loaded model and say so.

Per fault and rate: requests sent, answered within ``FAST_S``, answered
degraded, answered with the model during the fault, timed out (no answer
within ``TIMEOUT_S``), 5xx, and the time from the fault's end (the dependency
answers again, or the new worker reports its model) to the first answer from
the model, and how many answers after it took longer than ``FAST_S``.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import uvloop

from bench.report import table
from bench.serving import API_KEY, ML100K, Sample, drive, prepare
from infra import redis_server
from infra.processes import free_port
from infra.settings import Settings
from orchestration.cli import start_service, stop_service, wait_http, wait_ready
from serving.workers import Fleet

RATES = (100, 200)
BEFORE_S, FAULT_S, AFTER_S = 3.0, 6.0, 6.0
FAST_S = 0.1
TIMEOUT_S = 5.0


@dataclass
class FaultWindow:
    """perf_counter times of the fault's start and end, and what it observed."""

    start: float = 0.0
    end: float = 0.0
    notes: dict = field(default_factory=dict)


# Each fault: (settings, the service's port, seconds) -> its window. ``start`` is
# when the fault is in place (the server has exited, the process is frozen), ``end``
# when it is over (the server answers again).


def redis_stopped(settings: Settings, port: int, seconds: float) -> FaultWindow:
    redis_server.stop(settings)
    window = FaultWindow(start=time.perf_counter())
    time.sleep(seconds)
    # The fault ends as the server starts again: it may answer before ``ensure``
    # (which polls) returns, and the time to the first model answer counts its start.
    window.end = time.perf_counter()
    redis_server.ensure(settings)
    return window


def redis_frozen(settings: Settings, port: int, seconds: float) -> FaultWindow:
    pid = redis_server.running(settings).pid
    os.kill(pid, signal.SIGSTOP)
    window = FaultWindow(start=time.perf_counter())
    try:
        time.sleep(seconds)
    finally:
        os.kill(pid, signal.SIGCONT)
    window.end = time.perf_counter()
    return window


def worker_killed(settings: Settings, port: int, seconds: float) -> FaultWindow:
    """``seconds`` is unused: the fault lasts until the replacement worker reports."""
    board = Fleet(redis_server.ensure(settings).client(), name="bench-reader")
    before = board.versions()
    victim = int(min(before).rsplit(":", 1)[1])  # worker names are host:pid
    window = FaultWindow(start=time.perf_counter())
    os.kill(victim, signal.SIGKILL)
    deadline = window.start + 60
    while time.perf_counter() < deadline:
        now = board.versions()
        if set(now) - set(before):  # the replacement loaded its model and reported
            break
        time.sleep(0.05)
    window.end = time.perf_counter()
    window.notes = {"killed_pid": victim, "replaced": bool(set(board.versions()) - set(before)),
                    "replacement_seconds": round(window.end - window.start, 2)}
    return window


class TrackingServer:
    """``mlflow server`` over the bench's SQLite store, on a loopback port: the
    service reaches the registry over HTTP, as it does with a remote server."""

    def __init__(self, settings: Settings):
        self.settings, self.port = settings, free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        log = open(self.settings.log_file("bench_mlflow"), "ab")  # noqa: SIM115 (the child's)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--backend-store-uri",
             self.settings.tracking_uri(), "--host", "127.0.0.1", "--port", str(self.port)],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        wait_http(f"{self.uri}/health", self.process)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(30)
        self.process = None


def mlflow_unreachable(settings: Settings, port: int, seconds: float,
                       tracking: TrackingServer) -> FaultWindow:
    """The MLflow tracking server killed for ``seconds``, with a /reload in the middle."""
    tracking.stop()
    window = FaultWindow(start=time.perf_counter())
    try:
        time.sleep(seconds / 2)
        started = time.perf_counter()
        answer = httpx.post(f"http://127.0.0.1:{port}/reload", json={}, timeout=60,
                            headers={"X-API-Key": API_KEY})
        window.notes = {"reload_status": answer.status_code,
                        "reload_seconds": round(time.perf_counter() - started, 3),
                        "reload_answer": answer.json()}
        time.sleep(max(0.0, seconds - (time.perf_counter() - window.start)))
    finally:
        window.end = time.perf_counter()
        tracking.start()
    return window


FAULTS = {"redis_stopped": redis_stopped, "redis_frozen": redis_frozen,
          "worker_killed": worker_killed}  # and mlflow_unreachable, with its server


def _answer(sample: Sample) -> dict:
    try:
        return json.loads(sample.body) if sample.status == 200 else {}
    except ValueError:
        return {}


def summarise(samples: list[Sample], window: FaultWindow) -> dict:
    answers = [(x, _answer(x)) for x in samples]
    # Sent once the fault was in place and before it ended; after: sent after its end.
    during = [(x, a) for x, a in answers if x.sent and window.start <= x.sent < window.end]
    after = [(x, a) for x, a in answers if x.sent and x.sent >= window.end]
    first_model = next((x.done for x, a in after if a and not a.get("degraded")), None)
    recovered = [x for x, a in after if first_model is not None and x.sent >= first_model]
    reasons: dict[str, int] = {}
    for _, a in during:
        if a.get("degraded"):
            reasons[a["reason"]] = reasons.get(a["reason"], 0) + 1
    return {
        "requests": len(samples),
        "answered_within_100ms": sum(x.latency is not None and x.latency <= FAST_S
                                     for x in samples),
        "degraded": sum(bool(a.get("degraded")) for _, a in answers),
        "during_fault": len(during),
        "model_answers_during_fault": sum(bool(a) and not a.get("degraded") for _, a in during),
        "timed_out": sum(x.error == "timeout" for x in samples),
        "other_errors": sum(x.error not in (None, "timeout") for x in samples),
        "5xx": sum(x.status is not None and x.status >= 500 for x in samples),
        "p99_ms": round(1000 * sorted(x.latency for x in samples if x.latency)[
            int(0.99 * (sum(1 for x in samples if x.latency) - 1))], 2),
        "seconds_to_first_model_answer": (round(first_model - window.end, 3)
                                          if first_model is not None else None),
        "slow_after_recovery": sum(x.latency is None or x.latency > FAST_S for x in recovered),
        "fault_seconds": round(window.end - window.start, 2),
        "degraded_reasons_during_fault": reasons,
        **window.notes,
    }


def under_load(settings: Settings, port: int, users: list[str], rate: float, fault,
               before_s: float = BEFORE_S, fault_s: float = FAULT_S, after_s: float = AFTER_S,
               api_key: str = API_KEY) -> tuple[list[Sample], FaultWindow]:
    """Open-loop ``/recommend`` load for before + fault + after seconds, ``fault`` (a
    function of ``FAULTS``, or its name) injected ``before_s`` in: every request's
    sample, and the fault's window."""
    inject_fault = FAULTS[fault] if isinstance(fault, str) else fault
    holder: dict[str, FaultWindow] = {}

    def inject() -> None:
        time.sleep(before_s)
        holder["window"] = inject_fault(settings, port, fault_s)

    injector = threading.Thread(target=inject, name="fault")
    injector.start()
    samples = uvloop.run(drive(port, users, rate, before_s + fault_s + after_s,
                               timeout_s=TIMEOUT_S, api_key=api_key))
    injector.join(timeout=120)
    return samples, holder["window"]


def _settle(port: int, settings: Settings) -> None:
    """Between faults: every dependency back and the model answering again."""
    redis_server.ensure(settings)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        answer = httpx.post(f"http://127.0.0.1:{port}/recommend", json={"user_id": "1"},
                            headers={"X-API-Key": API_KEY}, timeout=10)
        if answer.status_code == 200 and not answer.json()["degraded"]:
            return
        time.sleep(0.2)
    raise RuntimeError("the service did not recover between faults")


def benchmark() -> dict:
    home = Path(os.environ.get("BENCH_HOME") or tempfile.mkdtemp(prefix="recsys_bench_"))
    settings = Settings(home=home, source=ML100K)
    print(f"state: {home}")
    prepare(settings)
    from orchestration.offline import read_validated_events

    users = read_validated_events(settings, columns=["user_id"])["user_id"].unique().tolist()
    tracking = TrackingServer(settings)
    tracking.start()
    faults = {**FAULTS, "mlflow_unreachable": functools.partial(mlflow_unreachable,
                                                               tracking=tracking)}
    port = free_port()
    process = start_service(settings, port, settings.log_file("bench_faults"),
                            env={"RECSYS_API_KEY": API_KEY, "RECSYS_SOURCE": str(ML100K),
                                 "MLFLOW_TRACKING_URI": tracking.uri})
    rows = []
    try:
        wait_ready(port, process)
        uvloop.run(drive(port, users, 50, 3))  # warm-up, not reported
        for name, fault in faults.items():
            for rate in RATES:
                _settle(port, settings)
                samples, window = under_load(settings, port, users, rate, fault)
                row = {"fault": name, "rate": rate, **summarise(samples, window)}
                print(json.dumps(row), flush=True)
                rows.append(row)
    finally:
        stop_service(settings)
        tracking.stop()
        redis_server.ensure(settings)
    if not os.environ.get("BENCH_HOME"):
        redis_server.stop(settings)
    return {"rows": rows, "before_s": BEFORE_S, "fault_s": FAULT_S, "after_s": AFTER_S}


def tables(results: dict) -> list[dict]:
    columns = ["fault", "req/s", "sent", "within 100 ms", "degraded", "sent in fault",
               "model answers in fault", "timed out", "connection lost", "5xx", "p99 ms",
               "s to first model answer", "slow after recovery"]
    rows = [[r["fault"], r["rate"], r["requests"], r["answered_within_100ms"], r["degraded"],
             r["during_fault"], r["model_answers_during_fault"], r["timed_out"],
             r["other_errors"], r["5xx"], r["p99_ms"], r["seconds_to_first_model_answer"],
             r["slow_after_recovery"]] for r in results["rows"]]
    notes = [[r["fault"], r["rate"], json.dumps({k: r[k] for k in (
        "killed_pid", "replacement_seconds", "reload_status", "reload_seconds", "reload_answer")
        if k in r})] for r in results["rows"] if r["fault"] in ("worker_killed",
                                                                "mlflow_unreachable")]
    return [table(f"Faults under load ({results['before_s']:g} s, then the fault for "
                  f"{results['fault_s']:g} s, then {results['after_s']:g} s)", columns, rows),
            table("Worker replacement and /reload without the registry", ["fault", "req/s",
                  "what happened"], notes)]
