"""``make bench``: figures on this machine, printed as tables and written to
``bench_results/<section>.json``. Sections: ``data`` (see tests/bench_data.py),
``features`` (tests/bench_features.py) and ``serving``.

The serving section runs the pipeline once on generated data in a temporary
RECSYS_HOME (or uses ``BENCH_HOME`` if it already holds a champion), then measures:
- the in-process floor: feature read + encode + top-K, no HTTP;
- ``/recommend`` over HTTP against a real ``bentoml serve`` (sequential);
- event-to-visible: ``/events`` then ``/recommend`` that no longer offers the item.
"""

import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import httpx

from feature_repo.store import open_store
from infra import redis_server
from infra.settings import Settings
from orchestration.cli import free_port, start_service, stop_service, wait_ready
from serving.online import OnlineFeatures
from serving.scoring import load_served_model, recommend
from tests import bench_data, bench_features
from tests.bench_features import percentiles, print_latency_table, timed
from training import registry

SIZE = {"generator_users": 2000, "generator_items": 1000, "generator_events": 60_000}


def prepare(settings: Settings) -> None:
    if registry.alias_version(settings.tracking_uri(), registry.CHAMPION):
        return
    from dagster import materialize

    from orchestration.definitions import ASSETS, CHECKS
    from orchestration.resources import RecsysState, resources_from_settings

    resources = resources_from_settings(settings)
    resources["state"] = RecsysState(home=str(settings.home), **SIZE)
    result = materialize([*ASSETS, *CHECKS], resources=resources, run_config={
        "ops": {"behaviour_encoder_version": {"config": {"epochs": 5}}}})
    assert result.success


def serving_benchmark() -> dict:
    random.seed(0)
    home = Path(os.environ.get("BENCH_HOME") or tempfile.mkdtemp(prefix="recsys_bench_"))
    settings = Settings(home=home, recent_items=50)
    print(f"state: {home}")
    prepare(settings)
    server = redis_server.ensure(settings)
    client = server.client()
    store = open_store(settings, server.url)
    online = OnlineFeatures(store, client, settings.recent_items)
    served = load_served_model(settings.tracking_uri())
    from orchestration.assets.ingest import read_validated_events

    users = read_validated_events(settings, columns=["user_id"])["user_id"].unique().tolist()
    results = {}
    import torch

    torch.set_num_threads(1)
    floor = lambda user: recommend(served, online.recent(user), 10, True)  # noqa: E731
    timed(floor, users, 100)
    results["in_process_floor"] = percentiles(timed(floor, users, 2000))

    port = free_port()
    process = start_service(settings, port, settings.home / "bench_serve.log")
    try:
        wait_ready(port, process)
        url = f"http://127.0.0.1:{port}"
        with httpx.Client(timeout=10) as http:
            call = lambda user: http.post(f"{url}/recommend", json={"user_id": user, "k": 10})  # noqa: E731
            timed(call, users, 50)
            results["http_recommend_sequential"] = percentiles(timed(call, users, 1000))
            samples = []
            for _ in range(100):
                user = random.choice(users)
                item = http.post(f"{url}/recommend", json={"user_id": user, "k": 1}
                                 ).json()["items"][0]["item_id"]
                started = time.perf_counter()
                http.post(f"{url}/events", json={"events": [
                    {"user_id": user, "item_id": item, "event_type": "click"}]})
                after = http.post(f"{url}/recommend", json={"user_id": user, "k": 10}).json()
                samples.append(time.perf_counter() - started)
                assert item not in [i["item_id"] for i in after["items"]]
            results["event_to_visible"] = percentiles(samples)
    finally:
        stop_service(settings)
    print_latency_table(results)
    if not os.environ.get("BENCH_HOME"):
        redis_server.stop(settings)
    return results


SECTIONS = {"data": bench_data.benchmark, "features": bench_features.benchmark,
            "serving": serving_benchmark}


def main() -> None:
    """``python -m tests.bench [data] [serving]`` (all sections when none is named)."""
    names = sys.argv[1:] or list(SECTIONS)
    unknown = set(names) - set(SECTIONS)
    if unknown:
        raise SystemExit(f"unknown section(s) {sorted(unknown)}; choose from {list(SECTIONS)}")
    out = Path("bench_results")
    out.mkdir(exist_ok=True)
    for name in names:
        print(f"== {name} ==")
        results = SECTIONS[name]()
        (out / f"{name}.json").write_text(json.dumps(results, indent=2))
        print(f"written to {out / f'{name}.json'}\n")


if __name__ == "__main__":
    main()
