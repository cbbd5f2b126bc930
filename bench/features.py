"""Feature benchmark, in a temporary RECSYS_HOME with its own embedded Redis:
the offline ``user_recent_items`` table for ``BENCH_FEATURE_USERS`` users
(default 100,000, 5 events each), its materialisation into Redis (users/s),
then reads of one user's ``behaviour_encoder_v1`` features three ways, in the
same run: Feast ``get_online_features`` by feature service, the project's
thin reader (what the service uses), and a raw redis-py HMGET of the same fields;
and what the embedded Redis's ``appendfsync always`` costs the writes against
``everysec``.
"""

import os
import random
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from bench.report import table
from feature_repo.data_sources import USER_RECENT_ITEMS_FILE
from feature_repo.feature_services import BEHAVIOUR_ENCODER_SERVICE
from feature_repo.feature_views import USER_RECENT_ITEMS
from feature_repo.materialize import materialize_view
from feature_repo.online_rows import RecentItemsRows
from feature_repo.recent_items import recent_items_table
from feature_repo.store import apply_definitions, open_store
from infra import event_stream, redis_server
from infra.collector import settle_collector
from infra.settings import Settings
from serving.online import OnlineFeatures


def percentiles(samples_s: list[float]) -> dict[str, float]:
    ms = np.asarray(samples_s) * 1000
    return {"n": len(ms), "p50_ms": round(float(np.percentile(ms, 50)), 3),
            "p95_ms": round(float(np.percentile(ms, 95)), 3),
            "p99_ms": round(float(np.percentile(ms, 99)), 3)}


def timed(fn, users, repeat):
    samples = []
    for _ in range(repeat):
        user = random.choice(users)
        started = time.perf_counter()
        fn(user)
        samples.append(time.perf_counter() - started)
    return samples


def print_latency_table(results: dict) -> None:
    print(f"\n{'measure':<28} {'n':>6} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8}")
    for name, row in results.items():
        if "p50_ms" in row:
            print(f"{name:<28} {row['n']:>6} {row['p50_ms']:>8.3f} {row['p95_ms']:>8.3f} "
                  f"{row['p99_ms']:>8.3f}")


def benchmark() -> dict:
    random.seed(0)
    n_users = int(os.environ.get("BENCH_FEATURE_USERS", "100000"))
    settings = Settings(home=Path(tempfile.mkdtemp(prefix="recsys_bench_features_")))
    settings.offline_dir.mkdir(parents=True)
    rng = np.random.default_rng(0)
    n = n_users * 5
    users = np.char.add("u", np.arange(n_users).astype(str))
    events = pd.DataFrame({
        "user_id": np.concatenate([users, users[rng.integers(0, n_users, n - n_users)]]),
        "item_id": np.char.add("i", rng.integers(0, 5000, n).astype(str)),
        "event_timestamp": pd.to_datetime(1_600_000_000 + np.arange(n), unit="s", utc=True),
    })
    first, last = events["event_timestamp"].min(), events["event_timestamp"].max()
    last += pd.Timedelta(seconds=1)
    started = time.perf_counter()
    path = settings.offline_dir / USER_RECENT_ITEMS_FILE
    recent_items_table(events, settings.recent_items).to_parquet(path)
    table_seconds = time.perf_counter() - started
    results: dict = {}
    try:
        server = redis_server.ensure(settings)
        store = open_store(settings, server.url)
        apply_definitions(store, settings)
        stats = materialize_view(store, USER_RECENT_ITEMS, path, "user_id",
                                 first.to_pydatetime(), last.to_pydatetime())
        results["materialize"] = {
            "users": stats.entities_written, "offline_rows": stats.rows_in_range,
            "offline_table_seconds": round(table_seconds, 1),
            "seconds": round(stats.seconds, 1),
            "users_per_s": round(stats.entities_written / stats.seconds)}
        service = store.get_feature_service(BEHAVIOUR_ENCODER_SERVICE)
        client = server.client()
        names = users.tolist()
        # Measure reads on a quiet machine: the embedded Redis finishes rewriting its
        # append-only file after the bulk write, and this process drops the big frames
        # (a full garbage collection over them would land in some read's p99).
        while int(client.info("persistence").get("aof_rewrite_in_progress", 0)):
            time.sleep(0.5)
        del events, users
        settle_collector()
        reader = RecentItemsRows(client, settings.feast_project)

        def feast_read(user):
            return store.get_online_features(features=service,
                                             entity_rows=[{"user_id": user}]).to_dict()

        def raw_hmget(user):
            return client.hmget(reader.key(user), reader.fields)

        for user in names:  # steady state: every user's hash read once before timing
            raw_hmget(user)
        for name, fn in [("feast_get_online_features", feast_read),
                         ("thin_reader", reader.read), ("raw_redis_hmget", raw_hmget)]:
            timed(fn, names, 300)  # warm up
            results[name] = percentiles(timed(fn, names, 5000))
        results["writes"] = write_costs(settings, server, store, path, first, last, names)
    finally:
        redis_server.stop(settings)
    m = results["materialize"]
    print(f"\noffline user_recent_items for {n:,} events: {m['offline_table_seconds']} s; "
          f"materialised {m['users']:,} users into Redis in {m['seconds']} s "
          f"({m['users_per_s']:,} users/s)")
    print_latency_table(results)
    ratio = results["thin_reader"]["p99_ms"] / results["raw_redis_hmget"]["p99_ms"]
    print(f"thin reader p99 / raw HMGET p99: {ratio:.2f}x")
    return results


