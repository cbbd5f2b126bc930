"""The service's own event log: ``$RECSYS_HOME/event_log/*.jsonl``, one JSON object
per accepted event (``serving.online.EventLog``), read like any other event file."""

from __future__ import annotations

import json
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


@dataclass(frozen=True)
class EventLogSource(Source):
    def line_format(self, path: Path) -> LineFormat:
        return EVENT_LOG_FORMAT

    def readable_end(self, path: Path) -> int:
        """The service may be appending: stop after the last complete line."""
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
