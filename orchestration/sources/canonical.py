"""The canonical format: ``events.csv`` or ``events.parquet``
(``user_id,item_id,event_type,timestamp[,rating]``) and ``items.csv``
(``item_id,title[,genres,description]``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from orchestration.sources.base import (
    Source,
    SourceFormatError,
    csv_split,
    finish_events,
    finish_items,
    read_lines,
)

REQUIRED_EVENT_COLUMNS = ("user_id", "item_id", "event_type", "timestamp")


@dataclass(frozen=True)
class CanonicalSource(Source):
    def events(self) -> pd.DataFrame:
        frames = []
        for path in self.event_files:
            if path.suffix == ".parquet":
                frame = pd.read_parquet(path).astype("string").astype(object)
                frame = frame.where(frame.notna(), None)
            else:
                frame = self._read_csv(path)
            missing = [c for c in REQUIRED_EVENT_COLUMNS if c not in frame.columns]
            if missing:
                raise SourceFormatError(f"{path}: missing column(s) {missing}; expected "
                                        f"{','.join(REQUIRED_EVENT_COLUMNS)}[,rating]")
            frames.append(finish_events(frame, path))
        return pd.concat(frames, ignore_index=True)

    @staticmethod
    def _read_csv(path: Path) -> pd.DataFrame:
        with open(path, encoding="utf-8", errors="replace", newline="") as f:
            header = [h.strip() for h in csv_split(f.readline().rstrip("\r\n"))]
        if not header:
            raise SourceFormatError(f"{path} is empty: expected a header line "
                                    f"{','.join(REQUIRED_EVENT_COLUMNS)}[,rating]")
        frame = read_lines(path, csv_split, len(header), skip_header=True)
        frame = frame.rename(columns=dict(enumerate(header)))
        # An empty field is a missing value, as in every CSV reader.
        values = frame[header]
        frame[header] = values.where(values != "", None)
        return frame

    def items(self) -> pd.DataFrame:
        (path,) = self.item_files
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
        if "item_id" not in frame or "title" not in frame:
            raise SourceFormatError(f"{path}: expected columns item_id,title[,genres,description]")
        return finish_items(frame)


def canonical(directory: Path) -> CanonicalSource | None:
    events = [p for p in (directory / "events.parquet", directory / "events.csv") if p.exists()]
    items = directory / "items.csv"
    if not events or not items.exists():
        return None
    return CanonicalSource(name="canonical", directory=directory, event_files=(events[0],),
                           item_files=(items,), rating_range=(0.0, 5.0))
