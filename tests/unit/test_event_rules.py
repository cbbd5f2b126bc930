"""The rules of a valid event as the service applies them (the batch suite's twin,
checked against it in tests/integration/test_service.py): strict JSON types."""

import pytest

from feature_repo import event_rules as rule
from feature_repo.event_rules import CheckedEvent, EventRules, check_event
from serving.intake import check_request

RULES = EventRules(rating_range=(1.0, 5.0))
NOW = 1_700_000_000.0
GOOD = {"user_id": "u1", "item_id": "i1", "event_type": "rating", "rating": 4}


@pytest.mark.parametrize("change, reasons", [
    ({}, []),
    ({"user_id": 7}, []),  # an integer id is an id
    ({"user_id": True}, [rule.not_an_id("user_id")]),  # a boolean is not
    ({"user_id": None}, [rule.missing("user_id")]),
    ({"item_id": "i 1"}, [rule.not_an_id("item_id"), rule.ITEM_UNKNOWN]),
    ({"event_type": "like"}, [rule.EVENT_TYPE_UNKNOWN]),
    ({"rating": 99}, [rule.rating_outside(1.0, 5.0)]),
    ({"rating": True}, [rule.RATING_NOT_A_NUMBER]),
    ({"rating": "4"}, [rule.RATING_NOT_A_NUMBER]),  # strict: a string is not a number
    ({"timestamp": "yesterday"}, [rule.TIME_MISSING]),
    ({"timestamp": False}, [rule.TIME_MISSING]),
    ({"timestamp": 0}, [rule.TIME_OUT_OF_RANGE]),
    ({"timestamp": NOW + 2 * 86400}, [rule.TIME_OUT_OF_RANGE]),
    ({"item_id": "i9"}, [rule.ITEM_UNKNOWN]),
])
def test_each_rule_gives_its_reason(change, reasons):
    event, got = check_event({**GOOD, **change}, RULES, {"i1"}, NOW)
    assert got == reasons
    assert (event is None) == bool(reasons)


def test_a_good_event_is_typed_and_defaults_to_now():
    event, _ = check_event({**GOOD, "user_id": 7, "timestamp": "2020-09-13T12:26:40Z"},
                           RULES, {"i1"}, NOW)
    assert event == CheckedEvent("7", "i1", "rating", 1_600_000_000.0, 4.0)
    assert check_event(GOOD, RULES, {"i1"}, NOW)[0].timestamp == NOW
    # The future tolerance is a rule like the others.
    later = EventRules((1.0, 5.0), future_tolerance_s=30 * 86400)
    assert check_event({**GOOD, "timestamp": NOW + 10 * 86400}, later, {"i1"}, NOW)[1] == []


def test_a_request_repeating_an_event_has_a_duplicate():
    accepted, rejected = check_request([GOOD, "text", GOOD, {**GOOD, "rating": 3}], RULES,
                                       {"i1"}, NOW)
    assert [e.rating for e in accepted] == [4.0, 3.0]
    assert rejected == [(1, rule.MALFORMED), (2, rule.DUPLICATE)]
    # Timestamp strings are parsed together, with the same results as one by one.
    iso = {**GOOD, "timestamp": "2020-09-13T12:26:40Z"}
    accepted, rejected = check_request([iso, {**iso, "timestamp": "soon"}, iso], RULES,
                                       {"i1"}, NOW)
    assert [e.timestamp for e in accepted] == [1_600_000_000.0]
    assert rejected == [(1, rule.TIME_MISSING), (2, rule.DUPLICATE)]


def test_rules_travel_as_json():
    assert EventRules.from_dict(RULES.to_dict()) == RULES
