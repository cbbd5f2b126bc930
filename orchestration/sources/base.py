"""What every source adapter hands over, and the streaming line reader they share."""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

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
    columns the format implies (MovieLens: every line is a rating).

    ``delimiter`` is a promise about ``split``: on a line without a double
    quote it gives the line cut at each ``delimiter``, an empty field as None
    when ``empty_is_missing``. The reader then cuts whole blocks of such lines
    at once (Arrow) and calls ``split`` only on the other lines: a per-line
    Python call is most of the cost of reading tens of millions of events."""

    split: Callable[[str], list[str]]
    columns: tuple[str, ...]
    encoding: str = "utf-8"
    header: bool = False
    constants: dict[str, str] = field(default_factory=dict)
    delimiter: str | None = None
    empty_is_missing: bool = False


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
    end_byte = path.stat().st_size if end_byte is None else end_byte
    start_byte = max(start_byte, data_start(path, fmt))
    fields: list[np.ndarray] = []  # (lines, width) blocks not yet yielded
    errors: list[np.ndarray] = []
    pending = row = 0
    garbled = lines = 0

    def flush(n: int) -> pd.DataFrame:
        nonlocal fields, errors, pending, row
        block, error = np.concatenate(fields), np.concatenate(errors)
        fields, errors, pending = [block[n:]], [error[n:]], pending - n
        frame = pd.DataFrame(block[:n], columns=list(fmt.columns), dtype=object)
        frame["parse_error"] = error[:n]
        for column, value in fmt.constants.items():
            frame[column] = value
        out = finish_events(frame, path, first_row + row)
        row += n
        return out

    with open(path, "rb") as f:
        f.seek(start_byte)
        position, rest = start_byte, b""
        while position < end_byte:
            block = f.read(min(BLOCK_BYTES, end_byte - position))
            if not block:
                break
            if b"\x00" in block:
                raise not_text(path, fmt.encoding)
            position += len(block)
            rest += block
            cut = rest.rfind(b"\n") + 1 if position < end_byte else len(rest)
            text, rest = rest[:cut].decode(fmt.encoding, errors="replace"), rest[cut:]
            if not text:
                continue
            split, error, n_garbled = _split_lines(
                text[:-1] if text.endswith("\n") else text, fmt)
            fields.append(split)
            errors.append(error)
            lines += len(split)
            garbled += n_garbled
            pending += len(split)
            while pending >= chunk_rows:
                yield flush(chunk_rows)
    if lines and garbled == lines:
        raise SourceFormatError(f"no line of {path} decodes as {fmt.encoding}: "
                                "the whole file is in another encoding")
    if pending:
        yield flush(pending)


def _split_lines(text: str, fmt: LineFormat) -> tuple[np.ndarray, np.ndarray, int]:
    """The lines of ``text`` (``\\n``-separated, a trailing ``\\r`` dropped) ->
    their fields (lines, width; None past a short line's end), each line's
    parse error or None, and how many lines hold U+FFFD."""
    width = len(fmt.columns)
    lines = pc.replace_substring_regex(pc.split_pattern(pa.array([text]), "\n").flatten(),
                                       pattern="\r$", replacement="", max_replacements=1)
    out = np.full((len(lines), width), None, dtype=object)
    error = np.full(len(lines), None, dtype=object)
    garbled = pc.sum(pc.match_substring(lines, "\ufffd")).as_py() or 0
    plain = np.zeros(len(lines), dtype=bool)
    if fmt.delimiter is not None:
        cut = pc.split_pattern(lines, fmt.delimiter)
        plain = pc.and_(pc.and_(pc.invert(pc.match_substring(lines, '"')),
                                pc.greater(pc.utf8_length(lines), 0)),
                        pc.equal(pc.list_value_length(cut), width))
        values = pc.list_flatten(cut.filter(plain))
        if fmt.empty_is_missing:
            values = pc.if_else(pc.equal(values, ""), pa.scalar(None, pa.string()), values)
        plain = plain.to_numpy(zero_copy_only=False)
        out[plain] = values.to_numpy(zero_copy_only=False).reshape(-1, width)
    for at in np.flatnonzero(~plain):
        line = lines[int(at)].as_py()
        try:
            split = fmt.split(line) if line else []
            if len(split) != width:
                error[at] = f"line has {len(split)} fields, expected {width}"
        except LineError as exc:
            split, error[at] = [], str(exc)
        out[at, :min(len(split), width)] = split[:width]
    return out, error, garbled


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
