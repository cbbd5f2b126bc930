"""Per-event feature tables as Arrow chunks: written to parquet a chunk at a
time (memory grows with the chunk, not with the events), or gathered into one
DataFrame where a caller wants it whole."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

# Output rows per Arrow table.
CHUNK_ROWS = 250_000


def write_chunks(schema: pa.Schema, chunks: Iterable[pa.Table], path: Path) -> int:
    """Every chunk into one parquet file at ``path`` (a row group each); the rows
    written. The file exists, with ``schema``, even when no chunk came."""
    rows = 0
    with pq.ParquetWriter(path, schema) as writer:
        for chunk in chunks:
            writer.write_table(chunk.cast(schema))
            rows += chunk.num_rows
    return rows


def gather(schema: pa.Schema, chunks: Iterable[pa.Table]) -> pd.DataFrame:
    """The chunks as one DataFrame (list cells as numpy arrays, as parquet reads them)."""
    return pa.concat_tables([schema.empty_table(), *(c.cast(schema) for c in chunks)]
                            ).to_pandas()
