"""The service as a real ``bentoml serve`` process on a free port, against the
pipeline's state (embedded Redis, local MLflow)."""

import asyncio
import threading
import time

import httpx
import numpy as np
import pandas as pd
import pytest
import torch

from orchestration.consume import OfflineLogConsumer
from orchestration.offline import read_validated_events
from serving.service import ONLINE_DOWN, PAST_DEADLINE
from tests.conftest import API_KEY, AUTH, wait_for
from training import registry

pytestmark = pytest.mark.slow  # the whole pipeline, a real server or a cluster


def post(url, path, body, headers=AUTH):
    return httpx.post(f"{url}{path}", json=body, timeout=30, headers=headers)


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
    # Each item names the recent items that contributed most to it.
    recent = history(pipeline, user)[-pipeline.settings.recent_items:]
    for item in body["items"]:
        assert 1 <= len(item["because"]) <= 2
        assert {b["item_id"] for b in item["because"]} <= set(recent)
        assert all(b["title"] for b in item["because"])


def test_integer_user_id_and_unknown_user_fall_back_to_popularity(service):
    body = post(service, "/recommend", {"user_id": 123456, "k": 3}).json()
    assert body["user_id"] == "123456"
    assert body["degraded"] is True and "popularity" in body["reason"]
    scores = [i["score"] for i in body["items"]]
    assert len(scores) == 3 and scores == sorted(scores, reverse=True)
    assert all(i["because"] == [] for i in body["items"])


def test_a_new_user_with_given_items_gets_content_similar_items(pipeline, service):
    """No online history: popularity blended with text similarity to the given items."""
    items = pd.read_parquet(pipeline.settings.items_path)
    genre = items["genres"].str.split("|").str[0]
    horror = items.loc[genre == "Horror", "item_id"].tolist()[:3]
    body = post(service, "/recommend", {"user_id": "brand-new", "k": 10,
                                        "context_item_ids": horror}).json()
    assert body["degraded"] is True
    assert body["reason"] == ("no history for this user: popularity blended with content "
                              "similarity to the given items")
    got = [i["item_id"] for i in body["items"]]
    assert not set(got) & set(horror)
    assert (genre[items["item_id"].isin(got)] == "Horror").sum() >= 6
    assert all({b["item_id"] for b in i["because"]} <= set(horror) for i in body["items"])
    plain = post(service, "/recommend", {"user_id": "brand-new", "k": 10}).json()
    assert plain["reason"] == "no history for this user: popularity"
    assert [i["item_id"] for i in plain["items"]] != got


def _primary_genre(pipeline) -> pd.Series:
    items = pd.read_parquet(pipeline.settings.items_path)
    return pd.Series(items["genres"].str.split("|").str[0].values, index=items["item_id"])


def _share(genre: pd.Series, body: dict, wanted: str) -> float:
    return float(np.mean([genre[i["item_id"]] == wanted for i in body["items"]]))


def test_a_query_turns_a_one_genre_history_towards_the_queried_genre(pipeline, service):
    """Two new users, each with a history of one genre, ask for "comedy": both get
    mostly comedies, which their histories alone do not give them, and not the
    same comedies (the list is still theirs)."""
    genre = _primary_genre(pipeline)
    lists = {}
    for user, taste in (("query-horror-fan", "Horror"), ("query-scifi-fan", "SciFi")):
        liked = genre.index[genre == taste][:12].tolist()
        accepted = post(service, "/events", {"events": [
            {"user_id": user, "item_id": i, "event_type": "click"} for i in liked]}).json()
        assert accepted["accepted"] == len(liked)
        plain = post(service, "/recommend", {"user_id": user, "k": 10}).json()
        asked = post(service, "/recommend", {"user_id": user, "k": 10,
                                             "query": "  comedy  "}).json()
        assert asked["degraded"] is False and asked["query"] == "comedy"
        assert plain["query"] is None
        assert _share(genre, asked, "Comedy") >= 0.7 > _share(genre, plain, "Comedy") + 0.3
        assert not {i["item_id"] for i in asked["items"]} & set(liked)
        lists[user] = [i["item_id"] for i in asked["items"]]
    assert lists["query-horror-fan"] != lists["query-scifi-fan"]


