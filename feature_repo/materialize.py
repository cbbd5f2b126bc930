"""Materialisation into the online store, for a time range.

The result is Feast's ``materialize`` for ``[start, end)``: the latest row per
entity of the view's offline table in that range, written through Feast's
``write_to_online_store`` (same Redis layout, same skip of rows not newer than
the stored one). Feast 0.67's own path reads the file offline store through
dask, which is slow (docs/experiments.md, Features); selecting the latest rows
with pyarrow and pandas leaves the Redis write as the cost.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
from feast import FeatureStore

WRITE_BATCH = 50_000  # rows per write_to_online_store call: bounds memory


@dataclass(frozen=True)
class MaterializeStats:
    view: str
    start: datetime
    end: datetime
    rows_in_range: int
    entities_written: int
    seconds: float


def latest_rows(table: pd.DataFrame, join_key: str) -> pd.DataFrame:
    """The last row per entity by ``event_timestamp`` (ties: the later row)."""
    ordered = table.sort_values("event_timestamp", kind="stable")
    return ordered.drop_duplicates(join_key, keep="last").reset_index(drop=True)


def read_range(path: Path, start: datetime, end: datetime) -> pd.DataFrame:
    """Rows of an offline parquet table with ``start <= event_timestamp < end``."""
    stamps = pd.Timestamp(start), pd.Timestamp(end)
    table = pq.read_table(path, filters=[("event_timestamp", ">=", stamps[0]),
                                         ("event_timestamp", "<", stamps[1])])
    return table.to_pandas()


def materialize_view(store: FeatureStore, view: str, path: Path, join_key: str,
                     start: datetime, end: datetime) -> MaterializeStats:
    """Write the latest row per entity in ``[start, end)`` of ``path`` to the online store."""
    started = time.perf_counter()
    rows = read_range(path, start, end)
    latest = latest_rows(rows, join_key)
    for at in range(0, len(latest), WRITE_BATCH):
        store.write_to_online_store(view, latest.iloc[at:at + WRITE_BATCH])
    return MaterializeStats(view=view, start=start, end=end, rows_in_range=len(rows),
                            entities_written=len(latest),
                            seconds=time.perf_counter() - started)
