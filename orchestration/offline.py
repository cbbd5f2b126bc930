"""The offline parquet every asset reads and writes: the three event tables'
schemas (raw as read, quarantined, validated), one part per ingested batch,
streamed in and out in chunks."""

from collections.abc import Iterable, Iterator
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from feature_repo.schema import EVENT_COLUMNS
from infra.settings import Settings

RAW_SCHEMA = pa.schema([(c, pa.string()) for c in EVENT_COLUMNS] + [
    ("source_file", pa.string()), ("source_row", pa.int64()), ("parse_error", pa.string())])
QUARANTINE_SCHEMA = RAW_SCHEMA.append(pa.field("reason", pa.string())).append(
    pa.field("event_key", pa.uint64()))
VALIDATED_SCHEMA = pa.schema([
    ("user_id", pa.string()), ("item_id", pa.string()), ("event_type", pa.string()),
    ("event_timestamp", pa.timestamp("us", tz="UTC")), ("rating", pa.float64()),
    ("source_file", pa.string()), ("source_row", pa.int64()), ("event_key", pa.uint64()),
])
# A validated event's own fields, without where it was read and its key.
EVENT_FIELDS = ["user_id", "item_id", "event_type", "event_timestamp", "rating"]


class PartWriter:
    """Streams frames into one parquet part; the part always exists once closed
    (with zero rows if none came), and is removed if writing fails."""

    def __init__(self, path: Path, schema: pa.Schema):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path, self.schema, self.rows = path, schema, 0
        self._writer = pq.ParquetWriter(path, schema)

    def write(self, frame: pd.DataFrame) -> None:
        if len(frame):
            self._writer.write_table(pa.Table.from_pandas(frame, schema=self.schema,
                                                          preserve_index=False))
            self.rows += len(frame)

    def __enter__(self) -> "PartWriter":
        return self

    def __exit__(self, kind, error, trace) -> None:
        self._writer.close()
        if kind is not None:
            self.path.unlink(missing_ok=True)


def write_part(path: Path, schema: pa.Schema, frames: Iterable[pd.DataFrame]) -> int:
    with PartWriter(path, schema) as writer:
        for frame in frames:
            writer.write(frame)
    return writer.rows


def read_part_chunks(path: Path, chunk_rows: int) -> Iterator[pd.DataFrame]:
    for batch in pq.ParquetFile(path).iter_batches(batch_size=chunk_rows):
        yield batch.to_pandas()


def part_rows(directory: Path) -> int:
    return sum(pq.ParquetFile(p).metadata.num_rows for p in directory.glob("*.parquet"))


def read_validated_events(settings: Settings, columns: list[str] | None = None) -> pd.DataFrame:
    """Every validated event, in time order (ties in the order read: batch, then row)."""
    parts = sorted(settings.validated_events_dir.glob("*.parquet"))
    if not parts:
        raise FileNotFoundError(f"no validated events under {settings.validated_events_dir}: "
                                "materialise validated_events first")
    wanted = None if columns is None else list(dict.fromkeys(columns + ["event_timestamp"]))
    events = pd.concat([pd.read_parquet(p, columns=wanted) for p in parts], ignore_index=True)
    events = events.sort_values("event_timestamp", kind="stable").reset_index(drop=True)
    return events if columns is None else events[columns]
