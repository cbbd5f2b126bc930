"""The scale generator: the built-in generator's structure, drawn a chunk of users
at a time with memory that does not grow with the number of users."""

import tracemalloc

import numpy as np
import pandas as pd
import pytest

from orchestration.sources.detect import detect_source
from orchestration.sources.scale_generator import ScaleConfig, write_scale_set

SMALL = ScaleConfig(users=3000, items=2000, events=40_000, chunk_users=700, seed=3)


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    directory = tmp_path_factory.mktemp("scale")
    counts = write_scale_set(SMALL, directory)
    return directory, counts, pd.read_csv(directory / "events.csv"), \
        pd.read_csv(directory / "items.csv")


def test_deterministic_canonical_files_of_the_requested_size(written, tmp_path):
    directory, counts, events, items = written
    write_scale_set(SMALL, tmp_path)
    assert (tmp_path / "events.csv").read_bytes() == (directory / "events.csv").read_bytes()
    assert counts == {"items": 2000, "users": 3000, "events": len(events)}
    # the spare steps make up for the seen items dropped; ceil rounds each user up
    assert 40_000 <= len(events) <= 40_000 + 3000
    assert events["user_id"].nunique() == 3000 and len(items) == 2000
    assert not events.duplicated(["user_id", "item_id"]).any()
    assert set(events["item_id"]) <= set(items["item_id"])
    ratings = events.loc[events["event_type"] == "rating", "rating"]
    assert ratings.between(1, 5).all() and events.loc[
        events["event_type"] != "rating", "rating"].isna().all()
    assert detect_source(directory).name == "canonical"  # read as any canonical source is


def test_series_are_followed_in_order_and_popularity_is_skewed(written):
    _, _, events, items = written
    part = items["title"].str.extract(r"Part (\d+)$")[0].astype(float).to_numpy()
    ids = items["item_id"].to_numpy()
    next_of = {ids[i]: ids[i + 1] for i in range(len(ids) - 1) if part[i + 1] == part[i] + 1}
    assert len(next_of) > 200
    ordered = events.sort_values(["user_id", "timestamp"], kind="stable")
    following = ordered.groupby("user_id")["item_id"].shift(-1)
    wanted = ordered["item_id"].map(next_of)
    has_next = wanted.notna() & following.notna()
    # after a part with a next one, that next part comes next most of the time
    assert (following[has_next] == wanted[has_next]).mean() > 0.5
    counts = events["item_id"].value_counts()
    assert counts.iloc[: len(items) // 10].sum() / counts.sum() > 0.3


def test_tastes_are_a_few_genres_and_drift(written):
    _, _, events, items = written
    genre = dict(zip(items["item_id"], items["genres"].str.split("|").str[0], strict=True))
    events = events.assign(genre=events["item_id"].map(genre))
    events = events.sort_values(["user_id", "timestamp"], kind="stable")
    heavy = events.groupby("user_id").filter(lambda g: len(g) >= 20)
    first = heavy.groupby("user_id").head(8)
    top3 = first.groupby("user_id")["genre"].agg(
        lambda g: g.value_counts().iloc[:3].sum() / len(g))
    assert top3.mean() > 0.9  # early events: mostly the user's three genres
    early = heavy.groupby("user_id").head(8).groupby("user_id")["genre"].agg(set)
    late = heavy.groupby("user_id").tail(8).groupby("user_id")["genre"].agg(set)
    overlap = np.mean([len(early[u] & late[u]) / len(early[u] | late[u]) for u in early.index])
    assert overlap < 0.6  # tastes moved


def test_memory_does_not_grow_with_the_number_of_users(tmp_path):
    peaks = []
    for users in (2_000, 8_000):
        tracemalloc.start()
        write_scale_set(ScaleConfig(users=users, items=20_000, events=users * 20,
                                    chunk_users=1_000), tmp_path / str(users))
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    assert peaks[1] < 1.25 * peaks[0], peaks