def test_a_new_users_query_ranks_alone_and_an_empty_one_is_no_query(pipeline, service):
    genre = _primary_genre(pipeline)
    asked = post(service, "/recommend", {"user_id": "query-newcomer", "query": "western"})
    body = asked.json()
    assert asked.status_code == 200 and body["degraded"] is True
    assert body["reason"] == "no history for this user: the query's text relevance, with popularity"
    assert body["query"] == "western" and _share(genre, body, "Western") >= 0.8
    for user in ("query-newcomer", "u00001"):
        empty = post(service, "/recommend", {"user_id": user, "query": ""}).json()
        none = post(service, "/recommend", {"user_id": user}).json()
        assert empty == none and empty["query"] is None


def _query_lookups(service) -> dict[str, float]:
    from serving.query import cache_lookups

    return cache_lookups(httpx.get(f"{service}/metrics", timeout=10, headers=AUTH).text)


def test_a_repeated_query_is_embedded_once_per_worker_and_counted_on_metrics(service):
    from bentoml.serving import ensure_prometheus_dir

    before = _query_lookups(service)
    # What any other BentoML server starting on this host does to BentoML's default
    # metrics directory (it empties it): the service's counts are in its own.
    ensure_prometheus_dir()
    for _ in range(6):
        assert post(service, "/recommend", {"user_id": "u00001",
                                            "query": "a repeated metrics query"}).status_code == 200
    after = _query_lookups(service)
    misses, hits = after["miss"] - before["miss"], after["hit"] - before["hit"]
    assert misses + hits == 6
    assert 1 <= misses <= 2  # at most one embedding in each of the two workers


def test_an_over_long_or_blank_query_is_a_400_with_the_reason(service):
    for query, reason in (("x" * 201, "200"), (" \t ", "blank")):
        answer = post(service, "/recommend", {"user_id": "u00001", "query": query})
        assert answer.status_code == 400 and reason in answer.text


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
    # ... and the event is on the stream, which drains into the offline log for the
    # next batch run.
    OfflineLogConsumer(pipeline.settings, "test-consumer").drain()
    logged = pd.concat(pd.read_json(p, lines=True, dtype=False)
                       for p in pipeline.settings.event_log_dir.glob("*.jsonl"))
    assert ((logged["user_id"] == user) & (logged["item_id"] == new_item)).sum() == 1


def test_score_given_candidates(service):
    body = post(service, "/score", {"user_id": "u00001", "item_ids": ["i00001", "nope"]}).json()
    assert body["model_version"] == "1" and body["degraded"] is False
    assert isinstance(body["scores"]["i00001"], float)
    assert body["scores"]["nope"] is None


def test_the_model_reads_a_training_users_learned_vector(pipeline, service):
    """/score for a user the champion was trained on equals the champion's scores
    of the user's online history with that user's vector, not without it."""
    from training.sequences import ItemIndex, pad_left

    model = registry.load_version(pipeline.settings.tracking_uri(), "1").eval()
    user, items = "u00001", ["i00001", "i00002", "i00003", "i00004"]
    body = post(service, "/score", {"user_id": user, "item_ids": items}).json()
    assert body["model_version"] == "1" and body["degraded"] is False
    index = ItemIndex(model.item_ids)
    seq = pad_left([index.encode(history(pipeline, user))], model.config.max_len)
    rows = [index.index[i] for i in items]
    with torch.inference_mode():
        own = model.score(seq, model.user_rows([user]))[0, rows].tolist()
        without = model.score(seq)[0, rows].tolist()
    assert [body["scores"][i] for i in items] == pytest.approx(own, abs=1e-4)
    assert max(abs(a - b) for a, b in zip(own, without, strict=True)) > 1e-3


