"""Engine benchmark: the offline work on each engine (``RECSYS_ENGINE``), the same
input, in one run: the three per-event feature tables, the point-in-time
training set and the online materialisation of users and items, for generated
histories of each size in ``BENCH_ENGINE_EVENTS`` (default 1,000,000 and
10,000,000 events from the scale generator; 20 events a user, a catalogue of
one item per 100 events).
Each engine writes into its own RECSYS_HOME (its own embedded Redis); the Ray
engine is a local Ray of ``RECSYS_RAY_CPUS`` CPUs started once per size (its
start is timed apart). Every output is compared with the embedded one's.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq

from bench.report import table
from feature_repo.data_sources import (
    ITEM_POPULARITY_FILE,
    USER_PROFILE_FILE,
    USER_RECENT_ITEMS_FILE,
)
from feature_repo.feature_services import BEHAVIOUR_ENCODER_SERVICE
from feature_repo.feature_views import ITEM_POPULARITY, USER_RECENT_ITEMS
from feature_repo.materialize import materialize_view
from feature_repo.profiles import write_item_popularity, write_user_profile
from feature_repo.recent_items import feature_times, write_recent_items
from feature_repo.store import apply_definitions, historical_features, open_store
from infra import redis_server
from infra.engine import engine
from infra.settings import Settings
from orchestration.sources.scale_generator import ScaleConfig, write_scale_set
from training.sequences import training_targets

EVENTS_PER_USER = 20
EVENTS_PER_ITEM = 100
STAGES = ("user_recent_items", "user_profile", "item_popularity", "training set",
          "materialise users", "materialise items")


def generated(events: int, directory: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Validated-shape events (time order, UTC times, float ratings) and the
    catalogue, from the scale generator (its files in ``directory``)."""
    write_scale_set(ScaleConfig(users=max(1, events // EVENTS_PER_USER),
                                items=max(1, events // EVENTS_PER_ITEM), events=events),
                    directory)
    raw = pd.read_csv(directory / "events.csv", dtype={"user_id": str, "item_id": str})
    frame = raw.assign(
        event_timestamp=pd.to_datetime(raw["timestamp"], unit="s", utc=True),
        rating=pd.to_numeric(raw["rating"], errors="coerce")).drop(columns="timestamp")
    items = pd.read_csv(directory / "items.csv", dtype={"item_id": str}, keep_default_na=False)
    return frame.sort_values("event_timestamp", kind="stable").reset_index(drop=True), items


def run_engine(settings: Settings, events: pd.DataFrame, items: pd.DataFrame) -> dict:
    """Every stage on ``settings.engine``: seconds per stage and where each output is."""
    offline = settings.offline_dir
    offline.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    with engine(settings) as runner:
        seconds["engine start"] = time.perf_counter() - started

        def timed(stage, work):
            began = time.perf_counter()
            value = work()
            seconds[stage] = time.perf_counter() - began
            return value

        timed("user_recent_items", lambda: write_recent_items(
            events, settings.recent_items, offline / USER_RECENT_ITEMS_FILE, runner))
        timed("user_profile", lambda: write_user_profile(
            events, items, offline / USER_PROFILE_FILE, runner))
        timed("item_popularity", lambda: write_item_popularity(
            events, offline / ITEM_POPULARITY_FILE, runner))
        store = open_store(settings, redis_server.ensure(settings).url)
        apply_definitions(store, settings)
        entity = training_targets(events, feature_times(events), max_len=settings.recent_items)
        frame, _ = timed("training set", lambda: historical_features(
            store, entity, BEHAVIOUR_ENCODER_SERVICE, "user_id", engine=runner))
        frame.sort_values(["user_id", "event_timestamp"]).reset_index(drop=True).to_parquet(
            settings.training_set_path, index=False)
        for stage, view, file, key in (
                ("materialise users", USER_RECENT_ITEMS, USER_RECENT_ITEMS_FILE, "user_id"),
                ("materialise items", ITEM_POPULARITY, ITEM_POPULARITY_FILE, "item_id")):
            times = pd.read_parquet(offline / file, columns=["event_timestamp"])
            end = times["event_timestamp"].max() + pd.Timedelta(microseconds=1)
            timed(stage, lambda view=view, file=file, key=key, times=times, end=end:
                  materialize_view(store, view, offline / file, key,
                                   times["event_timestamp"].min().to_pydatetime(),
                                   end.to_pydatetime(), engine=runner))
    return {"seconds": {k: round(v, 2) for k, v in seconds.items()},
            "training_rows": len(frame)}


def same_outputs(a: Settings, b: Settings) -> bool:
    """The feature tables and the training set of two runs equal row for row, and
    their online stores hash for hash, field for field. (Not DUMP: a hash too big
    for Redis's compact encoding dumps in its hash table's order, which differs
    between servers for the same fields.)"""
    for file in (USER_RECENT_ITEMS_FILE, USER_PROFILE_FILE, ITEM_POPULARITY_FILE):
        if not pq.read_table(a.offline_dir / file).equals(pq.read_table(b.offline_dir / file)):
            return False
    if not pd.read_parquet(a.training_set_path).equals(pd.read_parquet(b.training_set_path)):
        return False
    clients = [redis_server.ensure(s).client() for s in (a, b)]
    keys = sorted(clients[0].scan_iter(count=10_000))
    if keys != sorted(clients[1].scan_iter(count=10_000)):
        return False
    for start in range(0, len(keys), 10_000):
        chunk = keys[start:start + 10_000]
        pipes = [c.pipeline(transaction=False) for c in clients]
        for pipe in pipes:
            for key in chunk:
                pipe.hgetall(key)
        if pipes[0].execute() != pipes[1].execute():
            return False
    return True


def benchmark() -> dict:
    sizes = [int(s) for s in os.environ.get("BENCH_ENGINE_EVENTS",
                                            "1000000,10000000").split(",")]
    cpus = int(os.environ.get("RECSYS_RAY_CPUS", "2"))
    results: dict = {}
    for size in sizes:
        home = Path(tempfile.mkdtemp(prefix="recsys_bench_engine_"))
        began = time.perf_counter()
        events, items = generated(size, home / "source")
        print(f"{len(events):,} events generated in {time.perf_counter() - began:.0f} s",
              flush=True)
        runs = {name: Settings(home=home / name, engine=name, ray_cpus=cpus)
                for name in ("embedded", "ray")}
        try:
            row: dict = {"events": len(events), "users": int(events["user_id"].nunique()),
                         "items": len(items), "ray_cpus": cpus}
            for name, settings in runs.items():
                row[name] = run_engine(settings, events, items)
                print(f"{size:,} events, {name}: {row[name]['seconds']}", flush=True)
            row["equal"] = same_outputs(runs["embedded"], runs["ray"])
            results[str(size)] = row
        finally:
            for settings in runs.values():
                redis_server.stop(settings)
            shutil.rmtree(home, ignore_errors=True)
    return results


def tables(results: dict) -> list[dict]:
    rows = []
    for row in results.values():
        for stage in ("engine start", *STAGES):
            embedded, ray = row["embedded"]["seconds"][stage], row["ray"]["seconds"][stage]
            rows.append([row["events"], stage, embedded, ray,
                         round(ray / embedded, 2) if embedded else None])
        rows.append([row["events"], "outputs equal (tables, training set, Redis hashes)",
                     None, None, int(row["equal"])])
    cpus = next(iter(results.values()))["ray_cpus"] if results else None
    return [table(f"Offline work by engine (wall s; Ray: a local Ray of {cpus} CPUs on "
                  "this machine)", ["events", "stage", "embedded s", "ray s", "ray / embedded"],
                  rows)]
