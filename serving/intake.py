"""``/events`` intake as a plain function: each event of a request checked with the
rules the batch suite applies (``feature_repo.event_rules``), with the same
reasons; an event repeating an earlier one of the same request is a duplicate,
as the batch suite would find it."""

from __future__ import annotations

from collections.abc import Container

from feature_repo.event_rules import (
    DUPLICATE,
    CheckedEvent,
    EventRules,
    check_event,
    event_key,
    parse_texts,
)


def check_request(events: list[object], rules: EventRules, catalogue: Container[str],
                  now: float) -> tuple[list[CheckedEvent], list[tuple[int, str]]]:
    """(the events accepted, in order; (index, reasons) of each event rejected)."""
    accepted: list[CheckedEvent] = []
    rejected: list[tuple[int, str]] = []
    seen: set[tuple] = set()
    parsed = parse_texts([e["timestamp"] for e in events
                          if isinstance(e, dict) and isinstance(e.get("timestamp"), str)])
    for index, raw in enumerate(events):
        event, reasons = check_event(raw, rules, catalogue, now, parsed)
        if event is not None and event_key(event) in seen:
            event, reasons = None, [DUPLICATE]
        if event is None:
            rejected.append((index, "; ".join(reasons)))
            continue
        seen.add(event_key(event))
        accepted.append(event)
    return accepted, rejected
