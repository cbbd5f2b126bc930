"""user_recent_items: batch computation, real-time merge, and point-in-time
correctness through Feast's offline store on hand-written events."""

import time

import pandas as pd
import pytest

from feature_repo.data_sources import USER_RECENT_ITEMS_FILE
from feature_repo.feature_services import BEHAVIOUR_ENCODER_SERVICE
from feature_repo.recent_items import feature_times, merge_recent, recent_items_table
from feature_repo.store import apply_definitions, feast_connection_string, open_store
from infra import redis_server
from infra.settings import Settings


def events(rows):
    frame = pd.DataFrame(rows, columns=["user_id", "item_id", "ts"])
    frame["event_timestamp"] = pd.to_datetime(frame.pop("ts"), unit="s", utc=True)
    return frame


HAND = events([
    ("alice", "a", 1_600_000_000),
    ("bob", "x", 1_600_000_050),
    ("alice", "b", 1_600_000_100),
    ("alice", "c", 1_600_000_100),  # same second as b: arrival order decides
    ("alice", "d", 1_600_000_200),
])


def test_feature_times_spread_ties_by_arrival():
    times = feature_times(HAND)
    assert (times.iloc[3] - times.iloc[2]) == pd.Timedelta(microseconds=1)
    assert times.iloc[0] == HAND["event_timestamp"].iloc[0]


def test_recent_items_table_exact_rows():
    table = recent_items_table(HAND, n=2)
    alice = table[table["user_id"] == "alice"]
    assert alice["recent_item_ids"].tolist() == [["a"], ["a", "b"], ["b", "c"], ["c", "d"]]
    assert alice["recent_timestamps"].iloc[2] == [1_600_000_100_000_000, 1_600_000_100_000_001]
    assert table[table["user_id"] == "bob"]["recent_item_ids"].tolist() == [["x"]]


@pytest.mark.parametrize("old,new,n,expected", [
    ((["a", "b"], [1, 3]), (["c"], [2]), 5, ["a", "c", "b"]),  # late event goes in its place
    ((["a", "b"], [1, 3]), (["c"], [3]), 5, ["a", "b", "c"]),  # tie: arrival order
    ((["a", "b"], [1, 3]), (["c", "d"], [4, 5]), 3, ["b", "c", "d"]),  # keeps the last n
    (([], []), (["c"], [9]), 3, ["c"]),
])
def test_merge_recent(old, new, n, expected):
    items, times = merge_recent(*old, *new, n)
    assert items == expected
    assert times == sorted(times)


def test_feast_connection_string():
    assert feast_connection_string("redis://127.0.0.1:6390/0") == "127.0.0.1:6390"
    assert (feast_connection_string("rediss://u:p%40ss@h:7000/2")
            == "h:7000,db=2,username=u,password=p@ss,ssl=true")
    with pytest.raises(ValueError, match="redis://"):
        feast_connection_string("http://h:1")


def test_point_in_time_training_rows_through_feast(home: Settings):
    """A leak would change every answer: each row must see only earlier events."""
    home.offline_dir.mkdir(parents=True)
    recent_items_table(HAND, n=50).to_parquet(home.offline_dir / USER_RECENT_ITEMS_FILE)
    store = open_store(home, redis_server.ensure(home).url)
    apply_definitions(store, home)
    micro = pd.Timedelta(microseconds=1)
    t = feature_times(HAND)
    entity = pd.DataFrame({
        "user_id": ["alice", "alice", "alice", "alice"],
        # just before b; just before c (same second as b, after it); at d; before anything
        "event_timestamp": [t.iloc[2] - micro, t.iloc[3] - micro, t.iloc[4],
                            t.iloc[0] - pd.Timedelta(seconds=1)],
    })
    frame = store.get_historical_features(
        entity_df=entity, features=store.get_feature_service(BEHAVIOUR_ENCODER_SERVICE),
    ).to_df().sort_values("event_timestamp")
    assert frame["recent_item_ids"].map(list).tolist() == [["a"], ["a", "b"], ["a", "b", "c", "d"]]
    # Feast's file offline store leaves out an entity row with no feature value yet.
    assert frame["event_timestamp"].min() == t.iloc[2] - micro


def test_concurrent_writers_to_one_user_lose_nothing(home: Settings):
    """32 writers x 20 events to one user, at once, against the real Redis: all 640
    end up in the online row, in timestamp order (the per-user lock serialises
    read-merge-write; without it, writers overwrite each other's merges)."""
    from concurrent.futures import ThreadPoolExecutor

    from serving.online import OnlineFeatures

    home.offline_dir.mkdir(parents=True)
    recent_items_table(HAND, n=50).to_parquet(home.offline_dir / USER_RECENT_ITEMS_FILE)
    server = redis_server.ensure(home)
    apply_definitions(open_store(home, server.url), home)
    base_us = 1_700_000_000 * 1_000_000
    writers, per_writer = 32, 20

    def writer(w: int) -> float:
        online = OnlineFeatures(open_store(home, server.url), server.client(), recent_items=1000,
                                lock_wait_s=120)
        started = time.perf_counter()
        for k in range(per_writer):
            # Interleaved times: writer w's k-th event is the (k*32 + w)-th overall.
            online.append("carol", [f"w{w}-e{k}"], [base_us + (k * writers + w) * 1000])
        return time.perf_counter() - started

    with ThreadPoolExecutor(max_workers=writers) as pool:
        seconds = list(pool.map(writer, range(writers)))
    print(f"32 x 20 concurrent appends: slowest writer {max(seconds):.1f} s")
    online = OnlineFeatures(open_store(home, server.url), server.client(), recent_items=1000)
    items = online.recent("carol")
    assert len(items) == writers * per_writer == 640
    assert items == [f"w{i % writers}-e{i // writers}" for i in range(640)]
