"""Batch features beside ``user_recent_items``, one row per event, each value as
of just after that event (feature time = ``feature_times``, as for recent items):

- ``user_profile``: the user's event count, last event time, mean rating so far
  (NaN before any rating), and genre affinity (the top genres of the items seen
  so far and their shares);
- ``item_popularity``: the item's event counts in the trailing 1, 7 and 30 days.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from feature_repo.recent_items import feature_times
from feature_repo.schema import GENRE_SEPARATOR
from feature_repo.tables import CHUNK_ROWS, gather, write_blocks
from infra.engine import Embedded, Ray

POPULARITY_WINDOWS_DAYS = (1, 7, 30)
TOP_GENRES = 3


def _micros(times: pd.Series) -> np.ndarray:
    return times.astype("datetime64[us, UTC]").astype("int64").to_numpy()


def user_profile_schema(timestamp: pa.DataType) -> pa.Schema:
    return pa.schema([("user_id", pa.string()), ("event_timestamp", timestamp),
                      ("event_count", pa.int64()), ("last_event_us", pa.int64()),
                      ("mean_rating", pa.float64()),
                      ("top_genres", pa.list_(pa.string())),
                      ("top_genre_shares", pa.list_(pa.float64()))])


@dataclass(frozen=True)
class Genres:
    """The catalogue's genres: the vocabulary (sorted) and a one-hot item x genre
    matrix whose last row, no genre, stands for an item not in the catalogue."""

    vocabulary: list[str]
    one_hot: np.ndarray  # (items + 1, max(1, genres)) int32
    item_row: dict[str, int]

    @classmethod
    def of(cls, items: pd.DataFrame) -> Genres:
        genres_of = items.set_index("item_id")["genres"].fillna("").str.split(GENRE_SEPARATOR)
        vocabulary = sorted({g for gs in genres_of for g in gs if g})
        column = {g: k for k, g in enumerate(vocabulary)}
        item_row = {item: k for k, item in enumerate(genres_of.index)}
        one_hot = np.zeros((len(genres_of) + 1, max(1, len(vocabulary))), dtype=np.int32)
        for item, gs in genres_of.items():
            for g in gs:
                if g:
                    one_hot[item_row[item], column[g]] = 1
        return cls(vocabulary, one_hot, item_row)

    def rows(self, item_ids: pd.Series) -> np.ndarray:
        """Each item's row of ``one_hot``."""
        return item_ids.map(self.item_row).fillna(len(self.one_hot) - 1).astype(int).to_numpy()


def user_profile_chunks(events: pd.DataFrame, items: pd.DataFrame,
                        chunk_rows: int = CHUNK_ROWS) -> tuple[pa.Schema, Iterator[pa.Table]]:
    """``user_profile_table``'s schema and rows as Arrow tables of at most
    ``chunk_rows`` rows, in the events' order. ``events`` in stable time order
    (validated events); ``items`` the catalogue."""
    genres = Genres.of(items)
    return _profile_schema(events), _profile_chunks(
        events.reset_index(drop=True), genres.rows(events["item_id"]), genres, chunk_rows)


def _profile_schema(events: pd.DataFrame) -> pa.Schema:
    return user_profile_schema(pa.Array.from_pandas(feature_times(events.iloc[:0])).type)


def user_profile_block(events: pd.DataFrame, genres: Genres) -> pa.Table:
    """The profile rows of a block of whole users' ``events``, in their order, as
    one table."""
    return pa.concat_tables([_profile_schema(events).empty_table(), *_profile_chunks(
        events.reset_index(drop=True), genres.rows(events["item_id"]), genres, CHUNK_ROWS)])


def write_user_profile(events: pd.DataFrame, items: pd.DataFrame, path: Path,
                       engine: Embedded | Ray | None = None) -> int:
    """``user_profile_table`` into the parquet file at ``path``, computed in blocks
    of whole users on ``engine`` (``tables.write_blocks``); the rows written."""
    return write_blocks(_profile_schema(events), user_profile_block, events, "user_id", path,
                        engine, shared=(Genres.of(items),))