def test_bad_requests_get_4xx_with_a_message(service):
    cases = [
        ("/recommend", b"{not json"),
        ("/recommend", {"user_id": "u00001", "k": 0}),
        ("/recommend", {"user_id": "u00001", "k": 1001}),
        ("/recommend", {"k": 3}),
        ("/recommend", {"user_id": "x" * 65}),
        ("/events", {"events": []}),
        ("/score", {"user_id": "u1", "item_ids": []}),
        ("/events", {"events": [{"user_id": "u1", "item_id": "i1", "event_type": "view"}]
                     * 1001}),
        ("/recommend", {"user_id": "u00001", "context_item_ids": ["i00001"] * 1001}),
        ("/recommend", {"user_id": ["u00001"]}),
        ("/recommend", {"user_id": "u 1"}),
        # Strict types: a boolean is not an integer, a string is not a boolean.
        ("/recommend", {"user_id": "u00001", "k": True}),
        ("/recommend", {"user_id": "u00001", "exclude_seen": "yes"}),
        ("/recommend", {"user_id": True}),
        ("/score", {"user_id": "u00001", "item_ids": [1.5]}),
    ]
    for path, body in cases:
        if isinstance(body, bytes):
            answer = httpx.post(f"{service}{path}", content=body, timeout=30,
                                headers={"content-type": "application/json", **AUTH})
        else:
            answer = post(service, path, body)
        assert 400 <= answer.status_code < 500, (path, body, answer.status_code, answer.text)
        assert answer.json()["error"], (path, body)
    # A bad id gets one message, not one per branch of "string or integer".
    detail = post(service, "/recommend", {"user_id": "u 1"}).json()["detail"]
    assert len(detail) == 1 and "letters, digits or _.:-" in detail[0]["msg"]


def test_a_client_error_is_logged_as_one_info_line(pipeline, service):
    import time

    log = pipeline.settings.log_file("serve")
    before = log.stat().st_size
    assert post(service, "/recommend", {"user_id": "u00001", "k": True}).status_code == 400
    time.sleep(0.5)
    with open(log, "rb") as f:
        f.seek(before)
        text = f.read().decode()
    assert "POST /recommend -> 400: 1 validation error" in text
    assert "Traceback" not in text and "ERROR" not in text


def test_events_are_rejected_for_the_reasons_batch_validation_quarantines_them(service):
    """Every quarantine reason's example row of the batch tests, sent as JSON, is
    rejected by /events with the reason the batch suite gives it."""
    from tests.integration.test_ingest import BAD_ROWS, GOOD_ROW

    catalogue = {"a1": "i00001", "a2": "i00002"}  # the ingest tests' items, here

    def as_json(line: bytes) -> dict:
        fields = line.decode("utf-8", errors="replace").split(",")
        event = {k: v for k, v in zip(("user_id", "item_id", "event_type", "timestamp"),
                                      fields, strict=False) if v != ""}
        event["item_id"] = catalogue.get(event.get("item_id"), event.get("item_id"))
        for name, cast in (("timestamp", int), ("rating", float)):
            text = fields[{"timestamp": 3, "rating": 4}[name]] if len(fields) == 5 else ""
            if text:
                try:
                    event[name] = cast(text)
                except ValueError:
                    event[name] = text  # as sent: a word where a number belongs
        return event

    checked = 0
    for case, line, reason in BAD_ROWS:
        if reason.startswith("line has") or len(line) > 1000:
            continue  # no JSON form: a CSV line's field count; over the body limit
        events = [as_json(GOOD_ROW)] * (case == "exact duplicate") + [as_json(line)]
        answer = post(service, "/events", {"events": events}).json()
        assert answer["rejected"] == [{"index": len(events) - 1, "error": reason}], case
        checked += 1
    assert checked == 11
    assert post(service, "/events", {"events": ["not an object"]}).json()["rejected"] == [
        {"index": 0, "error": "malformed line"}]


