"""The ``user_recent_items`` feature, computed the same way in batch (from the
validated events) and in real time (merging new events into the online value).

Feature time is the event time; events of one user in the same microsecond are
spread by their arrival order (one microsecond apart), so that point-in-time
reads reproduce the evaluation protocol's stable (timestamp, row order) order.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from feature_repo.tables import CHUNK_ROWS, gather, write_blocks
from infra.engine import Embedded, Ray


def feature_times(events: pd.DataFrame) -> pd.Series:
    """Event time (UTC) plus the rank among the user's events at that same instant, in us."""
    tie_rank = events.groupby(["user_id", "event_timestamp"], sort=False).cumcount()
    return events["event_timestamp"] + pd.to_timedelta(tie_rank, unit="us")


def recent_items_schema(timestamp: pa.DataType) -> pa.Schema:
    return pa.schema([("user_id", pa.string()), ("event_timestamp", timestamp),
                      ("recent_item_ids", pa.list_(pa.string())),
                      ("recent_timestamps", pa.list_(pa.int64()))])


def recent_items_chunks(events: pd.DataFrame, n: int,
                        chunk_rows: int = CHUNK_ROWS) -> tuple[pa.Schema, Iterator[pa.Table]]:
    """``recent_items_table``'s schema and rows, as Arrow tables of at most
    ``chunk_rows`` rows in its order. Each row's lists are a slice of its
    user's items in time order, gathered by index: no Python object is made per
    item, and memory grows with the chunk, not with the events times ``n``."""
    return _recent_schema(events), _recent_chunks(events, feature_times(events), n, chunk_rows)


def _recent_chunks(events: pd.DataFrame, stamps: pd.Series, n: int,
                   chunk_rows: int) -> Iterator[pa.Table]:
    micros = (stamps.astype("int64") // 1000).to_numpy()  # ns -> us
    users = events["user_id"].to_numpy()
    codes, _ = pd.factorize(users)
    grouped = np.argsort(codes, kind="stable")  # each user's events together, in time order
    first = np.r_[True, codes[grouped][1:] != codes[grouped][:-1]]
    block_start = np.maximum.accumulate(np.where(first, np.arange(len(grouped)), 0))
    position = np.empty(len(grouped), dtype=np.int64)
    position[grouped] = np.arange(len(grouped))  # event -> its place in ``grouped``
    end = position + 1
    begin = np.maximum(block_start[position], end - n)
    item_codes, item_names = pd.factorize(events["item_id"].to_numpy())
    names = pa.array(np.asarray(item_names, dtype=object), pa.string())
    item_codes, micros = item_codes[grouped], micros[grouped]
    order = pd.DataFrame({"t": stamps.to_numpy(), "u": users}).sort_values(
        ["t", "u"], kind="stable").index.to_numpy()
    for at in range(0, len(order), chunk_rows):
        rows = order[at:at + chunk_rows]
        lo, lengths = begin[rows], end[rows] - begin[rows]
        offsets = np.r_[0, np.cumsum(lengths)]
        flat = np.arange(offsets[-1]) - np.repeat(offsets[:-1] - lo, lengths)
        offsets = pa.array(offsets, pa.int32())
        yield pa.table({
            "user_id": pa.array(users[rows], pa.string()),
            "event_timestamp": pa.Array.from_pandas(stamps.iloc[rows]),
            "recent_item_ids": pa.ListArray.from_arrays(offsets, names.take(item_codes[flat])),
            "recent_timestamps": pa.ListArray.from_arrays(offsets, pa.array(micros[flat])),
        })


def _recent_schema(events: pd.DataFrame) -> pa.Schema:
    return recent_items_schema(pa.Array.from_pandas(feature_times(events.iloc[:0])).type)


def recent_items_block(events: pd.DataFrame, n: int) -> pa.Table:
    """``recent_items_table`` of a block of whole users' events, as one table."""
    schema, chunks = recent_items_chunks(events, n)
    return pa.concat_tables([schema.empty_table(), *chunks])


def write_recent_items(events: pd.DataFrame, n: int, path: Path,
                       engine: Embedded | Ray | None = None) -> int:
    """``recent_items_table`` into the parquet file at ``path``, computed in blocks
    of whole users on ``engine`` (``tables.write_blocks``); the rows written."""
    return write_blocks(_recent_schema(events), recent_items_block, events, "user_id", path,
                        engine, shared=(n,))


def recent_items_table(events: pd.DataFrame, n: int) -> pd.DataFrame:
    """One row per event: the user's last ``n`` items (and times) after that event,
    in (feature time, user) order.

    ``events`` must be in stable time order (as ``validated_events`` is).
    """
    return gather(*recent_items_chunks(events, n))


def merge_recent(item_ids: list[str], timestamps: list[int], new_items: list[str],
                 new_timestamps: list[int], n: int) -> tuple[list[str], list[int]]:
    """Merge new events into a recent list, keep time order (stable), keep the last ``n``."""
    pairs = zip(list(timestamps) + list(new_timestamps), list(item_ids) + list(new_items),
                strict=True)
    # (time, arrival) keys: events at the same time keep their arrival order.
    merged = sorted((t, k, item) for k, (t, item) in enumerate(pairs))[-n:]
    return [m[2] for m in merged], [int(m[0]) for m in merged]
