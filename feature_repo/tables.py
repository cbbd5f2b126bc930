"""Per-event feature tables as Arrow chunks: written to parquet a chunk at a
time (memory grows with the chunk, not with the events), or gathered into one
DataFrame where a caller wants it whole.

A table is computed in blocks of whole entities (``entity_blocks``): every row
of a user's table depends on that user's events only (an item's, for item
popularity), so a block is computed alone, on either engine (``infra.engine``),
and the file is the blocks' rows in block order. Within a block the rows are in
the table's own order (time order, say); an entity's rows keep their relative
order whatever the cut, and that is all a point-in-time read or a
materialisation looks at."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from infra.engine import Embedded, Ray

# Output rows per Arrow table (and per parquet row group).
CHUNK_ROWS = 250_000
# Events per block of whole entities: a block's table (up to 50 item ids an
# event for recent items) is what a Ray task hands back through the object store.
BLOCK_EVENTS = 250_000


def entity_blocks(keys: np.ndarray, block_events: int | None = None) -> list[np.ndarray]:
    """The positions of the events whose entity ids are ``keys``, cut into blocks
    of whole entities of about ``block_events`` (default ``BLOCK_EVENTS``) events
    (an entity with more is not cut): the entities in the order of their first
    event, each block's positions ascending; no blocks for no events."""
    codes, _ = pd.factorize(keys)
    if not len(codes):
        return []
    sizes = np.bincount(codes)
    block_of_entity = (np.cumsum(sizes) - sizes) // (block_events or BLOCK_EVENTS)
    block = block_of_entity[codes]
    order = np.argsort(block, kind="stable")
    return np.split(order, np.flatnonzero(np.diff(block[order])) + 1)


def write_blocks(schema: pa.Schema, function: Callable[..., pa.Table], events: pd.DataFrame,
                 key: str, path: Path, engine: Embedded | Ray | None = None,
                 shared: tuple = ()) -> int:
    """``function(block, *shared)``, one Arrow table, for each block of whole
    ``key`` entities of ``events`` (``entity_blocks``) on ``engine`` (default: this
    process), written into one parquet file at ``path`` in block order; the rows
    written."""
    blocks = [(events.iloc[b],) for b in entity_blocks(events[key].to_numpy())]
    return write_chunks(schema, (engine or Embedded()).map(function, blocks, shared), path)


def write_chunks(schema: pa.Schema, chunks: Iterable[pa.Table], path: Path) -> int:
    """Every chunk into one parquet file at ``path`` (a row group each); the rows
    written. The file exists, with ``schema``, even when no chunk came."""
    rows = 0
    with pq.ParquetWriter(path, schema) as writer:
        for chunk in chunks:
            writer.write_table(chunk.cast(schema), row_group_size=CHUNK_ROWS)
            rows += chunk.num_rows
    return rows


def gather(schema: pa.Schema, chunks: Iterable[pa.Table]) -> pd.DataFrame:
    """The chunks as one DataFrame (list cells as numpy arrays, as parquet reads them)."""
    return pa.concat_tables([schema.empty_table(), *(c.cast(schema) for c in chunks)]
                            ).to_pandas()
