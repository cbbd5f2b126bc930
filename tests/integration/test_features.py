"""Point-in-time correctness through Feast's offline store, materialisation and the
thin reader and writer, against a real Redis, on hand-written events."""

import time

import numpy as np
import pandas as pd
import pytest

from feature_repo.data_sources import (
    ITEM_CONTENT_FILE,
    ITEM_POPULARITY_FILE,
    USER_PROFILE_FILE,
    USER_RECENT_ITEMS_FILE,
)
from feature_repo.feature_services import BEHAVIOUR_ENCODER_SERVICE
from feature_repo.feature_views import (
    ITEM_CONTENT,
    ITEM_POPULARITY,
    USER_PROFILE,
    USER_RECENT_ITEMS,
)
from feature_repo.materialize import materialize_view
from feature_repo.profiles import item_popularity_table, user_profile_table
from feature_repo.recent_items import feature_times, recent_items_table
from feature_repo.store import apply_definitions, historical_features, open_store
from infra import redis_server
from infra.settings import Settings
from serving.online import OnlineFeatures
from tests.unit.test_feature_tables import HAND


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
    # Before alice's first event there is no value yet (null), then each row sees
    # exactly the events before it.
    assert frame["recent_item_ids"].map(lambda v: None if v is None else list(v)).tolist() == [
        None, ["a"], ["a", "b"], ["a", "b", "c", "d"]]
    # in blocks of whole users, one join each: the same rows
    both = pd.concat([entity, entity.assign(user_id="bob")], ignore_index=True)
    whole, joins = historical_features(store, both, BEHAVIOUR_ENCODER_SERVICE, "user_id")
    split, more = historical_features(store, both, BEHAVIOUR_ENCODER_SERVICE, "user_id",
                                      rows_per_join=4)
    assert (joins, more) == (1, 2)
    key = ["user_id", "event_timestamp"]
    pd.testing.assert_frame_equal(whole.sort_values(key).reset_index(drop=True),
                                  split.sort_values(key).reset_index(drop=True))
    # bob's one event (second 50) is before three of the four instants
    assert split.loc[split["user_id"] == "bob", "recent_item_ids"].notna().sum() == 3


def test_concurrent_writers_to_one_user_lose_nothing(home: Settings):
    """32 writers x 20 events to one user, at once, against the real Redis: all 640
    end up in the online row, in timestamp order (the per-user lock serialises
    read-merge-write; without it, writers overwrite each other's merges)."""
    from concurrent.futures import ThreadPoolExecutor

    home.offline_dir.mkdir(parents=True)
    recent_items_table(HAND, n=50).to_parquet(home.offline_dir / USER_RECENT_ITEMS_FILE)
    server = redis_server.ensure(home)
    apply_definitions(open_store(home, server.url), home)
    base_us = 1_700_000_000 * 1_000_000
    writers, per_writer = 32, 20

    def writer(w: int) -> float:
        online = OnlineFeatures(server.client(), home.feast_project, recent_items=1000,
                                lock_wait_s=120)
        started = time.perf_counter()
        for k in range(per_writer):
            # Interleaved times: writer w's k-th event is the (k*32 + w)-th overall.
            online.append("carol", [f"w{w}-e{k}"], [base_us + (k * writers + w) * 1000])
        return time.perf_counter() - started

    with ThreadPoolExecutor(max_workers=writers) as pool:
        seconds = list(pool.map(writer, range(writers)))
    print(f"32 x 20 concurrent appends: slowest writer {max(seconds):.1f} s")
    online = OnlineFeatures(server.client(), home.feast_project, recent_items=1000)
    items = online.recent("carol")
    assert len(items) == writers * per_writer == 640
    assert items == [f"w{i % writers}-e{i // writers}" for i in range(640)]


def redis_dump(server) -> dict:
    """Every key's content: a hash as its fields and values with its TTL (a hash
    too large for a listpack is a hashtable, whose field order, and so its DUMP,
    depends on the server's random hash seed), any other key as its DUMP."""
    client = server.client()
    return {key: (client.hgetall(key), client.ttl(key) > 0) if client.type(key) == b"hash"
            else client.dump(key)
            for key in sorted(client.keys("*")) if not key.startswith(b"recsys:lock")}


