"""The offline event log: ``$RECSYS_HOME/event_log/*.jsonl``, one JSON object per
event the service accepted, written by the stream consumer (``orchestration.consume``)
and read by batch ingestion like any other event file."""

from __future__ import annotations

import fcntl
import json
import os
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from feature_repo.schema import EVENT_COLUMNS
from orchestration.sources.base import LineError, LineFormat, Source


def _json_split(line: str) -> list[str | None]:
    try:
        event = json.loads(line)
    except json.JSONDecodeError as exc:
        raise LineError(f"not a JSON object: {exc.msg}") from None
    if not isinstance(event, dict):
        raise LineError("not a JSON object")
    return [None if event.get(c) is None else str(event[c]) for c in EVENT_COLUMNS]


EVENT_LOG_FORMAT = LineFormat(split=_json_split, columns=EVENT_COLUMNS)
STREAM_ID = "stream_id"  # the event's stream entry id, on each line (exactly-once)


@contextmanager
def locked(directory: Path) -> Iterator[None]:
    """Excludes other writers of the log directory (consumers appending, a deletion
    rewriting a file), across processes."""
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


class EventLogWriter:
    """Appends to one file of its own (``name``: e.g. the consumer's), fsynced
    before ``append`` returns: what it returns is durable."""

    def __init__(self, directory: Path, name: str):
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.path = directory / f"events-{name}.jsonl"
        self._lock = threading.Lock()
        if self.path.exists():
            # A crash may have left half a line (never acknowledged, so it will be
            # delivered again): cut it off. Ingestion never read it: it reads up to
            # the last complete line only.
            end = EventLogSource.readable_end(self.path)
            if end < self.path.stat().st_size:
                os.truncate(self.path, end)

    def _write(self, text: str) -> None:
        with self._lock, locked(self.directory), open(self.path, "a", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())

    def append(self, events: Iterable[dict]) -> None:
        self._write("".join(json.dumps(e, sort_keys=True) + "\n" for e in events))


def logged_stream_ids(directory: Path, since_s: float = 0.0) -> Iterator[str]:
    """Stream ids on the complete lines of the log files changed at or after
    ``since_s`` (a file not changed since an entry was added cannot hold it)."""
    if not directory.is_dir():
        return
    for path in sorted(directory.glob("*.jsonl")):
        if path.stat().st_mtime < since_s:
            continue
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                if not line.endswith("\n"):
                    break
                try:
                    value = json.loads(line).get(STREAM_ID)
                except (json.JSONDecodeError, AttributeError):
                    continue
                if value:
                    yield value


@dataclass(frozen=True)
class EventLogSource(Source):
    def line_format(self, path: Path) -> LineFormat:
        return EVENT_LOG_FORMAT

    @staticmethod
    def readable_end(path: Path) -> int:
        """The consumer may be appending: stop after the last complete line."""
        with open(path, "rb") as f:
            data_end = f.seek(0, 2)
            position = data_end
            while position > 0:
                step = min(1 << 16, position)
                f.seek(position - step)
                block = f.read(step)
                cut = block.rfind(b"\n")
                if cut >= 0:
                    return position - step + cut + 1
                position -= step
        return 0


def event_log_source(directory: Path, like: Source) -> EventLogSource:
    """The event log, validated by the rules of the source its events belong to."""
    files = tuple(sorted(directory.glob("*.jsonl"))) if directory.is_dir() else ()
    return EventLogSource(name="event_log", directory=directory, event_files=files,
                          item_files=(), rating_range=like.rating_range,
                          id_pattern=like.id_pattern)
