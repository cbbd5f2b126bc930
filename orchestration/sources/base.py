"""What every source adapter hands over."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from feature_repo.schema import EVENT_COLUMNS, ITEM_COLUMNS, PROVENANCE_COLUMNS


class SourceFormatError(ValueError):
    """A source directory that is missing, empty, or in no known format."""


@dataclass(frozen=True)
class Source:
    """A readable source: ``events()`` gives every row as read (strings, plus
    provenance), ``items()`` the catalogue; ``files`` are the raw files read."""

    name: str
    directory: Path
    event_files: tuple[Path, ...]
    item_files: tuple[Path, ...]
    rating_range: tuple[float, float]

    @property
    def files(self) -> tuple[Path, ...]:
        return self.event_files + self.item_files

    def events(self) -> pd.DataFrame:
        raise NotImplementedError

    def items(self) -> pd.DataFrame:
        raise NotImplementedError


def finish_events(frame: pd.DataFrame, source_file: Path) -> pd.DataFrame:
    """Order the columns of raw events and attach provenance (file, 1-based data row)."""
    frame = frame.copy()
    for column in EVENT_COLUMNS:
        if column not in frame:
            frame[column] = None
    frame["source_file"] = source_file.name
    frame["source_row"] = range(1, len(frame) + 1)
    return frame[list(EVENT_COLUMNS + PROVENANCE_COLUMNS)].reset_index(drop=True)


def finish_items(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.copy()
    for column in ITEM_COLUMNS:
        if column not in frame:
            frame[column] = ""
    frame = frame[list(ITEM_COLUMNS)].fillna("")
    frame["item_id"] = frame["item_id"].astype(str).str.strip()
    return frame.drop_duplicates("item_id", keep="first").reset_index(drop=True)