def all_view_tables(events: pd.DataFrame, items: pd.DataFrame) -> dict:
    """Each view's offline table (a hand-made item_content) and its join key."""
    rng = np.random.default_rng(1)
    content = pd.DataFrame({
        "item_id": items["item_id"], "event_timestamp": pd.Timestamp(0, tz="UTC"),
        "text_embedding": list(rng.normal(size=(len(items), 8)).astype(np.float32)),
        "genres": [[g for g in gs.split("|") if g] for gs in items["genres"]]})
    return {USER_RECENT_ITEMS: (recent_items_table(events, n=50), USER_RECENT_ITEMS_FILE,
                                "user_id"),
            USER_PROFILE: (user_profile_table(events, items), USER_PROFILE_FILE, "user_id"),
            ITEM_POPULARITY: (item_popularity_table(events), ITEM_POPULARITY_FILE, "item_id"),
            ITEM_CONTENT: (content, ITEM_CONTENT_FILE, "item_id")}


def store_with_tables(settings: Settings, tables: dict):
    """``settings``'s embedded Redis and a Feast store over ``tables``
    (``all_view_tables``) written as its offline files, definitions applied."""
    settings.offline_dir.mkdir(parents=True)
    server = redis_server.ensure(settings)
    store = open_store(settings, server.url)
    for table, file, _ in tables.values():
        table.to_parquet(settings.offline_dir / file)
    apply_definitions(store, settings)
    return server, store


def edge_case_data() -> tuple[pd.DataFrame, pd.DataFrame]:
    """Generated events and items plus a user with no rating whose one item has no
    genre (nulls and empty lists in the feature rows)."""
    from orchestration.sources.generator import GeneratorConfig, generate

    data = generate(GeneratorConfig(users=30, items=25, events=300, seed=3))
    items = pd.concat([data.items, pd.DataFrame({"item_id": ["zz"], "title": ["Z"],
                                                 "genres": [""], "description": [""]})])
    events = pd.concat([data.events, pd.DataFrame({
        "user_id": ["plain"], "item_id": ["zz"], "event_type": ["view"],
        "timestamp": [int(data.events["timestamp"].max())], "rating": [""]})])
    events = events.assign(
        event_timestamp=pd.to_datetime(events.pop("timestamp"), unit="s", utc=True),
        rating=pd.to_numeric(events["rating"], errors="coerce"),
    ).sort_values("event_timestamp", kind="stable").reset_index(drop=True)
    return events, items


def test_materialize_view_writes_what_feast_materialize_writes(home: Settings, tmp_path):
    """Our range materialisation and Feast's own leave byte-identical Redis hashes,
    for every view: lists, scalars, nulls (a user with no rating), empty lists (a
    user whose one item has no genre), an item view without TTL."""
    events, items = edge_case_data()
    tables = all_view_tables(events, items)
    # The reference: Feast's own materialize, reading its default file offline store.
    other = Settings(home=tmp_path / "feast_materialize", feast_offline_store='{"type": "file"}')
    try:
        dumps = []
        for settings, ours in ((home, True), (other, False)):
            server, store = store_with_tables(settings, tables)
            for view, (table, file, key) in tables.items():
                start = table["event_timestamp"].min().to_pydatetime()
                end = (table["event_timestamp"].max() + pd.Timedelta(seconds=1)).to_pydatetime()
                if ours:
                    stats = materialize_view(store, view, settings.offline_dir / file, key,
                                             start, end)
                    assert (stats.rows_in_range, stats.entities_written) == (
                        len(table), table[key].nunique())
                else:
                    store.materialize(start_date=start, end_date=end, feature_views=[view])
            dumps.append(redis_dump(server))
        users, item_count = events["user_id"].nunique(), len(items)
        assert len(dumps[0]) == users + item_count
        assert dumps[0] == dumps[1]
    finally:
        redis_server.stop(other)


HAND_ITEMS = pd.DataFrame({"item_id": ["a", "b", "c", "d", "x"],
                           "genres": ["Drama", "Drama|War", "Comedy", "War", "Comedy"]})


def write_user_tables(settings: Settings, events: pd.DataFrame) -> None:
    events = events.assign(rating=float("nan"))
    recent_items_table(events, n=50).to_parquet(settings.offline_dir / USER_RECENT_ITEMS_FILE)
    user_profile_table(events, HAND_ITEMS).to_parquet(settings.offline_dir / USER_PROFILE_FILE)