def test_health_endpoints_are_open_and_everything_else_needs_the_key(service):
    for path in ("/healthz", "/livez", "/readyz"):
        assert httpx.get(f"{service}{path}", timeout=10).status_code == 200
    assert httpx.get(f"{service}/metrics", timeout=10).status_code == 401
    assert "bentoml" in httpx.get(f"{service}/metrics", timeout=10, headers=AUTH).text
    body = {"user_id": "u00001"}
    for headers in ({}, {"X-API-Key": "wrong"}, {"Authorization": "Bearer wrong"}):
        answer = post(service, "/recommend", body, headers=headers)
        assert answer.status_code == 401 and "API key" in answer.json()["error"]
    bearer = post(service, "/recommend", body, {"Authorization": f"Bearer {API_KEY}"})
    assert bearer.status_code == 200 and bearer.json()["user_id"] == "u00001"


def test_the_api_key_is_not_logged(pipeline, service):
    post(service, "/recommend", {"user_id": "u00001"})
    assert API_KEY not in (pipeline.settings.home / "serve.log").read_text()


def test_bodies_over_the_limit_get_413(service):
    big = b'{"user_id": "u00001", "pad": "' + b"x" * (1 << 20) + b'"}'
    answer = httpx.post(f"{service}/recommend", content=big, timeout=30,
                        headers={"content-type": "application/json", **AUTH})
    assert answer.status_code == 413 and "over 1048576 bytes" in answer.json()["error"]

    def chunks():  # no Content-Length: counted as it streams
        yield b'{"user_id": "u00001", "pad": "'
        for _ in range(20):
            yield b"x" * 65536
        yield b'"}'
    streamed = httpx.post(f"{service}/recommend", content=chunks(), timeout=30,
                          headers={"content-type": "application/json", **AUTH})
    assert streamed.status_code == 413


def test_the_reason_for_an_item_is_the_attended_history_item_most_like_it():
    """``because``: attention share x cosine similarity (clipped at 0) over the
    newest distinct history items; repeats add up; without attention, similarity."""
    import numpy as np

    from serving.scoring import _because

    # Items 1 and 2 point like item 5, item 3 is orthogonal to it, item 4 opposite.
    unit = np.array([[0, 0], [1, 0], [1, 0], [0, 1], [-1, 0], [1, 0]], dtype=np.float64)
    history = [1, 2, 3, 4]
    assert _because(unit, [5], history, np.array([0.1, 0.5, 0.3, 0.1])) == [[2, 1]]
    assert _because(unit, [5], history, np.array([0.6, 0.1, 0.2, 0.1])) == [[1, 2]]
    # Most attention on the opposite item: still never a reason before a like one.
    assert _because(unit, [5], history, np.array([0.05, 0.05, 0.1, 0.8])) == [[2, 1]]
    assert _because(unit, [5], [1, 2, 1], np.array([0.3, 0.4, 0.3])) == [[1, 2]]
    # Attention over the last two positions only: item 1 gets none.
    assert _because(unit, [5], [1, 2, 3], np.array([0.5, 0.5])) == [[2, 3]]
    assert _because(unit, [5], history) == [[2, 1]]  # similarity ties: newest first
    assert _because(unit, [1, 3], history, np.full(4, 0.25)) == [[2, 1], [3, 4]]


def register_copy(pipeline, change=None) -> str:
    """A new ``behaviour_encoder`` version with v1's weights (``change``d if given);
    ``challenger`` is left on v1 as the other tests expect."""
    uri = pipeline.settings.tracking_uri()
    model = registry.load_version(uri, "1")
    if change:
        change(model)
    documents = {name: registry.load_document(uri, "1", name) for name in (
        registry.POPULARITY_DOCUMENT, registry.EVENT_RULES_DOCUMENT)}
    registered = registry.log_and_register(
        uri, pipeline.settings.artifact_location(), model, {"copy_of": "1"}, [], {},
        {"purpose": "test"}, documents=documents)
    registry.client(uri).set_registered_model_alias(registry.MODEL_NAME, registry.CHALLENGER,
                                                    "1")
    return registered.version


