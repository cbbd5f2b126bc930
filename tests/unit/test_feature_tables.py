"""user_recent_items and user_profile computed in batch (chunked, and the same
whatever the chunks), recent items merged in real time, and the Feast
connection string: plain functions on hand-written and generated events."""

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from feature_repo.profiles import user_profile_chunks, user_profile_table
from feature_repo.recent_items import (
    feature_times,
    merge_recent,
    recent_items_chunks,
    recent_items_table,
)
from feature_repo.store import feast_connection_string
from feature_repo.tables import entity_blocks, gather, write_chunks


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
    assert alice["recent_item_ids"].map(list).tolist() == [["a"], ["a", "b"], ["b", "c"],
                                                           ["c", "d"]]
    assert list(alice["recent_timestamps"].iloc[2]) == [1_600_000_100_000_000,
                                                        1_600_000_100_000_001]
    assert table[table["user_id"] == "bob"]["recent_item_ids"].map(list).tolist() == [["x"]]


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


@pytest.fixture(scope="module")
def generated_events():
    from orchestration.sources.generator import GeneratorConfig, generate

    data = generate(GeneratorConfig(users=300, items=200, events=6_000, seed=5))
    frame = data.events.assign(
        event_timestamp=pd.to_datetime(data.events["timestamp"], unit="s", utc=True),
        rating=pd.to_numeric(data.events["rating"], errors="coerce")).drop(columns="timestamp")
    return frame.sort_values("event_timestamp", kind="stable").reset_index(drop=True), data.items


def _frames_equal(a: pd.DataFrame, b: pd.DataFrame) -> None:
    assert list(a.columns) == list(b.columns) and len(a) == len(b)
    for name in a.columns:
        if a[name].dtype == object and not isinstance(a[name].iloc[0], str):
            assert a[name].map(list).tolist() == b[name].map(list).tolist(), name
        else:
            pd.testing.assert_series_equal(a[name], b[name])


@pytest.mark.parametrize("table", ["recent", "profile"])
def test_per_event_tables_do_not_depend_on_their_chunks(generated_events, table, tmp_path):
    events, items = generated_events

    def chunks(rows):
        if table == "recent":
            return recent_items_chunks(events, 50, chunk_rows=rows)
        return user_profile_chunks(events, items, chunk_rows=rows)
    whole = gather(*chunks(10**9))
    assert len(whole) == len(events)
    _frames_equal(whole, gather(*chunks(997)))  # chunks cut through users' histories
    path = tmp_path / "table.parquet"
    assert write_chunks(*chunks(1_500), path) == len(events)
    assert pq.ParquetFile(path).num_row_groups == -(-len(events) // 1_500)
    _frames_equal(whole, pd.read_parquet(path))


def test_profile_rows_by_hand():
    events = HAND.assign(rating=[4.0, None, 2.0, None, 5.0])
    items = pd.DataFrame({"item_id": ["a", "b", "c", "d", "x"],
                          "genres": ["Drama", "Drama|War", "Comedy", "War", "Comedy"]})
    alice = user_profile_table(events, items).query("user_id == 'alice'")
    assert alice["event_count"].tolist() == [1, 2, 3, 4]
    assert alice["mean_rating"].tolist() == pytest.approx([4.0, 3.0, 3.0, 11 / 3])  # c unrated
    # a (Drama), b (Drama, War), c (Comedy), d (War): counts Drama 2, War 2, Comedy 1;
    # equal counts rank by name
    assert list(alice["top_genres"].iloc[3]) == ["Drama", "War", "Comedy"]
    assert list(alice["top_genre_shares"].iloc[3]) == [0.4, 0.4, 0.2]
    assert list(alice["top_genres"].iloc[0]) == ["Drama"]


def test_an_empty_event_table_writes_an_empty_file_with_the_schema(tmp_path):
    path = tmp_path / "empty.parquet"
    assert write_chunks(*recent_items_chunks(HAND.iloc[:0], 50), path) == 0
    read = pd.read_parquet(path)
    assert len(read) == 0 and list(read.columns) == ["user_id", "event_timestamp",
                                                     "recent_item_ids", "recent_timestamps"]


def test_entity_blocks_hold_whole_entities_in_their_order():
    keys = np.array(["b", "a", "b", "c", "a", "d", "d", "d", "e", "b"])
    # first events: b at 0 (3 events), a at 3 (2), c at 5, d at 6 (3), e at 9: blocks of
    # 3 by where an entity's events start in that order, each block's positions sorted
    blocks = entity_blocks(keys, block_events=3)
    assert [b.tolist() for b in blocks] == [[0, 2, 9], [1, 3, 4], [5, 6, 7], [8]]
    # an entity with more events than a block is not cut
    assert [b.tolist() for b in entity_blocks(np.array(["x"] * 5 + ["y"]), 2)] == [
        [0, 1, 2, 3, 4], [5]]
    assert entity_blocks(keys[:0]) == []
    assert [b.tolist() for b in entity_blocks(keys)] == [list(range(len(keys)))]
