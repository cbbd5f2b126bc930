"""The ``user_recent_items`` feature, computed the same way in batch (from the
validated events) and in real time (merging new events into the online value).

Feature time is the event time; events of one user in the same microsecond are
spread by their arrival order (one microsecond apart), so that point-in-time
reads reproduce the evaluation protocol's stable (timestamp, row order) order.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def feature_times(events: pd.DataFrame) -> pd.Series:
    """Event time (UTC) plus the rank among the user's events at that same instant, in us."""
    tie_rank = events.groupby(["user_id", "event_timestamp"], sort=False).cumcount()
    return events["event_timestamp"] + pd.to_timedelta(tie_rank, unit="us")


def recent_items_table(events: pd.DataFrame, n: int) -> pd.DataFrame:
    """One row per event: the user's last ``n`` items (and times) after that event.

    ``events`` must be in stable time order (as ``validated_events`` is).
    """
    events = events.assign(feature_time=feature_times(events))
    all_items = events["item_id"].to_numpy()
    all_micros = (events["feature_time"].astype("int64") // 1000).to_numpy()  # ns -> us
    all_stamps = events["feature_time"].to_numpy()
    users, item_lists, time_lists, stamps = [], [], [], []
    for user_id, index in events.groupby("user_id", sort=False).indices.items():
        index = np.sort(index)
        items = all_items[index].tolist()
        times = all_micros[index].tolist()
        for k in range(len(index)):
            lo = max(0, k + 1 - n)
            item_lists.append(items[lo:k + 1])
            time_lists.append(times[lo:k + 1])
        users.extend([user_id] * len(index))
        stamps.append(all_stamps[index])
    table = pd.DataFrame({
        "user_id": users,
        "event_timestamp": pd.to_datetime(np.concatenate(stamps), utc=True) if stamps else [],
        "recent_item_ids": item_lists,
        "recent_timestamps": time_lists,
    })
    return table.sort_values(["event_timestamp", "user_id"], kind="stable").reset_index(drop=True)


def merge_recent(item_ids: list[str], timestamps: list[int], new_items: list[str],
                 new_timestamps: list[int], n: int) -> tuple[list[str], list[int]]:
    """Merge new events into a recent list, keep time order (stable), keep the last ``n``."""
    pairs = zip(list(timestamps) + list(new_timestamps), list(item_ids) + list(new_items),
                strict=True)
    # (time, arrival) keys: events at the same time keep their arrival order.
    merged = sorted((t, k, item) for k, (t, item) in enumerate(pairs))[-n:]
    return [m[2] for m in merged], [int(m[0]) for m in merged]
