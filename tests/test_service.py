"""The service as a real ``bentoml serve`` process on a free port, against the
pipeline's state (embedded Redis, local MLflow)."""

import httpx
import pandas as pd

from orchestration.assets.ingest import read_validated_events


def post(url, path, body):
    return httpx.post(f"{url}{path}", json=body, timeout=30)


def history(pipeline, user):
    events = read_validated_events(pipeline.settings)
    return events.loc[events["user_id"] == user, "item_id"].tolist()


def test_recommend_returns_k_distinct_unseen_items_from_the_champion(pipeline, service):
    user = "u00001"
    answer = post(service, "/recommend", {"user_id": user, "k": 7})
    assert answer.status_code == 200
    body = answer.json()
    items = [i["item_id"] for i in body["items"]]
    assert len(items) == 7 == len(set(items))
    assert not set(items) & set(history(pipeline, user)[-pipeline.settings.recent_items:])
    assert body["model_version"] == "1"
    assert body["degraded"] is False and body["reason"] is None
    scores = [i["score"] for i in body["items"]]
    assert scores == sorted(scores, reverse=True)
    assert all(i["title"] for i in body["items"])


def test_integer_user_id_and_unknown_user_fall_back_to_popularity(service):
    body = post(service, "/recommend", {"user_id": 123456, "k": 3}).json()
    assert body["user_id"] == "123456"
    assert body["degraded"] is True and "popularity" in body["reason"]
    scores = [i["score"] for i in body["items"]]
    assert len(scores) == 3 and scores == sorted(scores, reverse=True)


def test_event_then_recommend_excludes_the_new_item(pipeline, service):
    user = "u00002"
    before = post(service, "/recommend", {"user_id": user, "k": 5}).json()
    new_item = before["items"][0]["item_id"]
    answer = post(service, "/events", {"events": [
        {"user_id": user, "item_id": new_item, "event_type": "click"},
        {"user_id": user, "item_id": "no-such-item", "event_type": "view"},
        {"user_id": user, "item_id": new_item, "event_type": "like"},
        {"user_id": user, "item_id": new_item, "event_type": "view", "timestamp": "yesterday"},
    ]})
    assert answer.status_code == 200
    body = answer.json()
    assert body["accepted"] == 1
    assert [r["index"] for r in body["rejected"]] == [1, 2, 3]
    assert "catalogue" in body["rejected"][0]["error"]
    assert "event_type" in body["rejected"][1]["error"]
    assert "timestamp" in body["rejected"][2]["error"]
    after = post(service, "/recommend", {"user_id": user, "k": 5}).json()
    assert new_item not in [i["item_id"] for i in after["items"]]
    # ... and the event is in the offline log, for the next batch run.
    logged = pd.concat(pd.read_json(p, lines=True, dtype=False)
                       for p in pipeline.settings.event_log_dir.glob("*.jsonl"))
    assert ((logged["user_id"] == user) & (logged["item_id"] == new_item)).sum() == 1


def test_score_given_candidates(service):
    body = post(service, "/score", {"user_id": "u00001", "item_ids": ["i00001", "nope"]}).json()
    assert body["model_version"] == "1"
    assert isinstance(body["scores"]["i00001"], float)
    assert body["scores"]["nope"] is None


def test_bad_requests_get_4xx_with_a_message(service):
    cases = [
        ("/recommend", b"{not json"),
        ("/recommend", {"user_id": "u00001", "k": 0}),
        ("/recommend", {"user_id": "u00001", "k": 1001}),
        ("/recommend", {"k": 3}),
        ("/recommend", {"user_id": "x" * 65}),
        ("/events", {"events": []}),
        ("/score", {"user_id": "u1", "item_ids": []}),
    ]
    for path, body in cases:
        if isinstance(body, bytes):
            answer = httpx.post(f"{service}{path}", content=body, timeout=30,
                                headers={"content-type": "application/json"})
        else:
            answer = post(service, path, body)
        assert 400 <= answer.status_code < 500, (path, body, answer.status_code, answer.text)
        assert answer.json()["error"], (path, body)


def test_health_endpoints(service):
    for path in ("/healthz", "/livez", "/readyz"):
        assert httpx.get(f"{service}{path}", timeout=10).status_code == 200
    assert "bentoml" in httpx.get(f"{service}/metrics", timeout=10).text


def test_event_times_are_parsed_like_the_batch_validation():
    from serving.service import event_times_us

    now = 1_700_000_000.0
    got = event_times_us([None, 1_600_000_000, "2020-09-13T12:26:40Z", "1600000000.5",
                          "garbage", 0, now + 10 * 86400], now)
    assert got == [1_700_000_000_000_000, 1_600_000_000_000_000, 1_600_000_000_000_000,
                   1_600_000_000_500_000, None, None, None]
    # RECSYS_FUTURE_TOLERANCE_S reaches the service as it reaches batch validation.
    assert event_times_us([now + 10 * 86400], now, future_tolerance_s=30 * 86400) == [
        1_700_864_000_000_000]


def test_redis_down_degrades_then_recovers(pipeline, service):
    """Last in this file: stops the embedded Redis under the running service."""
    import time

    from infra import redis_server

    settings = pipeline.settings
    url = redis_server.ensure(settings).url
    assert redis_server.stop(settings)
    try:
        body = post(service, "/recommend", {"user_id": "u00001", "k": 4}).json()
        assert body["degraded"] is True
        assert body["reason"] == "online store unavailable: popularity"
        assert len(body["items"]) == 4
        assert httpx.get(f"{service}/readyz", timeout=10).status_code == 503
        answer = post(service, "/events", {"events": [
            {"user_id": "u00001", "item_id": "i00001", "event_type": "view"}]})
        assert answer.status_code == 503
        assert answer.json()["accepted"] == 0
        assert "Redis" in answer.json()["rejected"][0]["error"]
    finally:
        assert redis_server.ensure(settings).url == url  # back at the same address
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        body = post(service, "/recommend", {"user_id": "u00001", "k": 4}).json()
        if not body["degraded"]:
            break
        time.sleep(0.2)
    assert body["degraded"] is False
    assert httpx.get(f"{service}/readyz", timeout=10).status_code == 200
