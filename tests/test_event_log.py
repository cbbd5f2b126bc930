"""Events accepted by the service reach the next batch run: the JSONL event log
is read into raw_events (values as strings, with provenance) and validated."""

import pandas as pd

from orchestration.assets.ingest import read_event_log
from orchestration.quality import validate_events
from orchestration.resources import RecsysState
from serving.online import EventLog


def test_logged_events_are_read_back_as_raw_rows_and_validate(tmp_path):
    state = RecsysState(home=str(tmp_path))
    log = EventLog(state.settings().event_log_dir)
    log.append([
        {"user_id": "u1", "item_id": "i1", "event_type": "click", "timestamp": 1600000000.5,
         "rating": None},
        {"user_id": "u1", "item_id": "i2", "event_type": "rating", "timestamp": 1600000001.0,
         "rating": 4.0},
    ])
    log.append([{"user_id": "u2", "item_id": "i1", "event_type": "view",
                 "timestamp": 1600000002.0, "rating": None}])
    raw = read_event_log(state)
    assert raw[["user_id", "item_id", "event_type", "rating", "source_row"]].values.tolist() == [
        ["u1", "i1", "click", None, 1], ["u1", "i2", "rating", "4.0", 2],
        ["u2", "i1", "view", None, 3]]
    assert set(raw["source_file"]) == {log.path.name}
    result = validate_events(raw, {"i1", "i2"}, (1.0, 5.0), tmp_path / "gx", tmp_path / "docs")
    assert len(result.validated) == 3 and result.quarantined.empty
    assert result.validated["event_timestamp"].iloc[0] == pd.Timestamp(
        "2020-09-13 12:26:40.500000+00:00")


def test_no_event_log_means_no_rows(tmp_path):
    assert read_event_log(RecsysState(home=str(tmp_path))).empty
