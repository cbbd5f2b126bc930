"""A Redis outage under a stream of requests (the failure a test between requests
cannot see): the real service at 50 req/s while the embedded Redis is stopped,
or frozen with SIGSTOP, for a few seconds. Every request is answered within
100 ms, degraded while Redis is away, and by the model again at once after."""

import pytest

from bench.faults import FAST_S, summarise, under_load
from orchestration.offline import read_validated_events
from tests.conftest import API_KEY

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
