"""What makes an event valid, defined once: the batch suite (Great Expectations,
``orchestration.quality``) and the service's ``/events`` apply these rules with
these reasons, in this order, and a test sends every quarantine reason's example
row through both.

The rules depend on the source (its rating range and id pattern, from the
adapter) and on the settings (how far in the future a timestamp may be); the
training run logs them with the model, so the service checks events against the
rules of the data its champion was trained on.
"""

from __future__ import annotations

import math
import re
from collections.abc import Container
from dataclasses import dataclass

import pandas as pd

from feature_repo.schema import (
    EVENT_TYPES,
    FUTURE_TOLERANCE_S,
    ID_PATTERN,
    MIN_TIMESTAMP,
    parse_timestamps,
)

MALFORMED = "malformed line"
EVENT_TYPE_UNKNOWN = "event_type is not one of " + "/".join(EVENT_TYPES)
TIME_MISSING = "timestamp is missing or unparseable"
TIME_OUT_OF_RANGE = "timestamp before 1990 or in the future"
RATING_NOT_A_NUMBER = "rating is not a number"
ITEM_UNKNOWN = "item_id not in the catalogue"
DUPLICATE = "duplicate of an earlier event"


def missing(column: str) -> str:
    return f"{column} is missing"


def not_an_id(column: str) -> str:
    return f"{column} is not a valid id"


def rating_outside(low: float, high: float) -> str:
    return f"rating outside {low:g}..{high:g}"


@dataclass(frozen=True)
class EventRules:
    rating_range: tuple[float, float]
    id_pattern: str = ID_PATTERN
    future_tolerance_s: float = FUTURE_TOLERANCE_S
    # Set when user ids are pseudonymised (feature_repo.privacy): what a stored user
    # id looks like. The source's id pattern then applies to the id as given,
    # before it is replaced, and still to item ids.
    user_id_pattern: str | None = None

    def pattern(self, column: str) -> str:
        """The pattern a stored id of ``column`` (user_id, item_id) matches."""
        if column == "user_id" and self.user_id_pattern is not None:
            return self.user_id_pattern
        return self.id_pattern

    def to_dict(self) -> dict:
        return {"rating_range": list(self.rating_range), "id_pattern": self.id_pattern,
                "future_tolerance_s": self.future_tolerance_s,
                "user_id_pattern": self.user_id_pattern}

    @classmethod
    def from_dict(cls, values: dict) -> EventRules:
        return cls(rating_range=tuple(values["rating_range"]), id_pattern=values["id_pattern"],
                   future_tolerance_s=float(values["future_tolerance_s"]),
                   user_id_pattern=values.get("user_id_pattern"))

    def latest_timestamp(self, now: float) -> float:
        return now + self.future_tolerance_s


@dataclass(frozen=True)
class CheckedEvent:
    """An event that passed: ids as strings, time in unix seconds, rating or None."""

    user_id: str
    item_id: str
    event_type: str
    timestamp: float
    rating: float | None


def _text_id(value: object) -> str | None:
    """A JSON id as text: a string, or an integer (a boolean is neither)."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        return None
    return str(value)


def is_id(value: object, pattern: str = ID_PATTERN) -> bool:
    """Whether a JSON value is a valid id: a string or an integer matching ``pattern``."""
    text = _text_id(value)
    return text is not None and re.fullmatch(pattern, text) is not None


def parse_texts(values: list[str]) -> dict[str, float]:
    """Timestamp strings -> unix seconds (NaN if unparseable), parsed together as the
    batch parses them (one pandas pass for a whole request, not one per event)."""
    unique = list(dict.fromkeys(values))
    if not unique:
        return {}
    return dict(zip(unique, parse_timestamps(pd.Series(unique, dtype=object)).tolist(),
                    strict=True))


def _seconds(value: object, now: float, parsed: dict[str, float] | None) -> float:
    """Unix seconds from a JSON number or an ISO-8601 / numeric string (looked up in
    ``parsed`` when given); None = now; NaN when unparseable (a boolean included)."""
    if value is None:
        return now
    if isinstance(value, bool):
        return math.nan
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        return (parsed if parsed is not None else parse_texts([value]))[value]
    return math.nan


def check_event(event: object, rules: EventRules, catalogue: Container[str], now: float,
                parsed: dict[str, float] | None = None,
                ) -> tuple[CheckedEvent | None, list[str]]:
    """One event as a JSON client sends it (``timestamp`` absent = now) -> the event
    and no reasons, or None and every reason that applies, in the suite's order.
    Strict types: an id is a string or an integer, a rating a number (a boolean is
    neither). ``parsed``: ``parse_texts`` of the request's timestamp strings."""
    if not isinstance(event, dict):
        return None, [MALFORMED]
    reasons = []
    ids = {c: _text_id(event.get(c)) for c in ("user_id", "item_id")}
    event_type = event.get("event_type")
    for column in ("user_id", "item_id"):
        if event.get(column) is None or ids[column] == "":
            reasons.append(missing(column))
    if event_type is None or event_type == "":
        reasons.append(missing("event_type"))
    for column in ("user_id", "item_id"):
        given = event.get(column)
        if given not in (None, "") and not is_id(given, rules.pattern(column)):
            reasons.append(not_an_id(column))
    if event_type not in (None, "") and event_type not in EVENT_TYPES:
        reasons.append(EVENT_TYPE_UNKNOWN)
    seconds = _seconds(event.get("timestamp"), now, parsed)
    if math.isnan(seconds):
        reasons.append(TIME_MISSING)
    elif not MIN_TIMESTAMP <= seconds <= rules.latest_timestamp(now):
        reasons.append(TIME_OUT_OF_RANGE)
    rating = event.get("rating")
    if rating is not None:
        if isinstance(rating, bool) or not isinstance(rating, int | float) or math.isnan(rating):
            reasons.append(RATING_NOT_A_NUMBER)
        elif not rules.rating_range[0] <= rating <= rules.rating_range[1]:
            reasons.append(rating_outside(*rules.rating_range))
    if ids["item_id"] is None or ids["item_id"] not in catalogue:
        reasons.append(ITEM_UNKNOWN)
    if reasons:
        return None, reasons
    return CheckedEvent(ids["user_id"], ids["item_id"], event_type, seconds,
                        None if rating is None else float(rating)), []


def event_key(event: CheckedEvent) -> tuple:
    """What makes two events the same event (the batch suite's duplicate key)."""
    return event.user_id, event.item_id, event.event_type, event.timestamp, event.rating
