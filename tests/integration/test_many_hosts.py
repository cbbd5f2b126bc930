"""Many hosts on one machine: two service replicas with their own RECSYS_HOME (two
"hosts") that share nothing but one Redis and one ``mlflow server``, and a batch
host that trained the champion through that server. Real processes, loopback."""

import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, replace

import httpx
import pytest
from dagster import materialize

from infra import event_stream, redis_server
from infra.processes import descendants, free_port, kill_tree, pid_alive
from infra.settings import Settings
from orchestration.cli import start_mlflow_server, start_service, stop_process, wait_ready
from orchestration.definitions import ASSETS, CHECKS
from orchestration.demo import DEMO_SKIPS
from orchestration.lineage import instance_for
from orchestration.resources import resources_from_settings
from tests.conftest import API_KEY, AUTH, SMALL, wait_for
from training import registry

pytestmark = pytest.mark.slow
POLL_S = 60  # the replicas' own registry poll: convergence must come sooner, via Redis


@dataclass
class Hosts:
    batch: Settings  # where the pipeline runs (and the consumer)
    replicas: dict[str, str]  # name -> base URL
    settings: dict[str, Settings]  # name -> the replica's settings
    redis_url: str
    tracking_uri: str

    def env(self) -> dict[str, str]:
        return {"REDIS_URL": self.redis_url, "MLFLOW_TRACKING_URI": self.tracking_uri}


def post(url: str, path: str, body: dict, timeout: float = 30) -> httpx.Response:
    return httpx.post(f"{url}{path}", json=body, headers=AUTH, timeout=timeout)


def start_replica(settings: Settings, env: dict[str, str]) -> str:
    port = free_port()
    process = start_service(settings, port, settings.home / "serve.log", env={
        **env, "RECSYS_API_KEY": API_KEY, "RECSYS_MODEL_POLL_S": str(POLL_S),
        "RECSYS_SERVING_WORKERS": "1"})
    try:
        wait_ready(port, process)
    except Exception:
        print((settings.home / "serve.log").read_text()[-5000:])
        raise
    return f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def hosts(tmp_path_factory):
    root = tmp_path_factory.mktemp("hosts")
    redis_host = Settings(home=root / "redis-host")
    mlflow_host = Settings(home=root / "mlflow-host")
    redis_url = redis_server.ensure(redis_host).url
    tracking_uri = start_mlflow_server(mlflow_host, free_port())
    batch = Settings(home=root / "batch", redis_url=redis_url, mlflow_tracking_uri=tracking_uri)
    replicas = {name: replace(batch, home=root / name) for name in ("a", "b")}
    try:
        result = materialize(
            [*ASSETS, *CHECKS], resources=resources_from_settings(batch, **SMALL),
            instance=instance_for(batch),
            selection=[k for a in ASSETS for k in a.keys if k.to_user_string() not in DEMO_SKIPS],
            run_config={"ops": {"behaviour_encoder_version": {"config": {"epochs": 3}}}})
        assert result.success
        assert registry.alias_version(tracking_uri, registry.CHAMPION) == "1"
        env = {"REDIS_URL": redis_url, "MLFLOW_TRACKING_URI": tracking_uri}
        urls = {name: start_replica(s, env) for name, s in replicas.items()}
        yield Hosts(batch, urls, replicas, redis_url, tracking_uri)
    finally:
        for s in replicas.values():
            stop_process(s, "serve")
        stop_process(mlflow_host, "mlflow-server")
        redis_server.stop(redis_host)


def test_nothing_on_a_replicas_disk_but_logs(hosts):
    """Its log, its pid and BentoML's state: the workers' metric counters (for
    /metrics) and BentoML's client id."""
    for settings in hosts.settings.values():
        written = {p.relative_to(settings.home).as_posix()
                   for p in settings.home.rglob("*") if p.is_file()}
        bentoml = {p for p in written if p.startswith("run/serve.bentoml/")}
        assert written - bentoml == {"serve.log", "run/serve.pid"}
        counters = {p for p in bentoml if p.endswith(".db") and p.startswith(
            "run/serve.bentoml/prometheus_multiproc_dir/")}
        assert counters and bentoml - counters == {"run/serve.bentoml/client_id"}


def test_an_event_sent_to_one_replica_shows_in_the_next_answer_of_the_other(hosts):
    a, b = hosts.replicas["a"], hosts.replicas["b"]
    user = "visitor-on-a"
    cold = post(b, "/recommend", {"user_id": user, "k": 10}).json()
    assert cold["degraded"] and cold["reason"].startswith("no history")
    clicked = cold["items"][0]["item_id"]
    assert post(a, "/events", {"events": [
        {"user_id": user, "item_id": clicked, "event_type": "click"}]}).json()["accepted"] == 1
    warm = post(b, "/recommend", {"user_id": user, "k": 10}).json()
    assert warm["degraded"] is False and warm["reason"] is None
    assert clicked not in [i["item_id"] for i in warm["items"]]
    assert all(i["because"][0]["item_id"] == clicked for i in warm["items"])