def test_materialisation_is_incremental_and_idempotent(home: Settings):
    from dagster import materialize

    from orchestration.assets.features import online_user_features
    from orchestration.resources import resources_from_settings

    home.offline_dir.mkdir(parents=True)
    server = redis_server.ensure(home)
    store = open_store(home, server.url)
    resources = resources_from_settings(home)

    def run(full_refresh=False):
        result = materialize([online_user_features], resources=resources, run_config={"ops": {
            "online_user_features": {"config": {"full_refresh": full_refresh}}}})
        (event,) = result.get_asset_materialization_events()
        metadata = event.step_materialization_data.materialization.metadata
        return {view: metadata[view].value for view in (USER_RECENT_ITEMS, USER_PROFILE)}

    write_user_tables(home, HAND.iloc[:4])
    apply_definitions(store, home)
    first = run()
    assert [(m["rows_in_range"], m["entities_written"]) for m in first.values()] == [(4, 2)] * 2
    write_user_tables(home, HAND)  # alice's "d" arrives
    second = run()
    assert [(m["rows_in_range"], m["entities_written"]) for m in second.values()] == [(1, 1)] * 2
    assert second[USER_PROFILE]["start"] == first[USER_PROFILE]["end"]
    online = OnlineFeatures(server.client(), home.feast_project, recent_items=50)
    assert online.recent("alice") == ["a", "b", "c", "d"] and online.recent("bob") == ["x"]
    profile = store.get_online_features(
        features=["user_profile:event_count", "user_profile:top_genres"],
        entity_rows=[{"user_id": "alice"}]).to_dict()
    assert profile["event_count"] == [4] and profile["top_genres"] == [["Drama", "War", "Comedy"]]
    before = redis_dump(server)
    assert [m["entities_written"] for m in run().values()] == [0, 0]  # nothing new
    again = run(full_refresh=True)
    assert [(m["rows_in_range"], m["entities_written"]) for m in again.values()] == [(5, 2)] * 2
    assert redis_dump(server) == before


def test_profile_and_popularity_are_point_in_time(home: Settings):
    """Three instants for alice and for item "b": each answer counts only earlier events."""
    home.offline_dir.mkdir(parents=True)
    events = HAND.assign(rating=[4.0, None, 2.0, None, 5.0])
    write_user_tables(home, HAND)
    user_profile_table(events, HAND_ITEMS).to_parquet(home.offline_dir / USER_PROFILE_FILE)
    item_popularity_table(events).to_parquet(home.offline_dir / ITEM_POPULARITY_FILE)
    store = open_store(home, redis_server.ensure(home).url)
    apply_definitions(store, home)
    t = feature_times(HAND)
    micro = pd.Timedelta(microseconds=1)
    when = [t.iloc[2] - micro, t.iloc[3], t.iloc[4] + pd.Timedelta(days=2)]
    users = store.get_historical_features(
        entity_df=pd.DataFrame({"user_id": ["alice"] * 3, "event_timestamp": when}),
        features=["user_profile:event_count", "user_profile:mean_rating",
                  "user_profile:top_genres"]).to_df().sort_values("event_timestamp")
    assert users["event_count"].tolist() == [1, 3, 4]
    assert users["mean_rating"].tolist() == pytest.approx([4.0, 3.0, 11 / 3])  # a=4, b=2, d=5
    assert users["top_genres"].map(list).tolist() == [
        ["Drama"], ["Drama", "Comedy", "War"], ["Drama", "War", "Comedy"]]
    items = store.get_historical_features(
        entity_df=pd.DataFrame({"item_id": ["a", "a", "a"],
                                "event_timestamp": [t.iloc[0] - micro, t.iloc[0],
                                                    t.iloc[0] + pd.Timedelta(days=3)]}),
        features=["item_popularity:count_1d", "item_popularity:count_30d"],
    ).to_df().sort_values("event_timestamp")
    # Before a's only event: no row; at it: 1 and 1; three days later the row
    # still says what was true at that event (the counts are as of event time).
    assert items["count_30d"].isna().tolist() == [True, False, False]  # before any event
    assert items["count_30d"].tolist()[1:] == [1, 1] and items["count_1d"].tolist()[1:] == [1, 1]