def write_costs(settings: Settings, server, store, path, first, last, names) -> dict:
    """What the embedded Redis's ``appendfsync always`` costs against ``everysec``,
    in one run: /events' two writes (the stream's XADD, the online row's locked
    merge) one call at a time, and the bulk materialisation (from an empty Redis)."""
    client = server.client()
    online = OnlineFeatures(client, settings.feast_project, settings.recent_items)
    out = {}
    event = {"user_id": "u1", "item_id": "i1", "event_type": "click",
             "timestamp": 1_700_000_000.0, "rating": None}
    for mode in ("always", "everysec"):
        client.config_set("appendfsync", mode)
        xadd = timed(lambda _: event_stream.publish(client, [event]), names, 2000)
        merge = timed(lambda user: online.append(user, ["i7"], [1_700_000_000_000_000]),
                      names, 2000)
        client.flushall()
        stats = materialize_view(store, USER_RECENT_ITEMS, path, "user_id",
                                 first.to_pydatetime(), last.to_pydatetime())
        out[mode] = {"xadd": percentiles(xadd), "online_merge": percentiles(merge),
                     "materialise_seconds": round(stats.seconds, 1),
                     "materialised_users": stats.entities_written}
    client.config_set("appendfsync", "always")
    for mode, row in out.items():
        print(f"appendfsync {mode}: XADD p50 {row['xadd']['p50_ms']} ms, online merge p50 "
              f"{row['online_merge']['p50_ms']} ms, materialise "
              f"{row['materialised_users']:,} users {row['materialise_seconds']} s")
    return out


READS = ("feast_get_online_features", "thin_reader", "raw_redis_hmget")


def tables(results: dict) -> list[dict]:
    m = results["materialize"]
    writes = results.get("writes", {})
    return [
        table("Offline table and materialisation", ["users", "offline rows",
              "offline table s", "materialise s", "users/s"],
              [[m["users"], m["offline_rows"], m["offline_table_seconds"], m["seconds"],
                m["users_per_s"]]]),
        table("Online reads of one user's behaviour_encoder_v1 features (steady state)",
              ["read", "n", "p50 ms", "p95 ms", "p99 ms"],
              [[name, results[name]["n"], results[name]["p50_ms"], results[name]["p95_ms"],
                results[name]["p99_ms"]] for name in READS]),
        table("Redis persistence: appendfsync always (the embedded default) against everysec",
              ["appendfsync", "XADD p50 ms", "XADD p99 ms", "online merge p50 ms",
               "online merge p99 ms", "materialise s"],
              [[mode, w["xadd"]["p50_ms"], w["xadd"]["p99_ms"], w["online_merge"]["p50_ms"],
                w["online_merge"]["p99_ms"], w["materialise_seconds"]]
               for mode, w in writes.items()]),
    ]