def _top_genres(users: np.ndarray, rows: np.ndarray, one_hot: np.ndarray, block: int,
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Genre affinity after each event (its user, its item's row of the one-hot
    item x genre matrix): its top genres (columns of the vocabulary, by count,
    ties by name), their counts and the event's genre total. Cumulative counts
    per user are worked out ``block`` events of whole users at a time."""
    codes, _ = pd.factorize(users)
    grouped = np.argsort(codes, kind="stable")  # each user's events together, in time order
    starts = np.flatnonzero(np.r_[True, codes[grouped][1:] != codes[grouped][:-1]])
    width = min(TOP_GENRES, one_hot.shape[1])
    top = np.zeros((len(users), width), dtype=np.int16)
    top_counts = np.zeros((len(users), width), dtype=np.int32)
    totals = np.zeros(len(users), dtype=np.int64)
    # cut at the first user start after every ``block`` events
    after = np.searchsorted(starts, np.arange(block, len(grouped), block))
    cuts = np.unique(np.r_[0, np.where(after < len(starts),
                                       starts[np.minimum(after, len(starts) - 1)],
                                       len(grouped)), len(grouped)])
    for at, stop in zip(cuts[:-1], cuts[1:], strict=True):
        part = grouped[at:stop]
        counts = np.cumsum(one_hot[rows[part]], axis=0)
        first = starts[(starts >= at) & (starts < stop)] - at
        before = np.zeros((len(first), counts.shape[1]), dtype=counts.dtype)
        before[1:] = counts[first[1:] - 1]
        counts -= np.repeat(before, np.diff(np.r_[first, len(part)]), axis=0)
        order = np.argsort(-counts, axis=1, kind="stable")[:, :width]
        top[part] = order
        top_counts[part] = np.take_along_axis(counts, order, axis=1)
        totals[part] = counts.sum(axis=1)
    return top, top_counts, totals


def _profile_chunks(events: pd.DataFrame, rows: np.ndarray, genres: Genres,
                    chunk_rows: int) -> Iterator[pa.Table]:
    stamps = feature_times(events)
    by_user = events.groupby("user_id", sort=False)
    rated = events["rating"].notna()
    rating_sum = events["rating"].fillna(0.0).groupby(events["user_id"], sort=False).cumsum()
    rating_n = rated.astype(int).groupby(events["user_id"], sort=False).cumsum()
    mean_rating = np.where(rating_n > 0, rating_sum / rating_n.clip(lower=1), np.nan)
    event_count = by_user.cumcount().to_numpy() + 1
    last_event_us = _micros(events["event_timestamp"])
    users = events["user_id"].to_numpy()
    top, top_counts, totals = _top_genres(users, rows, genres.one_hot, 4 * chunk_rows)
    names = pa.array(genres.vocabulary or [""], pa.string())
    for at in range(0, len(events), chunk_rows):
        part = slice(at, at + chunk_rows)
        counts = top_counts[part]
        kept = counts > 0  # positive counts come first: a prefix of each row
        offsets = pa.array(np.r_[0, np.cumsum(kept.sum(axis=1))], pa.int32())
        # the share as a float32 quotient, rounded to 4 decimals
        shares = np.round((counts.astype(np.float32) / totals[part, None].astype(np.float32)
                           ).astype(np.float64), 4)
        yield pa.table({
            "user_id": pa.array(users[part], pa.string()),
            "event_timestamp": pa.Array.from_pandas(stamps.iloc[part]),
            "event_count": pa.array(event_count[part], pa.int64()),
            "last_event_us": pa.array(last_event_us[part], pa.int64()),
            "mean_rating": pa.array(mean_rating[part], pa.float64(), from_pandas=True),
            "top_genres": pa.ListArray.from_arrays(
                offsets, names.take(top[part][kept].astype(np.int64))),
            "top_genre_shares": pa.ListArray.from_arrays(offsets, pa.array(shares[kept])),
        })


def user_profile_table(events: pd.DataFrame, items: pd.DataFrame) -> pd.DataFrame:
    """``events`` in stable time order (validated events); ``items`` the catalogue."""
    return gather(*user_profile_chunks(events, items))


def item_popularity_table(events: pd.DataFrame) -> pd.DataFrame:
    """One row per event: the item's event counts in the trailing windows ending at it
    (the event itself included)."""
    events = events.reset_index(drop=True)
    stamps = feature_times(events)
    micros = _micros(stamps)
    out = {f"count_{d}d": np.zeros(len(events), dtype=np.int64) for d in POPULARITY_WINDOWS_DAYS}
    for _, index in events.groupby("item_id", sort=False).indices.items():
        index = index[np.argsort(micros[index], kind="stable")]
        times = micros[index]
        position = np.arange(len(index))
        for days in POPULARITY_WINDOWS_DAYS:
            first = np.searchsorted(times, times - days * 86_400_000_000, side="right")
            out[f"count_{days}d"][index] = position - first + 1
    return pd.DataFrame({"item_id": events["item_id"], "event_timestamp": stamps, **out})


def item_popularity_schema(timestamp: pa.DataType) -> pa.Schema:
    return pa.schema([("item_id", pa.string()), ("event_timestamp", timestamp),
                      *((f"count_{d}d", pa.int64()) for d in POPULARITY_WINDOWS_DAYS)])


def item_popularity_block(events: pd.DataFrame) -> pa.Table:
    """``item_popularity_table`` of a block of whole items' events, as one table."""
    table = item_popularity_table(events)
    schema = item_popularity_schema(pa.Array.from_pandas(table["event_timestamp"]).type)
    return pa.Table.from_pandas(table, schema=schema, preserve_index=False)


def write_item_popularity(events: pd.DataFrame, path: Path,
                          engine: Embedded | Ray | None = None) -> int:
    """``item_popularity_table`` into the parquet file at ``path``, computed in
    blocks of whole items on ``engine`` (``tables.write_blocks``); the rows written."""
    return write_blocks(item_popularity_block(events.iloc[:0]).schema, item_popularity_block,
                        events, "item_id", path, engine)
