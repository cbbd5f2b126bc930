"""What every source adapter hands over, and the streaming line reader they share."""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from feature_repo.event_rules import EventRules
from feature_repo.privacy import PSEUDONYM_PATTERN
from feature_repo.schema import EVENT_COLUMNS, ID_PATTERN, ITEM_COLUMNS, PROVENANCE_COLUMNS

csv.field_size_limit(64 * 1024 * 1024)  # a 1 MB line is data to quarantine, not a crash

CHUNK_ROWS = 250_000  # rows per chunk: bounds memory whatever the file size
BLOCK_BYTES = 8 << 20


class SourceFormatError(ValueError):
    """A source directory or file that is missing, empty, unreadable or in no known format."""


class LineError(ValueError):
    """A line that cannot be split into fields; its message becomes the row's parse_error."""


@dataclass(frozen=True)
class LineFormat:
    """How the lines of a text event file map to raw event columns.

    ``split`` turns one line (without its line break) into fields, or raises
    ``LineError``; ``columns`` names the fields in order; ``constants`` are
    columns the format implies (MovieLens: every line is a rating)."""

    split: Callable[[str], list[str]]
    columns: tuple[str, ...]
    encoding: str = "utf-8"
    header: bool = False
    constants: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Source:
    """A readable source: ``read_events`` streams one event file's rows as read
    (strings, plus provenance) in chunks, ``items()`` gives the catalogue;
    ``files`` are the raw files read."""

    name: str
    directory: Path
    event_files: tuple[Path, ...]
    item_files: tuple[Path, ...]
    rating_range: tuple[float, float]
    id_pattern: str = ID_PATTERN

    @property
    def files(self) -> tuple[Path, ...]:
        return self.event_files + self.item_files

    def rules(self, future_tolerance_s: float, pseudonymised: bool = False) -> EventRules:
        """What a valid event of this source is (its rating range and id pattern;
        stored user ids are pseudonyms when ``pseudonymised``)."""
        return EventRules(rating_range=self.rating_range, id_pattern=self.id_pattern,
                          future_tolerance_s=future_tolerance_s,
                          user_id_pattern=PSEUDONYM_PATTERN if pseudonymised else None)

    def line_format(self, path: Path) -> LineFormat:
        raise NotImplementedError

    def appendable(self, path: Path) -> bool:
        """Whether rows appended to ``path`` can be read from a byte offset."""
        return True

    def readable_end(self, path: Path) -> int:
        """How many bytes of ``path`` to read now (all of a source file)."""
        return path.stat().st_size

    def read_events(self, path: Path, start_byte: int = 0, end_byte: int | None = None,
                    first_row: int = 1, chunk_rows: int = CHUNK_ROWS,
                    ) -> Iterator[pd.DataFrame]:
        """The event rows of ``path`` between two byte offsets, ``chunk_rows`` at a time."""
        yield from read_line_chunks(path, self.line_format(path), start_byte, end_byte,
                                    first_row, chunk_rows)

    def events(self) -> pd.DataFrame:
        """Every event row of every event file (small sources and tests)."""
        frames = [chunk for path in self.event_files for chunk in self.read_events(path)]
        if not frames:
            return finish_events(pd.DataFrame(columns=list(EVENT_COLUMNS)), Path(""), 1)
        return pd.concat(frames, ignore_index=True)

    def items(self) -> pd.DataFrame:
        raise NotImplementedError


def not_text(path: Path, encoding: str) -> SourceFormatError:
    return SourceFormatError(f"{path} contains NUL bytes: it is not a text file in {encoding} "
                             "(UTF-16 or binary?)")


def header_line(path: Path, encoding: str = "utf-8") -> str:
    """The first line of a text file, decoded (undecodable bytes as U+FFFD)."""
    with open(path, "rb") as f:
        first = f.readline()
    if b"\x00" in first:
        raise not_text(path, encoding)
    return first.decode(encoding, errors="replace").rstrip("\r\n")


