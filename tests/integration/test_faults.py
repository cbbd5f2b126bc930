"""A Redis outage under a stream of requests (the failure a test between requests
cannot see): the real service at 50 req/s while the embedded Redis is stopped,
or frozen with SIGSTOP, for a few seconds. Every request is answered within
100 ms, degraded while Redis is away, and by the model again at once after."""

import socket
import threading
from urllib.parse import urlparse

import httpx
import pytest

from bench.faults import FAST_S, summarise, under_load
from infra import redis_server
from infra.processes import free_port
from orchestration.cli import start_service, stop_service, wait_http, wait_ready
from orchestration.offline import read_validated_events
from tests.conftest import API_KEY, AUTH, wait_for

pytestmark = pytest.mark.slow  # a real server under load


@pytest.mark.parametrize("fault", ["redis_stopped", "redis_frozen"])
def test_a_redis_outage_under_load_degrades_at_once_and_recovers(pipeline, service, fault):
    port = int(service.rsplit(":", 1)[1])
    users = read_validated_events(pipeline.settings, columns=["user_id"])["user_id"].unique()
    samples, window = under_load(pipeline.settings, port, users.tolist(), 50, fault,
                                 before_s=1.5, fault_s=4.0, after_s=2.5, api_key=API_KEY)
    row = summarise(samples, window)
    assert row["requests"] == 400
    assert (row["5xx"], row["timed_out"], row["other_errors"]) == (0, 0, 0)
    slow = [(round(x.latency, 3), round(x.sent - window.start, 2), x.body[:120])
            for x in samples if x.latency is None or x.latency > FAST_S]
    assert slow == []  # every request answered within 100 ms, during the fault too
    assert row["during_fault"] >= 150 and row["model_answers_during_fault"] == 0
    assert row["degraded_reasons_during_fault"] == {
        "online store unavailable: popularity": row["during_fault"]}
    assert row["seconds_to_first_model_answer"] is not None
    assert row["seconds_to_first_model_answer"] <= 2.0
    assert row["slow_after_recovery"] == 0


class LateRedis:
    """A TCP forwarder to a real Redis that does not listen until ``open``: the
    network between a service and its Redis, down when the service starts."""

    def __init__(self, target: str):
        self.port, self.target = free_port(), (urlparse(target).hostname, urlparse(target).port)
        self.listener: socket.socket | None = None

    def open(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, args=(self.listener,), daemon=True).start()

    def close(self) -> None:
        """Stop listening (the connections pumping end with their ends)."""
        if self.listener is not None:
            self.listener.close()

    def _accept(self, listener: socket.socket) -> None:
        try:
            while True:
                near, _ = listener.accept()
                far = socket.create_connection(self.target)
                for a, b in ((near, far), (far, near)):
                    threading.Thread(target=self._pump, args=(a, b), daemon=True).start()
        except OSError:  # closed
            pass

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            sink.close()


def test_a_worker_started_while_redis_is_down_takes_queries_once_it_answers(pipeline):
    """Its model loads without the item text embeddings; the champion watch adds
    them when Redis comes back, so content blends and queries are not lost until
    the next model swap."""
    settings = pipeline.settings
    late = LateRedis(redis_server.ensure(settings).url)
    port, log = free_port(), settings.log_file("late-redis")
    process = start_service(settings, port, log, name="late-redis", env={
        "REDIS_URL": f"redis://127.0.0.1:{late.port}", "RECSYS_API_KEY": API_KEY,
        "RECSYS_MODEL_POLL_S": "1", "RECSYS_SERVING_WORKERS": "1"})
    try:
        wait_http(f"http://127.0.0.1:{port}/livez", process)  # the one worker is up
        assert "item embeddings unavailable" in log.read_text()
        late.open()
        wait_ready(port, process)

        def applied_query():
            return httpx.post(f"http://127.0.0.1:{port}/recommend", headers=AUTH, timeout=10,
                              json={"user_id": "u00001", "query": "comedy"}).json()["query"]

        assert wait_for(applied_query, timeout=15, step=0.25) == "comedy"
    finally:
        stop_service(settings, name="late-redis")
        late.close()
