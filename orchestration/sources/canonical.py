"""The canonical format: event files ``events*.csv`` or ``events*.parquet``
(``user_id,item_id,event_type,timestamp[,rating]``; one file, or one per day or
batch, read in name order) and ``items.csv`` (``item_id,title[,genres,description]``)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq

from orchestration.sources.base import (
    CHUNK_ROWS,
    LineFormat,
    Source,
    SourceFormatError,
    csv_split,
    finish_events,
    finish_items,
    header_line,
)

REQUIRED_EVENT_COLUMNS = ("user_id", "item_id", "event_type", "timestamp")
EXPECTED_HEADER = ",".join(REQUIRED_EVENT_COLUMNS) + "[,rating]"


def _check_columns(path: Path, columns: list[str]) -> None:
    missing = [c for c in REQUIRED_EVENT_COLUMNS if c not in columns]
    if missing:
        raise SourceFormatError(f"{path}: missing column(s) {missing}; expected {EXPECTED_HEADER}")


def _empty_to_none(fields: list[str]) -> list[str | None]:
    return [f if f != "" else None for f in fields]


@dataclass(frozen=True)
class CanonicalSource(Source):
    def line_format(self, path: Path) -> LineFormat:
        header = [h.strip() for h in csv_split(header_line(path))]
        if not header:
            raise SourceFormatError(f"{path} is empty: expected a header line {EXPECTED_HEADER}")
        _check_columns(path, header)
        # An empty field is a missing value, as in every CSV reader.
        return LineFormat(split=lambda line: _empty_to_none(csv_split(line)),
                          columns=tuple(header), header=True, delimiter=",",
                          empty_is_missing=True)

    def appendable(self, path: Path) -> bool:
        return path.suffix != ".parquet"

    def read_events(self, path: Path, start_byte: int = 0, end_byte: int | None = None,
                    first_row: int = 1, chunk_rows: int = CHUNK_ROWS,
                    ) -> Iterator[pd.DataFrame]:
        if path.suffix != ".parquet":
            yield from super().read_events(path, start_byte, end_byte, first_row, chunk_rows)
            return
        try:
            parquet = pq.ParquetFile(path)
        except Exception as exc:  # noqa: BLE001 - any unreadable file is a format error
            raise SourceFormatError(f"{path} is not a readable parquet file: {exc}") from exc
        _check_columns(path, parquet.schema_arrow.names)
        row = first_row
        for batch in parquet.iter_batches(batch_size=chunk_rows):
            frame = batch.to_pandas().astype("string").astype(object)
            frame = frame.where(frame.notna(), None)
            yield finish_events(frame, path, row)
            row += len(frame)

    def items(self) -> pd.DataFrame:
        (path,) = self.item_files
        try:
            frame = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8",
                                encoding_errors="replace")
        except pd.errors.EmptyDataError as exc:
            raise SourceFormatError(f"{path} is empty: expected a header line "
                                    "item_id,title[,genres,description]") from exc
        if "item_id" not in frame or "title" not in frame:
            raise SourceFormatError(f"{path}: expected columns item_id,title[,genres,description]")
        return finish_items(frame)


def canonical(directory: Path) -> CanonicalSource | None:
    events = sorted(p for p in directory.glob("events*")
                    if p.is_file() and p.suffix in (".csv", ".parquet"))
    items = directory / "items.csv"
    if not events:
        return None
    return CanonicalSource(name="canonical", directory=directory, event_files=tuple(events),
                           item_files=(items,), rating_range=(0.0, 5.0))
