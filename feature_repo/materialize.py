"""Materialisation into the online store, for a time range.

The result is Feast's ``materialize`` for ``[start, end)``: the latest row per
entity of the view's offline table in that range, in Feast's Redis layout
(``online_rows.write_rows``: the same hashes ``write_to_online_store`` leaves,
the same skip of rows not newer than the stored one). Feast 0.67's own path
reads the file offline store through dask, which is slow (docs/experiments.md,
Features); selecting the latest rows with pyarrow and pandas, reading only
those rows' features, and writing them without Feast's general conversion
leaves the Redis round trips as the cost.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from feast import FeatureStore

from feature_repo.online_rows import write_rows
from infra.engine import Embedded, Ray

WRITE_BATCH = 50_000  # rows per pipelined write: bounds memory


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


def latest_in_range(path: Path, join_key: str, start: datetime, end: datetime,
                    ) -> tuple[pd.DataFrame, int]:
    """``latest_rows`` of the rows of an offline parquet table with ``start <=
    event_timestamp < end``, and how many rows that range holds. Only the key
    and time columns are read whole; the chosen rows are then taken a row group
    at a time, so a table of list features much larger than memory is fine."""
    keys = pq.read_table(path, columns=[join_key, "event_timestamp"]).to_pandas()
    stamps = keys["event_timestamp"]
    in_range = keys[(stamps >= pd.Timestamp(start)) & (stamps < pd.Timestamp(end))]
    wanted = latest_rows(in_range.reset_index(names="_row"), join_key)["_row"].to_numpy()
    rows = np.sort(wanted)
    parts, offset = [], 0
    file = pq.ParquetFile(path)
    for group in range(file.num_row_groups):
        size = file.metadata.row_group(group).num_rows
        local = rows[(rows >= offset) & (rows < offset + size)] - offset
        if len(local):
            parts.append(file.read_row_group(group).take(local))
        offset += size
    if not parts:
        return file.schema_arrow.empty_table().to_pandas(), 0
    frame = pa.concat_tables(parts).to_pandas()
    return frame.iloc[np.searchsorted(rows, wanted)].reset_index(drop=True), len(in_range)


def materialize_view(store: FeatureStore, view: str, path: Path, join_key: str,
                     start: datetime, end: datetime, engine: Embedded | Ray | None = None,
                     ) -> MaterializeStats:
    """Write the latest row per entity in ``[start, end)`` of ``path`` to the online
    store: batches of ``WRITE_BATCH`` entities, each written by its own block on
    ``engine`` (default: this process); an entity is in one batch only, so the
    order the batches land in does not matter."""
    started = time.perf_counter()
    latest, in_range = latest_in_range(path, join_key, start, end)
    batches = [(str(store.repo_path), view, join_key, latest.iloc[at:at + WRITE_BATCH])
               for at in range(0, len(latest), WRITE_BATCH)]
    for _ in (engine or Embedded()).map(write_batch, batches):
        pass
    return MaterializeStats(view=view, start=start, end=end, rows_in_range=in_range,
                            entities_written=len(latest),
                            seconds=time.perf_counter() - started)


def write_batch(repo_path: str, view: str, join_key: str, rows: pd.DataFrame) -> int:
    """``write_rows`` of ``rows`` through the online store of the Feast repo at
    ``repo_path``, opened where the batch runs (one Redis node or a cluster)."""
    store = FeatureStore(repo_path=repo_path)
    client = store._get_provider().online_store._get_client(store.config.online_store)
    return write_rows(client, store.project, store.get_feature_view(view), join_key, rows,
                      store.config.online_store.key_ttl_seconds)