def data_start(path: Path, fmt: LineFormat) -> int:
    """Byte offset of the first data line (after the header, if the format has one)."""
    if not fmt.header:
        return 0
    with open(path, "rb") as f:
        f.readline()
        return f.tell()


def read_line_chunks(path: Path, fmt: LineFormat, start_byte: int = 0,
                     end_byte: int | None = None, first_row: int = 1,
                     chunk_rows: int = CHUNK_ROWS) -> Iterator[pd.DataFrame]:
    """Every line of a text file in ``[start_byte, end_byte)`` as a raw event row,
    none dropped: a line with another number of fields (an empty line included)
    gets a ``parse_error`` and keeps its fields as far as they go. Undecodable
    bytes become U+FFFD (ids holding them fail validation); a file with NUL bytes,
    or none of whose lines decode, is not text in ``fmt.encoding`` and raises
    ``SourceFormatError``."""
    width = len(fmt.columns)
    end_byte = path.stat().st_size if end_byte is None else end_byte
    start_byte = max(start_byte, data_start(path, fmt))
    rows: list[list[str | None]] = []
    errors: list[str | None] = []
    row = first_row
    garbled = lines = 0

    def flush() -> pd.DataFrame:
        frame = pd.DataFrame(rows, columns=list(fmt.columns), dtype=object)
        frame["parse_error"] = errors
        for column, value in fmt.constants.items():
            frame[column] = value
        out = finish_events(frame, path, row - len(rows))
        rows.clear()
        errors.clear()
        return out

    with open(path, "rb") as f:
        f.seek(start_byte)
        position, pending = start_byte, b""
        while position < end_byte:
            block = f.read(min(BLOCK_BYTES, end_byte - position))
            if not block:
                break
            if b"\x00" in block:
                raise not_text(path, fmt.encoding)
            position += len(block)
            pending += block
            cut = pending.rfind(b"\n") + 1 if position < end_byte else len(pending)
            text, pending = pending[:cut].decode(fmt.encoding, errors="replace"), pending[cut:]
            if not text:
                continue
            for line in text[:-1].split("\n") if text.endswith("\n") else text.split("\n"):
                if line.endswith("\r"):
                    line = line[:-1]
                lines += 1
                garbled += "\ufffd" in line
                try:
                    fields = fmt.split(line) if line else []
                    error = None if len(fields) == width else \
                        f"line has {len(fields)} fields, expected {width}"
                except LineError as exc:
                    fields, error = [], str(exc)
                rows.append(fields if error is None else (fields + [None] * width)[:width])
                errors.append(error)
                row += 1
                if len(rows) >= chunk_rows:
                    yield flush()
    if lines and garbled == lines:
        raise SourceFormatError(f"no line of {path} decodes as {fmt.encoding}: "
                                "the whole file is in another encoding")
    if rows:
        yield flush()


def csv_split(line: str) -> list[str]:
    """One CSV line (RFC 4180 quoting) -> fields; an empty line has none."""
    if '"' not in line:
        return line.split(",") if line else []
    return next(csv.reader([line]), [])


def finish_events(frame: pd.DataFrame, source_file: Path, first_row: int) -> pd.DataFrame:
    """Order the columns of raw events and attach provenance (file, 1-based data row)."""
    frame = frame.copy()
    for column in EVENT_COLUMNS + ("parse_error",):
        if column not in frame:
            frame[column] = None
    frame["source_file"] = source_file.name
    frame["source_row"] = range(first_row, first_row + len(frame))
    return frame[list(EVENT_COLUMNS + PROVENANCE_COLUMNS)].reset_index(drop=True)


def finish_items(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.copy()
    for column in ITEM_COLUMNS:
        if column not in frame:
            frame[column] = ""
    frame = frame[list(ITEM_COLUMNS)].fillna("")
    frame["item_id"] = frame["item_id"].astype(str).str.strip()
    return frame.drop_duplicates("item_id", keep="first").reset_index(drop=True)
