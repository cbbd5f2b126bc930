"""Batch features beside ``user_recent_items``, one row per event, each value as
of just after that event (feature time = ``feature_times``, as for recent items):

- ``user_profile``: the user's event count, last event time, mean rating so far
  (NaN before any rating), and genre affinity (the top genres of the items seen
  so far and their shares);
- ``item_popularity``: the item's event counts in the trailing 1, 7 and 30 days.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from feature_repo.recent_items import feature_times
from feature_repo.schema import GENRE_SEPARATOR

POPULARITY_WINDOWS_DAYS = (1, 7, 30)
TOP_GENRES = 3


def _micros(times: pd.Series) -> np.ndarray:
    return times.astype("datetime64[us, UTC]").astype("int64").to_numpy()


def user_profile_table(events: pd.DataFrame, items: pd.DataFrame) -> pd.DataFrame:
    """``events`` in stable time order (validated events); ``items`` the catalogue."""
    events = events.reset_index(drop=True)
    stamps = feature_times(events)
    by_user = events.groupby("user_id", sort=False)
    rated = events["rating"].notna()
    rating_sum = events["rating"].fillna(0.0).groupby(events["user_id"], sort=False).cumsum()
    rating_n = rated.astype(int).groupby(events["user_id"], sort=False).cumsum()
    # Genre affinity: cumulative genre counts per user over a one-hot item x genre matrix.
    genres_of = items.set_index("item_id")["genres"].fillna("").str.split(GENRE_SEPARATOR)
    vocabulary = sorted({g for gs in genres_of for g in gs if g})
    column = {g: k for k, g in enumerate(vocabulary)}
    item_row = {item: k for k, item in enumerate(genres_of.index)}
    one_hot = np.zeros((len(genres_of) + 1, max(1, len(vocabulary))), dtype=np.float32)
    for item, gs in genres_of.items():
        for g in gs:
            if g:
                one_hot[item_row[item], column[g]] = 1.0
    rows = events["item_id"].map(item_row).fillna(len(genres_of)).astype(int).to_numpy()
    counts = pd.DataFrame(one_hot[rows]).groupby(events["user_id"].to_numpy(),
                                                   sort=False).cumsum().to_numpy()
    totals = counts.sum(axis=1, keepdims=True)
    order = np.argsort(-counts, axis=1, kind="stable")[:, :TOP_GENRES]
    top_names, top_shares = [], []
    for r in range(len(events)):
        picked = [c for c in order[r] if counts[r, c] > 0]
        top_names.append([vocabulary[c] for c in picked])
        top_shares.append([round(float(counts[r, c] / totals[r, 0]), 4) for c in picked])
    return pd.DataFrame({
        "user_id": events["user_id"],
        "event_timestamp": stamps,
        "event_count": by_user.cumcount().to_numpy() + 1,
        "last_event_us": _micros(events["event_timestamp"]),
        "mean_rating": np.where(rating_n > 0, rating_sum / rating_n.clip(lower=1), np.nan),
        "top_genres": top_names,
        "top_genre_shares": top_shares,
    })


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