def test_thin_reader_returns_exactly_what_get_online_features_returns(home: Settings):
    from feature_repo.online_rows import RecentItemsRows

    home.offline_dir.mkdir(parents=True)
    path = home.offline_dir / USER_RECENT_ITEMS_FILE
    recent_items_table(HAND, n=50).to_parquet(path)
    server = redis_server.ensure(home)
    store = open_store(home, server.url)
    apply_definitions(store, home)
    times = pd.read_parquet(path)["event_timestamp"]
    materialize_view(store, USER_RECENT_ITEMS, path, "user_id", times.min().to_pydatetime(),
                     (times.max() + pd.Timedelta(seconds=1)).to_pydatetime())
    OnlineFeatures(server.client(), home.feast_project, 50).append(
        "bob", ["y"], [1_700_000_000_000_000])
    reader = RecentItemsRows(server.client(), home.feast_project)
    users = ["alice", "bob", "nobody"]
    expected = store.get_online_features(
        features=store.get_feature_service(BEHAVIOUR_ENCODER_SERVICE),
        entity_rows=[{"user_id": u} for u in users]).to_dict(include_event_timestamps=True)
    for k, user in enumerate(users):
        row = reader.read(user)
        assert row.item_ids == list(expected["recent_item_ids"][k] or [])
        assert row.timestamps_us == list(expected["recent_timestamps"][k] or [])
        assert row.row_seconds == (expected["recent_item_ids__ts"][k] or 0)
    assert reader.read("bob").item_ids == ["x", "y"] and reader.read("nobody").item_ids == []


def test_item_embedding_reader_returns_what_get_online_features_returns(home: Settings):
    from feature_repo.data_sources import ITEM_CONTENT_FILE
    from feature_repo.feature_views import ITEM_CONTENT

    home.offline_dir.mkdir(parents=True)
    path = home.offline_dir / ITEM_CONTENT_FILE
    stamp = pd.Timestamp("2020-01-01", tz="UTC")
    pd.DataFrame({"item_id": ["a", "b"], "event_timestamp": [stamp, stamp],
                  "text_embedding": [[0.25, -1.5, 3.0], [1e-3, 0.0, 2.0]],
                  "genres": [["Drama"], []]}).to_parquet(path)
    server = redis_server.ensure(home)
    store = open_store(home, server.url)
    apply_definitions(store, home)
    materialize_view(store, ITEM_CONTENT, path, "item_id", stamp.to_pydatetime(),
                     (stamp + pd.Timedelta(seconds=1)).to_pydatetime())
    items = ["a", "b", "missing"]
    expected = store.get_online_features(
        features=[f"{ITEM_CONTENT}:text_embedding"],
        entity_rows=[{"item_id": i} for i in items]).to_dict()["text_embedding"]
    online = OnlineFeatures(server.client(), home.feast_project, 50)
    assert online.embeddings.read(items) == expected
    assert expected[2] is None and expected[0] == pytest.approx([0.25, -1.5, 3.0])
    assert set(online.item_embeddings(items)) == {"a", "b"}


def test_thin_write_leaves_exactly_the_hash_push_leaves(home: Settings):
    """The service's writer and Feast's push, for the same row: the same fields and
    bytes in Redis, and get_online_features reads the row back."""
    from feast.data_source import PushMode

    from feature_repo.data_sources import USER_RECENT_ITEMS_PUSH
    from feature_repo.online_rows import RecentItemsRows

    server = redis_server.ensure(home)
    store = open_store(home, server.url)
    apply_definitions(store, home)
    client = server.client()
    rows = RecentItemsRows(client, home.feast_project)
    items, times, row_time = ["p", "q"], [1_700_000_000_000_001, 1_700_000_000_250_000], (
        1_700_000_001_123_456)
    store.push(USER_RECENT_ITEMS_PUSH, pd.DataFrame({
        "user_id": ["by-push"], "event_timestamp": [pd.Timestamp(row_time, unit="us", tz="UTC")],
        "recent_item_ids": [items], "recent_timestamps": [times]}), to=PushMode.ONLINE)
    rows.write("by-writer", items, times, row_time)
    pushed = client.hgetall(rows.key("by-push"))
    assert len(pushed) == 3
    assert client.hgetall(rows.key("by-writer")) == pushed
    read = store.get_online_features(
        features=store.get_feature_service(BEHAVIOUR_ENCODER_SERVICE),
        entity_rows=[{"user_id": "by-writer"}]).to_dict(include_event_timestamps=True)
    assert read["recent_item_ids"] == [items] and read["recent_timestamps"] == [times]
    assert read["recent_item_ids__ts"] == [row_time // 1_000_000]
