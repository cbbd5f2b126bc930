"""The built-in data generator: deterministic, and with learnable structure."""

import pandas as pd

from orchestration.sources.generator import GeneratorConfig, generate, write_canonical

SMALL = GeneratorConfig(users=200, items=150, events=8000, seed=3)


def test_same_seed_same_data_other_seed_other_data():
    a, b = generate(SMALL), generate(SMALL)
    pd.testing.assert_frame_equal(a.events, b.events)
    pd.testing.assert_frame_equal(a.items, b.items)
    c = generate(GeneratorConfig(users=200, items=150, events=8000, seed=4))
    assert not a.events.equals(c.events)


def test_size_and_schema():
    data = generate(SMALL)
    assert list(data.events.columns) == ["user_id", "item_id", "event_type", "timestamp", "rating"]
    assert list(data.items.columns) == ["item_id", "title", "genres", "description"]
    assert data.events["user_id"].nunique() == 200
    assert len(data.items) == 150
    assert abs(len(data.events) - 8000) < 8000 * 0.1
    assert set(data.events["event_type"]) <= {"view", "click", "rating", "add_to_cart", "purchase"}
    ratings = data.events.loc[data.events["event_type"] == "rating", "rating"]
    assert ratings.between(1, 5).all()
    assert data.events.loc[data.events["event_type"] != "rating", "rating"].isna().all()


def test_series_are_watched_in_order():
    data = generate(SMALL)
    position = {item: k for ids in data.series.values() for k, item in enumerate(ids)}
    series_of = {item: sid for sid, ids in data.series.items() for item in ids}
    in_order = out_of_order = 0
    ordered = data.events.sort_values("timestamp", kind="stable")
    for _, items in ordered.groupby("user_id")["item_id"]:
        seen_positions: dict[str, int] = {}
        for item in items:
            if item not in series_of:
                continue
            sid, k = series_of[item], position[item]
            if k > 0:
                if seen_positions.get(sid) == k - 1:
                    in_order += 1
                else:
                    out_of_order += 1
            seen_positions[sid] = k
    assert in_order > 200
    # A later part follows the previous one, except for users who exhausted the catalogue.
    assert out_of_order < 0.05 * in_order


def test_popularity_is_skewed_and_titles_come_from_genre_vocabulary():
    data = generate(SMALL)
    counts = data.events["item_id"].value_counts()
    top_tenth = counts.iloc[: len(counts) // 10].sum() / counts.sum()
    assert top_tenth > 0.2  # the top 10% of items take over twice their share of events
    assert data.items["title"].str.contains("Part 2").any()
    assert (data.items["genres"].str.len() > 0).all()
    assert (data.items["description"].str.len() > 20).all()


def test_write_canonical_round_trip(tmp_path):
    data = generate(SMALL)
    paths = write_canonical(data, tmp_path)
    assert [p.name for p in paths] == ["events.csv", "items.csv"]
    back = pd.read_csv(tmp_path / "events.csv")
    assert len(back) == len(data.events)
    assert back["timestamp"].tolist() == data.events["timestamp"].tolist()
