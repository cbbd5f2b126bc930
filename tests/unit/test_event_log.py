"""Events accepted by the service reach the next batch run: the JSONL event log
the stream consumer writes is read like any other event file (values as strings,
with provenance)."""

from orchestration.sources.detect import detect_source
from orchestration.sources.event_log import (
    EventLogWriter,
    event_log_source,
    logged_stream_ids,
)
from orchestration.sources.generator import GeneratorConfig, generate, write_canonical


def test_logged_events_are_read_back_as_raw_rows(tmp_path):
    log = EventLogWriter(tmp_path / "event_log", "c1")
    log.append([
        {"user_id": "u1", "item_id": "i1", "event_type": "click", "timestamp": 1600000000.5,
         "rating": None},
        {"user_id": "u1", "item_id": "i2", "event_type": "rating", "timestamp": 1600000001.0,
         "rating": 4.0},
    ])
    log.append([{"user_id": "u2", "item_id": "i1", "event_type": "view",
                 "timestamp": 1600000002.0, "rating": None}])
    with open(log.path, "a") as f:
        f.write('{"user_id": "u3"')  # a line the consumer is still writing
    write_canonical(generate(GeneratorConfig(users=5, items=5, events=20)), tmp_path / "src")
    source = event_log_source(tmp_path / "event_log", detect_source(tmp_path / "src"))
    assert source.rating_range == (0.0, 5.0)
    end = source.readable_end(log.path)
    assert end == log.path.stat().st_size - len('{"user_id": "u3"')
    raw = next(source.read_events(log.path, end_byte=end))
    assert raw[["user_id", "item_id", "event_type", "timestamp", "rating", "source_row"]
               ].values.tolist() == [
        ["u1", "i1", "click", "1600000000.5", None, 1],
        ["u1", "i2", "rating", "1600000001.0", "4.0", 2],
        ["u2", "i1", "view", "1600000002.0", None, 3]]
    assert set(raw["source_file"]) == {log.path.name}


def test_a_line_that_is_not_json_is_a_row_with_a_parse_error(tmp_path):
    (tmp_path / "events-1.jsonl").write_text('{"user_id": "u1"}\n[1, 2]\nnot json\n')
    write_canonical(generate(GeneratorConfig(users=5, items=5, events=20)), tmp_path / "src")
    raw = event_log_source(tmp_path, detect_source(tmp_path / "src")).events()
    assert raw["parse_error"].tolist() == [
        None, "not a JSON object", "not a JSON object: Expecting value"]
    assert raw["user_id"].tolist() == ["u1", None, None]


def test_no_event_log_means_no_files(tmp_path):
    write_canonical(generate(GeneratorConfig(users=5, items=5, events=20)), tmp_path / "src")
    assert event_log_source(tmp_path / "none", detect_source(tmp_path / "src")).event_files == ()


def test_a_half_written_line_is_cut_off_when_the_writer_reopens(tmp_path):
    log = EventLogWriter(tmp_path, "c1")
    log.append([{"user_id": "u1", "stream_id": "5-0"}, {"user_id": "u2", "stream_id": "6-0"}])
    whole = log.path.read_bytes()
    with open(log.path, "a") as f:
        f.write('{"user_id": "u3", "stream_id": "7-0"')  # the consumer died mid-line
    assert list(logged_stream_ids(tmp_path)) == ["5-0", "6-0"]
    again = EventLogWriter(tmp_path, "c1")
    assert again.path.read_bytes() == whole
    again.append([{"user_id": "u3", "stream_id": "7-0"}])
    assert list(logged_stream_ids(tmp_path)) == ["5-0", "6-0", "7-0"]
    # Files not changed since a given time are not read.
    assert list(logged_stream_ids(tmp_path, since_s=log.path.stat().st_mtime + 10)) == []
