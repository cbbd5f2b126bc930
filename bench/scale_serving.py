"""``make bench SECTIONS=scale_serving``: the service at a product catalogue's
size in minutes, without the pipeline: the serving half of ``scale``
(bench/scale.py) on a generated model instead of a trained one.

1. A model of ``BENCH_SCALE_ITEMS`` items (default 1,000,000) and
   ``BENCH_SCALE_USERS`` users (1,000,000), each user with a learned vector
   (``bench.retrieval.structured_model``: item vectors around cluster centres,
   transitions counted over Zipf-weighted within-cluster sequences, so popular
   items' rows grow long), its item index built and registered as the pipeline
   registers a version, and promoted.
2. Every user's history (``HISTORY`` items drawn as the sequences are) written to
   Redis in Feast's layout through the online writer materialisation uses.
3. ``scale.recall`` over ``BENCH_SCALE_RECALL_USERS`` (10,000) users, versions cut
   to 10,000 and 100,000 items, and ``scale.serve_curve``: ``bentoml serve`` at 200
   and 400 req/s on each size, two-stage and exact, worker RSS and Redis memory.

What this leaves out is what the pipeline's model adds: a trained encoder and
cold items' borrowed transition scores. The full run is ``scale``.
"""

import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from bench import scale
from bench.retrieval import ClusterPicker, clustered_items, structured_model
from feature_repo.event_rules import EventRules
from feature_repo.feature_views import USER_RECENT_ITEMS, user_recent_items
from feature_repo.online_rows import write_rows
from infra import redis_server
from infra.settings import Settings
from training import ann, registry

HISTORY = 20  # items per user's online history
WRITE_CHUNK = 50_000  # users written to Redis at once
CLUSTER_SIZE = 100  # items per cluster of the generated item vectors
HIDDEN = 64
SEED = 0


def clusters(n_items: int) -> int:
    return max(10, n_items // CLUSTER_SIZE)


def register_generated(settings: Settings, n_items: int, users: list[str]) -> dict:
    """The generated model, its index and documents, registered and champion."""
    started = time.perf_counter()
    model = structured_model(n_items, clusters(n_items), hidden=HIDDEN, seed=SEED, users=users,
                             popularity_exponent=scale.sizes().popularity_exponent)
    built = time.perf_counter()
    model.ann = ann.build(model)
    indexed = time.perf_counter()
    # the counts behind the transitions' log(1 + occurrences): the fallback's popularity
    counts = np.rint(np.expm1(model.transitions.popularity[1:].astype(np.float64)))
    popularity = {item: int(c) for item, c in zip(model.item_ids, counts, strict=True) if c}
    documents = {registry.POPULARITY_DOCUMENT: popularity,
                 registry.RECENT_POPULARITY_DOCUMENT: popularity,
                 registry.EVENT_RULES_DOCUMENT: EventRules(rating_range=(0.0, 5.0)).to_dict()}
    uri = settings.tracking_uri()
    version = registry.log_and_register(
        uri, settings.artifact_location(), model, {"generated": True, "items": n_items,
                                                   "users": len(users)},
        [], {}, {"purpose": "bench scale_serving"}, documents=documents).version
    registry.set_champion(uri, version)
    return {"version": version, "model_s": round(built - started, 1),
            "index_build_s": round(indexed - built, 1),
            "register_s": round(time.perf_counter() - indexed, 1),
            "transition_entries": int(sum(len(lag.indices) for lag in model.transitions.lags))}


def write_histories(settings: Settings, n_items: int, users: list[str], seed: int = 1) -> dict:
    """HISTORY items a user, drawn within the model's clusters (``clustered_items``
    with the model's seed gives its items' clusters), written to Redis."""
    started = time.perf_counter()
    home, _ = clustered_items(n_items, clusters(n_items), HIDDEN, np.random.default_rng(SEED))
    picker = ClusterPicker(home, clusters(n_items), scale.sizes().popularity_exponent, SEED)
    draws = np.random.default_rng(seed)
    client = redis_server.ensure(settings).client()
    view = user_recent_items(settings)
    now_us = time.time_ns() // 1000
    times = [now_us - (HISTORY - j) * 60_000_000 for j in range(HISTORY)]
    for at in range(0, len(users), WRITE_CHUNK):
        chunk = users[at:at + WRITE_CHUNK]
        picks = picker.sequences(len(chunk), HISTORY, draws)
        write_rows(client, settings.feast_project, view, "user_id", pd.DataFrame({
            "user_id": chunk, "recent_item_ids": [[f"i{i}" for i in row] for row in picks],
            "recent_timestamps": [times] * len(chunk),
            "event_timestamp": pd.Timestamp.now(tz="UTC")}))
    return {"users": len(users), "view": USER_RECENT_ITEMS,
            "seconds": round(time.perf_counter() - started, 1)}


def benchmark() -> dict:
    cfg = scale.sizes()
    home = Path(os.environ.get("BENCH_HOME") or tempfile.mkdtemp(prefix="recsys_scale_serving_"))
    settings = Settings(home=home / "state", source=home / "source")
    settings.home.mkdir(parents=True, exist_ok=True)
    print(f"state: {home}", flush=True)
    torch.set_num_threads(1)
    users = [f"u{u}" for u in range(cfg.users)]
    results = {"items": cfg.items, "users": cfg.users,
               "model": register_generated(settings, cfg.items, users)}
    print(f"model: {results['model']}", flush=True)
    results["histories"] = write_histories(settings, cfg.items, users)
    print(f"histories: {results['histories']}", flush=True)
    rng = np.random.default_rng(0)
    picked = rng.choice(users, size=min(len(users), int(os.environ.get(
        "BENCH_SCALE_RECALL_USERS", "10000"))), replace=False).tolist()
    results["retrieval"] = scale.recall(settings, picked)
    print(f"retrieval: {results['retrieval']}", flush=True)
    uri = settings.tracking_uri()
    champion = results["model"]["version"]
    versions = {**scale.register_subsets(uri, settings.artifact_location(), champion),
                cfg.items: champion}
    seconds = float(os.environ.get("BENCH_SERVING_SECONDS", "30"))
    results["serving"] = scale.serve_curve(settings, users, versions, seconds)
    info = redis_server.ensure(settings).client().info("memory")
    results["redis_used_memory_gib"] = round(info["used_memory"] / 2**30, 2)
    results["seconds_per_rate"] = seconds
    if not os.environ.get("BENCH_HOME"):
        redis_server.stop(settings)
    return results


def tables(results: dict) -> list[dict]:
    from bench.report import table

    model = results["model"]
    return [
        table(f"The generated model: {results['items']:,} items, {results['users']:,} users",
              ["model s", "index build s", "register s", "transition entries",
               "histories written s"],
              [[model["model_s"], model["index_build_s"], model["register_s"],
                model["transition_entries"], results["histories"]["seconds"]]]),
        scale.retrieval_table(results["retrieval"]),
        scale.serving_table(results),
    ]


def figures(results: dict) -> dict[str, bytes]:
    return {"scale_serving_latency.svg": scale.latency_figure(results["serving"])}
