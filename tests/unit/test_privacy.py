"""Pseudonyms: one mapping for batch and service, invalid ids still fail with their
reason, the key never serialised."""

import stat

import pandas as pd
import pytest

from feature_repo import event_rules as rule
from feature_repo.event_rules import EventRules, check_event
from feature_repo.privacy import (
    PSEUDONYM_HEX,
    PseudonymCollision,
    PseudonymKeyError,
    Pseudonyms,
    is_pseudonym,
    load_key,
    pseudonym,
)
from infra.settings import Settings

KEY = b"k" * 32
NUMERIC = r"^[0-9]{1,10}$"


def test_a_valid_id_becomes_a_keyed_96_bit_pseudonym():
    p = Pseudonyms(KEY, enabled=True)
    stored = p.stored("196", NUMERIC)
    assert is_pseudonym(stored) and len(stored) == 1 + PSEUDONYM_HEX
    assert stored == p.stored(196, NUMERIC) == pseudonym(KEY, "196")
    assert stored != Pseudonyms(b"x" * 32, enabled=True).stored("196", NUMERIC)


@pytest.mark.parametrize("given", ["12a", "1" * 11, True, 1.5, [1]])
def test_an_invalid_id_is_replaced_and_fails_with_the_reason_it_had(given):
    """The service's check: the raw id against the source's pattern (plain rules)
    and its stored form against the pseudonymised rules give the same reasons."""
    plain = EventRules(rating_range=(1, 5), id_pattern=NUMERIC)
    private = EventRules(rating_range=(1, 5), id_pattern=NUMERIC,
                         user_id_pattern=r"^p[0-9a-f]{24}$")
    event = {"user_id": given, "item_id": "7", "event_type": "click", "timestamp": 1e9}
    stored = Pseudonyms(KEY, enabled=True).stored(given, NUMERIC)
    if isinstance(given, str):
        assert stored.startswith("?") and given not in stored
    _, plain_reasons = check_event(event, plain, {"7"}, now=1.1e9)
    _, private_reasons = check_event({**event, "user_id": stored}, private, {"7"}, now=1.1e9)
    assert plain_reasons == private_reasons == [rule.not_an_id("user_id")]


def test_a_valid_id_passes_the_pseudonymised_rules_and_missing_stays_missing():
    private = EventRules(rating_range=(1, 5), id_pattern=NUMERIC,
                         user_id_pattern=r"^p[0-9a-f]{24}$")
    p = Pseudonyms(KEY, enabled=True)
    event = {"user_id": p.stored("42", NUMERIC), "item_id": "7", "event_type": "click",
             "timestamp": 1e9}
    checked, reasons = check_event(event, private, {"7"}, now=1.1e9)
    assert reasons == [] and checked.user_id == pseudonym(KEY, "42")
    assert p.stored(None, NUMERIC) is None and p.stored("", NUMERIC) == ""


def test_a_column_is_stripped_mapped_once_per_id_and_checked_for_collisions():
    p = Pseudonyms(KEY, enabled=True)
    column = p.column(pd.Series([" 1", "1", None, "x y"], dtype=object), NUMERIC)
    assert column[0] == column[1] == pseudonym(KEY, "1")
    assert column[2] is None and column[3].startswith("?")
    p._seen[pseudonym(KEY, "2")] = "not its digest"  # as if another id had taken it
    with pytest.raises(PseudonymCollision):
        p.column(pd.Series(["2"]), NUMERIC)


def test_tombstones_are_keyed_hashes_in_both_modes():
    assert Pseudonyms(KEY, enabled=True).tombstone(pseudonym(KEY, "u1")) == pseudonym(KEY, "u1")
    assert Pseudonyms(KEY, enabled=False).tombstone("u1") == pseudonym(KEY, "u1")


def test_the_key_file_is_created_once_for_its_owner_and_the_key_never_serialised(tmp_path):
    settings = Settings(home=tmp_path, pseudonymise=True)
    with pytest.raises(PseudonymKeyError, match="RECSYS_PSEUDONYM_KEY"):
        load_key(settings)
    key = load_key(settings, create=True)
    assert load_key(settings) == key and len(key) == 64
    assert stat.S_IMODE(settings.pseudonym_key_path.stat().st_mode) == 0o600
    given = Settings.from_env({"RECSYS_HOME": str(tmp_path), "RECSYS_PSEUDONYMISE": "true",
                               "RECSYS_PSEUDONYM_KEY": "a-secret-of-some-length"})
    assert load_key(given) == b"a-secret-of-some-length"
    assert "a-secret" not in given.to_json() and "a-secret" not in repr(given)
    assert Settings.from_json(given.to_json()).pseudonymise is True
