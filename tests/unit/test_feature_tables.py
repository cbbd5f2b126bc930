"""user_recent_items computed in batch and merged in real time, and the Feast
connection string: plain functions on hand-written events."""

import pandas as pd
import pytest

from feature_repo.recent_items import feature_times, merge_recent, recent_items_table
from feature_repo.store import feast_connection_string


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