def test_a_promotion_and_one_reload_reach_both_replicas_with_no_failed_request(hosts):
    a, b = hosts.replicas["a"], hosts.replicas["b"]
    uri = hosts.tracking_uri
    # Version 2: v1's weights logged again through the server (artifacts over HTTP).
    documents = {name: registry.load_document(uri, "1", name) for name in (
        registry.POPULARITY_DOCUMENT, registry.EVENT_RULES_DOCUMENT)}
    v2 = registry.log_and_register(uri, None, registry.load_version(uri, "1"),
                                   {"copy_of": "1"}, [], {}, {"purpose": "test"},
                                   documents=documents)
    failures, answered = [], {a: [], b: []}
    stop = threading.Event()

    def stream(url):
        while not stop.is_set():
            try:
                response = post(url, "/recommend", {"user_id": "u00001", "k": 5}, timeout=10)
                if response.status_code != 200:
                    failures.append((url, response.status_code, response.text[:200]))
                else:
                    answered[url].append((time.monotonic(), response.json()["model_version"]))
            except httpx.HTTPError as error:
                failures.append((url, repr(error)))
            time.sleep(0.02)

    threads = [threading.Thread(target=stream, args=(u,)) for u in (a, b) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        time.sleep(1.0)
        registry.set_champion(uri, v2.version)
        started = time.monotonic()
        reloaded = post(a, "/reload", {}, timeout=90).json()
        took = time.monotonic() - started
        assert reloaded["model_version"] == v2.version and reloaded["changed"]
        # One worker per replica: both serve v2 when /reload answers.
        assert reloaded["workers"] == reloaded["workers_on_version"] == 2
        fleet = post(b, "/fleet", {}).json()
        assert fleet["model_version"] == v2.version
        assert {w["model_version"] for w in fleet["workers"]} == {v2.version}
        assert len(fleet["workers"]) == 2
        time.sleep(1.0)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert failures == []
    first_v2_on_b = min(t for t, v in answered[b] if v == v2.version)
    assert first_v2_on_b - started < took + 1.0 < POLL_S
    assert all(v == v2.version for t, v in answered[b] if t > started + took)
    print(f"two-replica reload: /reload answered in {took:.2f}s, B first answered "
          f"v{v2.version} {first_v2_on_b - started:.2f}s after the call")
    registry.set_champion(uri, "1")
    assert post(a, "/reload", {}, timeout=90).json()["workers_on_version"] == 2


def test_a_separate_events_redis_takes_the_stream_and_while_it_is_down_nothing_is_written(
        hosts, tmp_path):
    events_host = Settings(home=tmp_path / "events-host")
    events_url = redis_server.ensure(events_host).url
    replica = replace(hosts.batch, home=tmp_path / "c")
    url = start_replica(replica, {**hosts.env(), "RECSYS_EVENTS_URL": events_url})
    shared = redis_server.RedisServer(url=hosts.redis_url, pid=None).client()
    separate = redis_server.RedisServer(url=events_url, pid=None).client()
    try:
        before = event_stream.length(shared)
        body = {"events": [{"user_id": "on-c", "item_id": "i00005", "event_type": "click"}]}
        assert post(url, "/events", body).json()["accepted"] == 1
        assert event_stream.length(separate) == 1 and event_stream.length(shared) == before
        redis_server.stop(events_host)
        down = post(url, "/events", {"events": [
            {"user_id": "while-down", "item_id": "i00005", "event_type": "click"}]})
        assert down.status_code == 503 and down.json()["accepted"] == 0
        assert "event stream" in down.json()["rejected"][0]["error"]
        cold = post(url, "/recommend", {"user_id": "while-down"}).json()
        assert cold["reason"].startswith("no history")  # nothing reached the online store
    finally:
        stop_process(replica, "serve")
        redis_server.stop(events_host)
        shared.close()
        separate.close()


def consume_once(hosts: Hosts) -> str:
    return subprocess.run(
        [sys.executable, "-m", "orchestration.cli", "consume", "--once"], check=True,
        capture_output=True, text=True,
        env={**os.environ, **hosts.env(), "RECSYS_HOME": str(hosts.batch.home)}).stdout


def logged_events(settings: Settings) -> list[dict]:
    import json

    return [json.loads(line) for p in sorted(settings.event_log_dir.glob("*.jsonl"))
            for line in p.read_text().splitlines()]


def test_the_consumer_drains_both_replicas_once_and_the_next_batch_run_ingests_them(hosts):
    from orchestration.assets.ingest import item_catalogue, raw_events, validate_raw_events
    from orchestration.resources import RecsysState

    sent = {}
    for name, url in hosts.replicas.items():
        for n in range(20):
            user = f"drain-{name}-{n}"
            body = {"events": [{"user_id": user, "item_id": "i00003", "event_type": "view"}]}
            assert post(url, "/events", body).json()["accepted"] == 1
            sent[user] = name
    consume_once(hosts)
    consume_once(hosts)  # a second drain finds nothing new
    logged = [e["user_id"] for e in logged_events(hosts.batch) if e["user_id"] in sent]
    assert sorted(logged) == sorted(sent)  # each once
    result = materialize([item_catalogue, raw_events, validate_raw_events],
                         resources={"state": RecsysState.of(hosts.batch, **SMALL)})
    raw = next(e.materialization.metadata for e in result.get_asset_materialization_events()
               if e.asset_key.to_user_string() == "raw_events")
    assert raw["new_rows"].value == len(logged_events(hosts.batch)) - (
        raw["event_log_rows"].value - raw["new_rows"].value)
    from orchestration.offline import read_validated_events

    validated = read_validated_events(hosts.batch)
    assert set(sent) <= set(validated["user_id"])


def test_a_replica_killed_mid_stream_lost_no_acknowledged_event(hosts):
    b = hosts.replicas["b"]
    acknowledged, stop = [], threading.Event()

    def send():
        n = 0
        while not stop.is_set():
            user = f"kill-{n}"
            n += 1
            try:
                response = post(b, "/events", {"events": [
                    {"user_id": user, "item_id": "i00004", "event_type": "click"}]}, timeout=5)
            except httpx.HTTPError:
                continue  # the replica is gone: this one was never acknowledged
            if response.status_code == 200 and response.json()["accepted"] == 1:
                acknowledged.append(user)

    thread = threading.Thread(target=send)
    thread.start()
    time.sleep(2.0)
    pid = int(hosts.settings["b"].pid_file("serve").read_text())
    workers = descendants(pid)
    assert workers  # the replica's worker, in a process group of its own
    kill_tree(pid)  # the server and its worker, at once
    wait_for(lambda: not any(pid_alive(p) for p in [pid, *workers]))
    time.sleep(0.5)
    stop.set()
    thread.join()
    assert len(acknowledged) > 20
    client = redis_server.RedisServer(url=hosts.redis_url, pid=None).client()
    on_stream = [e.event["user_id"] for e in
                 event_stream.StreamConsumer(client, "inspect", group="inspect").read(100_000)]
    client.close()
    assert set(acknowledged) <= set(on_stream)
    consume_once(hosts)
    logged = [e["user_id"] for e in logged_events(hosts.batch)
              if e["user_id"].startswith("kill-")]
    assert set(acknowledged) <= set(logged) and len(logged) == len(set(logged))
    print(f"replica SIGKILL: {len(acknowledged)} acknowledged, all on the stream and in "
          f"the offline log; {len(logged) - len(acknowledged)} more sent in flight and "
          f"logged, 0 duplicated")


def test_a_bento_builds_and_serves_against_the_same_redis_and_mlflow(hosts, tmp_path):
    """``bentoml build`` (the [tool.bentoml.build] config) then ``bentoml serve <tag>``."""
    from pathlib import Path

    from infra.processes import start_process

    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "BENTOML_HOME": str(tmp_path / "bentoml")}
    built = subprocess.run([sys.executable, "-m", "bentoml", "build", "-o", "tag"], cwd=root,
                           env=env, capture_output=True, text=True, check=True)
    tag = built.stdout.strip().splitlines()[-1].removeprefix("__tag__:")
    assert tag.startswith("recommender:")
    src = tmp_path / "bentoml" / "bentos" / "recommender" / tag.split(":")[1] / "src"
    assert (src / "serving" / "service.py").exists() and not (src / "tests").exists()
    host = replace(hosts.batch, home=tmp_path / "bento-host")
    port = free_port()
    process = start_process(host, "serve", [
        sys.executable, "-m", "bentoml", "serve", tag, "--port", str(port),
        "--host", "127.0.0.1"], host.home / "serve.log", env={
        **hosts.env(), "BENTOML_HOME": env["BENTOML_HOME"], "RECSYS_API_KEY": API_KEY,
        "RECSYS_SERVING_WORKERS": "1"})
    try:
        wait_ready(port, process)
        answer = post(f"http://127.0.0.1:{port}", "/recommend", {"user_id": "u00001", "k": 3})
        assert answer.status_code == 200
        body = answer.json()
        assert body["model_version"] == registry.alias_version(hosts.tracking_uri,
                                                               registry.CHAMPION)
        assert len(body["items"]) == 3 and body["degraded"] is False
    finally:
        stop_process(host, "serve")