def test_champion_swap_under_load_fails_no_request_and_switches_cleanly(pipeline, service):
    """Four clients stream requests through a /reload to a new version and a
    rollback by the alias alone. A client's connection may move between the
    workers (``serving.connections``), so what holds is the fleet's: every request
    sent after /reload answered gets the new version until the rollback, and every
    one sent after every worker reports v1 again gets v1."""
    uri = pipeline.settings.tracking_uri()
    new = register_copy(pipeline)
    seen: list[tuple[float, str]] = []  # (when the request was sent, version)
    failures: list[tuple[int, str]] = []
    stop = threading.Event()

    def stream() -> None:
        with httpx.Client(timeout=30, headers=AUTH) as http:
            while not stop.is_set():
                sent = time.monotonic()
                answer = http.post(f"{service}/recommend", json={"user_id": "u00003", "k": 5})
                if answer.status_code != 200:
                    failures.append((answer.status_code, answer.text))
                else:
                    seen.append((sent, answer.json()["model_version"]))

    def fleet_versions() -> set[str]:
        return {w["model_version"] for w in post(service, "/fleet", {}).json()["workers"]}

    threads = [threading.Thread(target=stream) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(1)
        swapping = time.monotonic()
        registry.set_champion(uri, new)
        try:
            # /reload swaps now, unless the 1 s poll got there first.
            reloaded = post(service, "/reload", {}).json()
            swapped = time.monotonic()
            assert reloaded["model_version"] == new
            assert reloaded["changed"] == (reloaded["previous_version"] == "1")
            # Both worker processes (the default) serve it when /reload answers.
            assert reloaded["workers"] == reloaded["workers_on_version"] == 2
            time.sleep(1)
        finally:
            # Rollback = moving the alias back; the poll picks it up without /reload.
            rolling_back = time.monotonic()
            assert registry.rollback_champion(uri) == "1"
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and fleet_versions() != {"1"}:
            time.sleep(0.1)
        back = time.monotonic()
        time.sleep(1)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert failures == []
    before = [v for t, v in seen if t < swapping]
    during = [v for t, v in seen if swapped < t < rolling_back]
    after = [v for t, v in seen if t > back]
    assert before and set(before) == {"1"}
    assert during and set(during) == {new}, set(during)
    assert after and set(after) == {"1"}, set(after)
    assert post(service, "/reload", {}).json()["changed"] is False


def test_a_swap_and_rollback_of_two_stage_versions_swap_their_registered_indexes(pipeline):
    """A service on the two-stage path (every catalogue size): each version's item
    index is registered with it, so no worker builds one, and under a stream of
    requests every answer is the one its ``model_version``'s own index gives. The
    catalogue is also above the content limit, as a million items are: no worker
    holds item text, and both workers swap at each /reload."""
    from infra.processes import free_port
    from orchestration.cli import start_service, stop_service, wait_ready
    from serving.scoring import load_served_model, recommend
    from training import ann

    uri = pipeline.settings.tracking_uri()

    def indexed(change=None):
        def attach(model):
            if change:
                change(model)
            model.ann = ann.build(model)
        return register_copy(pipeline, attach)

    def flipped(model):
        with torch.no_grad():
            model.item_embedding.weight[1:] = model.item_embedding.weight[1:].flip(0)

    first, second = indexed(), indexed(flipped)
    user = "u00003"
    registry.set_champion(uri, first)
    port, log = free_port(), pipeline.settings.home / "serve-two-stage.log"
    process = start_service(pipeline.settings, port, log, name="serve-two-stage", env={
        "RECSYS_API_KEY": API_KEY, "RECSYS_MODEL_POLL_S": "3600", "RECSYS_ANN_MIN_ITEMS": "1",
        "RECSYS_CONTENT_MAX_ITEMS": "1"})
    url = f"http://127.0.0.1:{port}"
    failures, answers, fallbacks, stop = [], [], [], threading.Event()
    try:
        wait_ready(port, process)
        recent = [i["item_id"] for i in reversed(post(url, "/history", {"user_id": user})
                                                 .json()["items"])]
        expected = {}
        torch.set_num_threads(1)  # as a serving worker computes
        for version in (first, second):
            registry.set_champion(uri, version)
            served = load_served_model(uri, ann_min_items=1)
            assert served.version == version and served.retrieval.ann.params == \
                registry.load_version(uri, version).ann.params
            expected[version] = [(i, s) for i, s, *_ in recommend(served, recent, 5, True, [],
                                                                  user).items]
        assert registry.rollback_champion(uri) == first
        assert {i for i, _ in expected[first]} != {i for i, _ in expected[second]}

        def as_expected(version: str, items: list[tuple[str, float]]) -> bool:
            """The version's own answer: its scores, and its items but for the order
            of near ties (float noise between processes)."""
            want = expected[version]
            return (np.allclose([s for _, s in items], [s for _, s in want], atol=1e-3)
                    and len({i for i, _ in items} & {i for i, _ in want}) >= len(want) - 1)

        def stream() -> None:
            with httpx.Client(timeout=30, headers=AUTH) as http:
                while not stop.is_set():
                    answer = http.post(f"{url}/recommend", json={"user_id": user, "k": 5})
                    if answer.status_code != 200:
                        failures.append((answer.status_code, answer.text))
                    else:
                        body = answer.json()
                        if body["reason"] in (PAST_DEADLINE, ONLINE_DOWN):
                            # On a loaded machine a request can pass its deadline,
                            # or Redis its 20 ms timeout: the answer is popularity,
                            # flagged, no index was used, nothing to compare.
                            fallbacks.append(body["model_version"])
                        elif body["degraded"]:
                            failures.append((answer.status_code, answer.text))
                        else:
                            answers.append((body["model_version"], [
                                (i["item_id"], i["score"]) for i in body["items"]]))

        threads = [threading.Thread(target=stream) for _ in range(3)]
        for thread in threads:
            thread.start()
        time.sleep(1)
        registry.set_champion(uri, second)
        reloads = [post(url, "/reload", {}).json()]
        time.sleep(1)
        assert registry.rollback_champion(uri) == first
        reloads.append(post(url, "/reload", {}).json())
        time.sleep(0.5)
    finally:
        stop.set()
        stop_service(pipeline.settings, "serve-two-stage")
        registry.rollback_champion(uri)  # back to v1 for the other tests
    assert failures == []
    assert {version for version, _ in answers} == {first, second}
    assert len(fallbacks) < len(answers), (len(fallbacks), len(answers))  # mostly the model
    assert [(v, items, expected[v]) for v, items in answers
            if not as_expected(v, items)][:3] == []
    assert "building the item index" not in log.read_text()
    # Each /reload reached every worker (those it did not answer through their
    # champion watch), this service's two and any other replica's on the same Redis.
    assert [r["model_version"] for r in reloads] == [second, first]
    assert all(r["workers_on_version"] == r["workers"] >= 2 for r in reloads), reloads
    text = log.read_text()
    assert "no content blend for users without history" in text
    assert "champion watch failed" not in text


def test_a_failing_model_degrades_to_popularity(pipeline, service):
    """A champion whose scores are NaN (a corrupted model): answers stay 200, from
    popularity, flagged with the reason."""
    uri = pipeline.settings.tracking_uri()
    broken = register_copy(
        pipeline, lambda m: torch.nn.init.constant_(m.item_embedding.weight, float("nan")))
    registry.set_champion(uri, broken)
    try:
        assert post(service, "/reload", {}).json()["model_version"] == broken
        # httpx.post opens a new connection per call: these reach either worker.
        body = post(service, "/recommend", {"user_id": "u00001", "k": 5}).json()
        assert body["degraded"] is True and body["model_version"] == broken
        assert body["reason"] == "model failed (FloatingPointError): popularity"
        assert len(body["items"]) == 5
        scored = post(service, "/score", {"user_id": "u00001", "item_ids": ["i00001"]}).json()
        assert scored["degraded"] is True and scored["reason"].startswith("model failed")
    finally:
        registry.rollback_champion(uri)
        assert post(service, "/reload", {}).json()["model_version"] == "1"


def test_reload_needs_a_configured_key(service):
    assert post(service, "/reload", {}, headers={}).status_code == 401


@pytest.mark.parametrize("mode", ["positive", "negative"])
def test_fuzzing_every_operation_of_the_openapi_spec_gives_no_5xx(service, mode):
    """Schemathesis generates valid (positive) and invalid (negative) requests from
    the service's own OpenAPI document; no answer may be a 5xx."""
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from hypothesis.errors import Unsatisfiable

    schema = schemathesis.openapi.from_url(f"{service}/docs.json", headers=AUTH)
    checked = []
    for result in schema.get_all_operations():
        operation = result.ok()
        strategy = operation.as_strategy(generation_mode=schemathesis.GenerationMode(mode))

        @settings(max_examples=25, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(case=strategy)
        def call(case):
            answer = case.call(base_url=service, headers=AUTH, timeout=30)
            assert answer.status_code < 500, (case.as_curl_command(), answer.status_code,
                                              answer.text[:300])

        try:
            call()
        except Unsatisfiable:  # nothing to get wrong (e.g. GET /livez has no inputs)
            continue
        checked.append(operation.path)
    assert {"/recommend", "/score", "/events"} <= set(checked)


def test_reload_and_forget_on_a_service_without_a_key_are_refused_with_an_error_body(
        pipeline, service):
    """A refusal says why and nothing about the deployment (no versions, no workers)."""
    import os

    from infra.processes import free_port
    from orchestration.cli import start_service, stop_service, wait_ready

    port = free_port()
    assert "RECSYS_API_KEY" not in os.environ  # only the service fixture's process has it
    process = start_service(pipeline.settings, port, pipeline.settings.log_file("keyless"),
                            env={"RECSYS_API_KEY": ""}, name="keyless")
    try:
        wait_ready(port, process)
        answer = httpx.post(f"http://127.0.0.1:{port}/reload", json={}, timeout=30)
        assert answer.status_code == 403
        assert answer.json() == {"error": "/reload is refused while the service runs "
                                          "without RECSYS_API_KEY"}
        answer = httpx.post(f"http://127.0.0.1:{port}/forget", json={"user_id": "u00001"},
                            timeout=30)
        assert answer.status_code == 403
        assert answer.json() == {"error": "/forget is refused while the service runs "
                                          "without RECSYS_API_KEY"}
    finally:
        stop_service(pipeline.settings, name="keyless")


def test_the_deadline_counts_the_wait_for_the_event_loop(pipeline):
    """/recommend answers on the worker's event loop, one request at a time: of
    requests that reach it together, those whose turn comes after their deadline
    get popularity, flagged, while the first get the model. "Together" is made
    sure of by stopping the service's processes while the requests are sent."""
    import json
    import os
    import signal

    from bench.serving import Connection
    from infra.processes import descendants, free_port
    from orchestration.cli import start_service, stop_service, wait_ready

    port = free_port()
    process = start_service(pipeline.settings, port, pipeline.settings.log_file("deadline"),
                            env={"RECSYS_API_KEY": API_KEY, "RECSYS_DEADLINE_MS": "5",
                                 "RECSYS_SERVING_WORKERS": "1"}, name="deadline")
    body = json.dumps({"user_id": "u00001", "k": 10}).encode()

    async def burst() -> list[dict]:
        connections = [await Connection.open("127.0.0.1", port, API_KEY) for _ in range(30)]
        try:
            status, answer = await connections[0].post("/recommend", body)
            assert status == 200 and json.loads(answer)["reason"] is None  # warm
            stopped = [process.pid, *descendants(process.pid)]
            try:
                for pid in stopped:
                    os.kill(pid, signal.SIGSTOP)
                posts = [asyncio.create_task(c.post("/recommend", body)) for c in connections]
                await asyncio.sleep(0.05)  # every request written, none read
            finally:
                for pid in stopped:
                    os.kill(pid, signal.SIGCONT)
            answers = await asyncio.gather(*posts)
        finally:
            for connection in connections:
                connection.close()
        assert {status for status, _ in answers} == {200}
        return [json.loads(answer) for _, answer in answers]

    try:
        wait_ready(port, process)
        reasons = [answer["reason"] for answer in asyncio.run(burst())]
        assert set(reasons) == {None, PAST_DEADLINE}, reasons
        assert reasons.count(PAST_DEADLINE) >= len(reasons) // 2, reasons
    finally:
        stop_service(pipeline.settings, name="deadline")


def test_a_slow_answer_is_computed_off_the_event_loop_a_quick_one_on_it():
    """While a slow exact answer is computed, the loop must keep reading requests
    (their arrival times, the deadline's start, depend on it); quick ones stay on
    the loop, one at a time, without a hand-off."""
    from types import SimpleNamespace

    from serving.service import Recommender

    answer = Recommender.inner._answer

    async def run():
        worker = SimpleNamespace(_handler=None)
        loop_thread = threading.get_ident()
        quick = await answer(worker, SimpleNamespace(answers_quickly=True),
                             threading.get_ident)
        ticks = []

        async def tick():
            while True:
                ticks.append(time.monotonic())
                await asyncio.sleep(0.005)

        ticker = asyncio.create_task(tick())
        await asyncio.sleep(0)
        slow = await answer(worker, SimpleNamespace(answers_quickly=False),
                            lambda: (time.sleep(0.1), threading.get_ident())[1])
        ticker.cancel()
        return loop_thread, quick, slow, len(ticks)

    loop_thread, quick, slow, ticks = asyncio.run(run())
    assert quick == loop_thread
    assert slow != loop_thread
    assert ticks >= 5  # the loop ran on while the slow answer was computed


def test_redis_down_degrades_then_recovers(pipeline, service):
    """Last in this file: stops the embedded Redis under the running service."""
    from infra import redis_server

    settings = pipeline.settings
    url = redis_server.ensure(settings).url
    assert redis_server.stop(settings)
    try:
        body = post(service, "/recommend", {"user_id": "u00001", "k": 4}).json()
        assert body["degraded"] is True and body["model_version"] == "1"
        assert body["reason"] == ONLINE_DOWN
        assert len(body["items"]) == 4
        assert httpx.get(f"{service}/readyz", timeout=10).status_code == 503
        answer = post(service, "/events", {"events": [
            {"user_id": "u00001", "item_id": "i00001", "event_type": "view"}]})
        assert answer.status_code == 503
        assert answer.json()["accepted"] == 0
        assert "Redis" in answer.json()["rejected"][0]["error"]
    finally:
        assert redis_server.ensure(settings).url == url  # back at the same address

    def recovered() -> bool:
        """Both workers answer from the model and ready again: each call opens a
        new connection, which either worker may take, so one answer is not enough
        (the worker that took it may never have seen the outage)."""
        answers = [post(service, "/recommend", {"user_id": "u00001", "k": 4}).json()
                   for _ in range(6)]
        ready = [httpx.get(f"{service}/readyz", timeout=10).status_code for _ in range(6)]
        return all(not a["degraded"] for a in answers) and set(ready) == {200}

    assert wait_for(recovered, timeout=10, step=0.2)


def test_the_api_page_is_at_docs_with_the_platforms_title_and_no_outside_assets(service):
    from serving.api_page import TITLE, platform_version

    page = httpx.get(f"{service}/docs", timeout=10)  # no key: the page holds nothing private
    assert page.status_code == 200 and f"<title>{TITLE}</title>" in page.text
    assert "http://" not in page.text and "https://" not in page.text  # works offline
    assert httpx.get(f"{service}/static_content/swagger-ui-bundle.js",
                     timeout=10).status_code == 200
    info = httpx.get(f"{service}/docs.json", timeout=10).json()["info"]
    assert info["title"] == TITLE and info["version"] == platform_version() == "0.1.0"
    assert "BentoML" not in info["description"]
