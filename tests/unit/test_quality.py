"""The Great Expectations suite on good and bad rows: every row lands in exactly
one place, with every reason that applies."""

import numpy as np
import pandas as pd
import pytest

from feature_repo.event_rules import EventRules
from feature_repo.schema import parse_timestamps
from orchestration.quality import SeenKeys, validate_events

NOW = 1_700_000_000.0
COLUMNS = ["user_id", "item_id", "event_type", "timestamp", "rating"]


def raw(rows):
    frame = pd.DataFrame(rows, columns=COLUMNS).astype(object)
    frame = frame.where(frame.notna(), None)
    frame["source_file"] = "events.csv"
    frame["source_row"] = range(1, len(frame) + 1)
    frame["parse_error"] = None
    return frame


def test_parse_timestamps():
    values = pd.Series(["1600000000", "2020-09-13T12:26:40Z", "text", None, "1600000000.5"])
    parsed = parse_timestamps(values).tolist()
    assert parsed[0] == 1600000000.0
    assert parsed[1] == 1600000000.0
    assert pd.isna(parsed[2]) and pd.isna(parsed[3])
    assert parsed[4] == 1600000000.5


def test_good_and_bad_rows(tmp_path):
    frame = raw([
        ["u1", "i1", "view", "1600000000", None],          # good
        ["u1", "i2", "rating", "1600000100", "4"],         # good
        ["u1", "i2", "rating", "1600000100", "4"],         # exact duplicate
        ["u2", "i1", "like", "1600000000", None],          # bad event type
        ["u2", "i9", "view", "1600000000", None],          # unknown item
        ["u2", "i1", "rating", "0", "7"],                  # timestamp 0 and rating range
        [None, "i1", "view", "1600000000", None],          # missing user
        ["u 3", "i1", "view", "soon", "x"],                # bad id, time, rating text
        ["u4", "i1", "view", str(int(NOW) + 10 * 86400), None],  # far future
    ])
    result = validate_events(frame, {"i1", "i2"}, EventRules((1.0, 5.0)), tmp_path / "gx",
                             tmp_path / "docs", now=NOW)
    assert len(result.validated) + len(result.quarantined) == len(frame)
    assert result.validated[["user_id", "item_id"]].values.tolist() == [["u1", "i1"],
                                                                        ["u1", "i2"]]
    assert result.validated["rating"].iloc[1] == 4.0
    assert str(result.validated["event_timestamp"].iloc[0]) == "2020-09-13 12:26:40+00:00"
    reasons = dict(zip(result.quarantined["source_row"], result.quarantined["reason"],
                       strict=True))
    assert reasons[3] == "duplicate of an earlier event"
    assert reasons[4].startswith("event_type is not one of")
    assert reasons[5] == "item_id not in the catalogue"
    assert reasons[6] == "timestamp before 1990 or in the future; rating outside 1..5"
    assert reasons[7] == "user_id is missing"
    assert reasons[8] == ("user_id is not a valid id; timestamp is missing or unparseable; "
                          "rating is not a number")
    assert reasons[9] == "timestamp before 1990 or in the future"
    # Quarantine keeps the fields as read.
    row8 = result.quarantined.set_index("source_row").loc[8]
    assert (row8["user_id"], row8["timestamp"], row8["rating"]) == ("u 3", "soon", "x")
    assert result.reason_counts["duplicate of an earlier event"] == 1
    assert (tmp_path / "docs" / "index.html").exists()


def test_no_rows_is_a_clear_failure(tmp_path):
    with pytest.raises(ValueError, match="no rows"):
        validate_events(raw([]), {"i1"}, EventRules((1.0, 5.0)), tmp_path / "gx", tmp_path / "docs")


def test_malformed_lines_are_quarantined_with_how(tmp_path):
    frame = raw([["u1", "i1", "view", "1600000000", None], ["u1", "i1", "view", None, None]])
    frame.loc[1, "parse_error"] = "line has 2 fields, expected 5"
    result = validate_events(frame, {"i1"}, EventRules((1.0, 5.0)), tmp_path / "gx",
                             tmp_path / "docs",
                             now=NOW)
    assert len(result.validated) == 1
    assert result.quarantined["reason"].tolist() == [
        "line has 2 fields, expected 5; timestamp is missing or unparseable"]


def test_seen_keys_finds_exactly_the_keys_added():
    seen = SeenKeys(np.array([5, 1, 9], dtype=np.uint64))
    seen.add(np.array([9, 3, 3, 2**64 - 1], dtype=np.uint64))
    assert len(seen) == 5
    probe = np.array([10, 1, 2**64 - 1, 3, 0, 9, 5, 2, 1], dtype=np.uint64)
    assert seen.contains(probe).tolist() == [False, True, True, True, False, True, True, False,
                                             True]
    assert not SeenKeys().contains(probe).any()
    rng = np.random.default_rng(0)
    first, second = rng.integers(0, 1000, (2, 300), dtype=np.uint64)
    many = SeenKeys(first)
    many.add(second)
    added = np.union1d(first, second)
    probe = rng.integers(0, 1000, 500, dtype=np.uint64)
    assert len(many) == len(added)
    assert (many.contains(probe) == np.isin(probe, added)).all()
