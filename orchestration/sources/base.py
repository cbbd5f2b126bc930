"""What every source adapter hands over."""

from __future__ import annotations

import csv
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from feature_repo.schema import EVENT_COLUMNS, ITEM_COLUMNS, PROVENANCE_COLUMNS

csv.field_size_limit(64 * 1024 * 1024)  # a 1 MB line is data to quarantine, not a crash


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


def read_lines(path: Path, split: Callable[[str], list[str]], width: int,
               encoding: str = "utf-8", skip_header: bool = False) -> pd.DataFrame:
    """Every line of a delimited text file as a row, none dropped: ``width``
    string columns 0..width-1, plus ``parse_error`` for a line with another
    number of fields (an empty line included), whose fields are kept as far as
    they go. Undecodable bytes become U+FFFD (ids holding them fail validation)."""
    rows, errors = [], []
    with open(path, encoding=encoding, errors="replace", newline="") as f:
        if skip_header:
            f.readline()
        for line in f:
            fields = split(line.rstrip("\r\n"))
            if len(fields) == width:
                rows.append(fields)
                errors.append(None)
            else:
                rows.append((fields + [None] * width)[:width])
                errors.append(f"line has {len(fields)} fields, expected {width}")
    frame = pd.DataFrame(rows, columns=range(width), dtype=object)
    frame["parse_error"] = errors
    return frame


def csv_split(line: str) -> list[str]:
    """One CSV line (RFC 4180 quoting) -> fields; an empty line has none."""
    return next(csv.reader([line]), [])


def finish_events(frame: pd.DataFrame, source_file: Path) -> pd.DataFrame:
    """Order the columns of raw events and attach provenance (file, 1-based data row)."""
    frame = frame.copy()
    for column in EVENT_COLUMNS + ("parse_error",):
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
