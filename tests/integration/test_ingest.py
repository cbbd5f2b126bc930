"""Ingestion through the real Dagster assets: incremental and idempotent batches,
bad input (each case asserting where every row ended), structural failures."""

import json
import shutil

import pandas as pd
import pytest
from dagster import AssetKey, materialize

from infra import event_stream, redis_server
from infra.settings import Settings
from orchestration.assets.ingest import item_catalogue, raw_events, validate_raw_events
from orchestration.checks import no_rows_lost, raw_events_suite
from orchestration.ledger import Ledger
from orchestration.offline import read_validated_events
from orchestration.resources import RecsysState, resources_from_settings
from tests.unit.test_sources import U_ITEM

HEADER = "user_id,item_id,event_type,timestamp,rating\n"
ITEMS = "item_id,title,genres,description\na1,First,Drama,Long\na2,Second,Comedy,\na3,Third,,\n"


def ingest(home, source, keep_redis=False, **state):
    """Materialise the ingest assets and their check; returns (result, metadata by
    asset). raw_events drains the event stream, so it starts the home's embedded
    Redis: stopped afterwards unless ``keep_redis``."""
    settings = Settings(home=home, source=source)
    try:
        result = materialize(
            [item_catalogue, raw_events, validate_raw_events, no_rows_lost, raw_events_suite],
            resources={"state": RecsysState.of(settings, **state)}, raise_on_error=False)
    finally:
        if not keep_redis:
            redis_server.stop(settings)
    metadata = {}
    for event in result.get_asset_materialization_events():
        materialization = event.step_materialization_data.materialization
        metadata[materialization.asset_key.to_user_string()] = {
            k: v.value for k, v in materialization.metadata.items()}
    return result, metadata


def failure_message(result) -> str:
    """The failures' messages and their causes' (Dagster wraps the asset's exception)."""
    messages = []
    for failure in result.get_step_failure_events():
        error = failure.step_failure_data.error
        while error is not None:
            messages.append(error.message)
            error = error.cause
    assert messages, "the run did not fail"
    return "\n".join(messages)


def quarantine(home) -> pd.DataFrame:
    return pd.read_parquet(home / "quarantine").sort_values(["source_file", "source_row"])


def reasons_by_row(home) -> dict[int, str]:
    return dict(zip(quarantine(home)["source_row"], quarantine(home)["reason"], strict=True))


@pytest.fixture
def source(tmp_path):
    directory = tmp_path / "source"
    directory.mkdir()
    (directory / "items.csv").write_text(ITEMS)
    return directory


def test_new_files_are_ingested_once_and_redelivery_is_recognised(tmp_path, source):
    home = tmp_path / "home"
    (source / "events-001.csv").write_text(
        HEADER + "u1,a1,view,1600000000,\nu1,a2,click,1600000100,\n")
    result, meta = ingest(home, source)
    assert result.success
    assert meta["raw_events"]["row_count"] == 2 and meta["validated_events"]["row_count"] == 2

    # A second day's file: only its rows are read; one of them repeats day one.
    (source / "events-002.csv").write_text(
        HEADER + "u2,a1,view,1600000200,\nu1,a1,view,1600000000,\n")
    result, meta = ingest(home, source)
    assert result.success
    assert meta["raw_events"]["new_rows"] == 2 and meta["raw_events"]["row_count"] == 4
    assert meta["validated_events"]["row_count"] == 3
    assert meta["quarantined_events"]["row_count"] == 1
    assert reasons_by_row(home) == {2: "duplicate of an earlier event"}

    # Nothing new: a re-run changes nothing downstream.
    before = {p.name: p.read_bytes() for p in (home / "offline" / "validated_events").iterdir()}
    result, meta = ingest(home, source)
    assert result.success and meta["raw_events"]["new_rows"] == 0
    assert meta["validated_events"]["row_count"] == 3 and meta["validated_events"]["run_rows"] == 0
    after = {p.name: p.read_bytes() for p in (home / "offline" / "validated_events").iterdir()}
    assert after == before

    # The same content delivered again under another name is recognised and skipped.
    shutil.copy(source / "events-001.csv", source / "events-003.csv")
    result, meta = ingest(home, source)
    assert meta["raw_events"]["skipped_files"]["events-003.csv"] == \
        "same content as events-001.csv (batch 1): already ingested"
    assert meta["raw_events"]["row_count"] == 4

    # A file that grew is read from where its last batch ended, rows numbered on.
    with open(source / "events-002.csv", "a") as f:
        f.write("u3,a3,purchase,1600000300,\n")
    result, meta = ingest(home, source)
    assert meta["raw_events"]["new_batches"] == [
        {"batch": 3, "file": "events-002.csv", "rows": 1, "forgotten": 0,
         "first_row": 3, "note": "grew since batch 2: reading the new bytes only"}]
    validated = read_validated_events(home_settings(home))
    assert validated[["user_id", "item_id", "source_file", "source_row"]].values.tolist() == [
        ["u1", "a1", "events-001.csv", 1], ["u1", "a2", "events-001.csv", 2],
        ["u2", "a1", "events-002.csv", 1], ["u3", "a3", "events-002.csv", 3]]
    checks = {c.check_name: c for c in result.get_asset_check_evaluations()}
    assert checks["no_rows_lost"].passed and checks["raw_events_suite"].passed
    # The suite's check reports the latest validation run only: the one appended row.
    assert checks["raw_events_suite"].metadata["rows"].value == 1


def home_settings(home):
    return RecsysState.of(Settings(home=home)).settings()


def test_streamed_events_are_ingested_exactly_once(tmp_path, source):
    """The service's events (on the stream) reach the next batch run: raw_events
    drains the stream into the offline log first, then reads what is new."""
    home = tmp_path / "home"
    settings = home_settings(home)
    (source / "events.csv").write_text(HEADER + "u1,a1,view,1600000000,\n")
    client = event_stream.client(settings)
    try:
        # A "now" the service stamped: a float with digits below the microsecond.
        event_stream.publish(client, [{"user_id": "u9", "item_id": "a2", "event_type": "click",
                                       "timestamp": 1600000500.5723798, "rating": None}])
        _, meta = ingest(home, source, keep_redis=True)
        assert meta["raw_events"]["event_log_rows"] == 1
        assert meta["raw_events"]["stream_events_drained"] == 1
        event_stream.publish(client, [{"user_id": "u9", "item_id": "a3", "event_type": "click",
                                       "timestamp": 1600000600.0, "rating": None}])
        _, meta = ingest(home, source, keep_redis=True)
        assert meta["raw_events"]["new_rows"] == 1 and meta["raw_events"]["event_log_rows"] == 2
        _, meta = ingest(home, source, keep_redis=True)  # nothing new on the stream or in the log
        assert meta["raw_events"]["new_rows"] == 0 and meta["raw_events"]["event_log_rows"] == 2
        events = read_validated_events(settings)
        mine = events[events["user_id"] == "u9"]
        assert mine["item_id"].tolist() == ["a2", "a3"]
        assert mine["event_timestamp"].iloc[0] == pd.Timestamp(1600000500572380, unit="us",
                                                               tz="UTC")
        assert meta["quarantined_events"]["row_count"] == 0
        assert event_stream.length(client) == 0  # acknowledged by the only group: trimmed
    finally:
        redis_server.stop(settings)


def test_duplicates_are_found_across_chunks(tmp_path, source):
    home = tmp_path / "home"
    rows = [f"u{i % 3},a{i % 3 + 1},view,{1600000000 + i},\n" for i in range(7)]
    (source / "events.csv").write_text(HEADER + "".join(rows) + rows[1] + rows[5])
    result, meta = ingest(home, source, chunk_rows=2)
    assert result.success
    assert meta["validated_events"]["row_count"] == 7
    assert reasons_by_row(home) == {8: "duplicate of an earlier event",
                                    9: "duplicate of an earlier event"}


HUGE = "x" * 1_000_000
GOOD_ROW = b"u1,a1,view,1600000000,"
# (case, the bad line, the reason(s) it must be quarantined with), each written
# after GOOD_ROW, so it is data row 2.
BAD_ROWS = [
    ("too many fields", b"u1,a1,view,1600000001,,extra", "line has 6 fields, expected 5"),
    ("too few fields", b"u1,a1,view", "line has 3 fields, expected 5; "
     "timestamp is missing or unparseable"),
    ("empty line", b"", "line has 0 fields, expected 5; user_id is missing; "
     "item_id is missing; event_type is missing; timestamp is missing or unparseable; "
     "item_id not in the catalogue"),
    ("stray latin-1 byte", b"u\xe9,a1,view,1600000002,", "user_id is not a valid id"),
    ("negative rating", b"u2,a1,rating,1600000003,-1", "rating outside 0..5"),
    ("rating out of range", b"u2,a1,rating,1600000004,7", "rating outside 0..5"),
    ("rating not a number", b"u2,a2,rating,1600000007,five", "rating is not a number"),
    ("timestamp 0", b"u2,a1,view,0,", "timestamp before 1990 or in the future"),
    ("far future", b"u2,a1,view,99999999999,", "timestamp before 1990 or in the future"),
    ("text timestamp", b"u2,a1,view,yesterday,", "timestamp is missing or unparseable"),
    ("exact duplicate", GOOD_ROW, "duplicate of an earlier event"),
    ("unknown item", b"u2,zz9,view,1600000005,", "item_id not in the catalogue"),
    ("unknown event type", b"u2,a2,jump,1600000006,",
     "event_type is not one of view/click/rating/add_to_cart/purchase"),
    ("missing user", b",a2,view,1600000009,", "user_id is missing"),
    ("1 MB line", f"u3,{HUGE},view,1600000008,".encode(),
     "item_id is not a valid id; item_id not in the catalogue"),
]


@pytest.mark.parametrize("case, line, reason", BAD_ROWS, ids=[c[0] for c in BAD_ROWS])
def test_a_bad_row_is_quarantined_with_its_reasons(tmp_path, source, case, line, reason):
    home = tmp_path / "home"
    (source / "events.csv").write_bytes(HEADER.encode() + GOOD_ROW + b"\n" + line + b"\n")
    result, meta = ingest(home, source)
    assert result.success
    assert reasons_by_row(home) == {2: reason}
    assert read_validated_events(home_settings(home))["source_row"].tolist() == [1]
    assert (meta["raw_events"]["row_count"], meta["validated_events"]["row_count"],
            meta["quarantined_events"]["row_count"]) == (2, 1, 1)
    # The quarantine keeps the fields as read (the 1 MB one included).
    kept = quarantine(home).iloc[0]
    fields = line.decode("utf-8", errors="replace").split(",")
    if len(fields) == 5:
        assert [kept["user_id"] or "", kept["item_id"], kept["event_type"]] == fields[:3]


def test_a_corrupted_file_is_counted_row_by_row_and_summarised(tmp_path, source):
    home = tmp_path / "home"
    lines = [GOOD_ROW] + [line for _, line, _ in BAD_ROWS] + [
        b"u4,a3,purchase,2020-09-13T12:26:49Z,"]  # good, ISO time
    (source / "events.csv").write_bytes(HEADER.encode() + b"\n".join(lines) + b"\n")
    result, meta = ingest(home, source)
    assert result.success
    expected = {k + 2: reason for k, (_, _, reason) in enumerate(BAD_ROWS)}
    assert reasons_by_row(home) == expected
    assert read_validated_events(home_settings(home))["source_row"].tolist() == [1, 17]
    assert (meta["raw_events"]["row_count"], meta["validated_events"]["row_count"],
            meta["quarantined_events"]["row_count"]) == (17, 2, 15)
    reasons = meta["quarantined_events"]["reasons"]
    assert reasons["timestamp before 1990 or in the future"] == 2
    assert reasons["item_id not in the catalogue"] == 3
    assert "**17 rows** read this run, **2 validated**" in meta["validated_events"]["summary"]
    assert "| rating outside 0..5 | 2 |" in meta["validated_events"]["summary"]
    checks = {c.check_name: c for c in result.get_asset_check_evaluations()}
    assert checks["no_rows_lost"].passed
    # 15 of 17 rows quarantined: the suite's check warns, with counts per expectation.
    suite = checks["raw_events_suite"]
    assert not suite.passed and suite.severity.value == "WARN"
    assert suite.metadata["quarantine_rate"].value == round(15 / 17, 6)
    failing = suite.metadata["failing_rows_per_expectation"].value
    assert failing["user_id is missing"] == 2 and failing["duplicate of an earlier event"] == 1
    assert (home / "data_docs" / "index.html").exists()
    assert_renders_offline(home / "data_docs")


def assert_renders_offline(site):
    """Every script, stylesheet and image of every Data Docs page is a local file."""
    import re

    pages = list(site.rglob("*.html"))
    assert len(pages) >= 2
    for page in pages:
        text = page.read_text()
        assets = re.findall(r'<(?:script|img)[^>]* src="([^"]+)"', text) + re.findall(
            r'<link[^>]* href="([^"]+)"', text)
        assert assets, page
        for ref in assets:
            assert not ref.startswith(("http://", "https://", "//")), (page, ref)
            assert ref.startswith("data:") or (page.parent / ref).resolve().is_file(), ref


def test_movielens_ids_must_be_numeric(tmp_path):
    source = tmp_path / "ml"
    source.mkdir()
    (source / "u.item").write_bytes(U_ITEM.encode("latin-1"))
    (source / "u.data").write_bytes(b"1\t1\t5\t881250949\nabc\t2\t4\t881250950\n"
                                    b"2\t1x\t3\t881250951\n3\t2\t3\t881250952\n")
    result, meta = ingest(tmp_path / "home", source)
    assert result.success
    assert reasons_by_row(tmp_path / "home") == {
        2: "user_id is not a valid id",
        3: "item_id is not a valid id; item_id not in the catalogue"}
    assert meta["validated_events"]["row_count"] == 2


@pytest.mark.parametrize("case, message", [
    ("header_only", "events.csv has no event rows (empty or header only)"),
    ("empty_file", "events.csv is empty: expected a header line"),
    ("utf16", "events.csv contains NUL bytes: it is not a text file in utf-8"),
    ("missing_items", "looks like canonical but ['items.csv'] is missing"),
    ("empty_catalogue", "items.csv has no items: the catalogue is empty"),
])
def test_structural_problems_fail_with_a_clear_message(tmp_path, source, case, message):
    events = source / "events.csv"
    good = HEADER + "u1,a1,view,1600000000,\n"
    events.write_text(good)
    if case == "header_only":
        events.write_text(HEADER)
    elif case == "empty_file":
        events.write_text("")
    elif case == "utf16":
        events.write_bytes(good.encode("utf-16"))
    elif case == "missing_items":
        (source / "items.csv").unlink()
    elif case == "empty_catalogue":
        (source / "items.csv").write_text("item_id,title\n")
    result, _ = ingest(tmp_path / "home", source)
    assert not result.success
    assert message in failure_message(result)
    # Nothing half-done is recorded: no batch was validated, no raw row was read
    # unless the events themselves were fine.
    batches = Ledger(home_settings(tmp_path / "home").ingest_ledger).batches
    assert [(b.rows, b.validated) for b in batches] == \
        ([(1, None)] if case == "empty_catalogue" else [])


def test_missing_movielens_item_file_fails_clearly(tmp_path):
    source = tmp_path / "ml"
    source.mkdir()
    (source / "u.data").write_text("1\t1\t5\t881250949\n")
    result, _ = ingest(tmp_path / "home", source)
    assert not result.success
    assert "looks like movielens-100k but ['u.item'] is missing" in failure_message(result)


def test_sensor_starts_one_ingest_run_per_new_file(tmp_path, source, request):
    from dagster import Definitions, SkipReason, build_sensor_context

    from orchestration.definitions import ASSETS, CHECKS
    from orchestration.jobs import ingest_job
    from orchestration.sensors import new_event_files

    settings = Settings(home=tmp_path / "home", source=source)
    request.addfinalizer(lambda: redis_server.stop(settings))  # raw_events drains the stream
    resources = resources_from_settings(settings)
    state = resources["state"]
    defs = Definitions(assets=ASSETS, asset_checks=CHECKS, jobs=[ingest_job],
                       sensors=[new_event_files], resources=resources)
    (source / "events-001.csv").write_text(HEADER + "u1,a1,view,1600000000,\n")

    def tick(cursor):
        return new_event_files(build_sensor_context(cursor=cursor, resources={"state": state},
                                                    definitions=defs))

    first = tick(None)
    (request,) = first.run_requests
    assert request.tags["changed_files"] == "events-001.csv"
    assert defs.resolve_job_def("ingest").execute_in_process().success
    quiet = tick(first.cursor)
    assert quiet.run_requests in (None, []) and isinstance(quiet.skip_reason, SkipReason)
    assert quiet.cursor == first.cursor

    (source / "events-002.csv").write_text(HEADER + "u2,a2,view,1600000100,\n")
    second = tick(quiet.cursor)
    (request,) = second.run_requests
    assert request.tags["changed_files"] == "events-002.csv"
    assert request.run_key != first.run_requests[0].run_key
    # Running the same request twice still reads each file once (the ledger).
    job = defs.resolve_job_def("ingest")
    assert job.execute_in_process().success and job.execute_in_process().success
    ledger = Ledger(state.settings().ingest_ledger)
    assert [(b.file, b.rows, b.validated) for b in ledger.batches] == [
        ("events-001.csv", 1, 1), ("events-002.csv", 1, 1)]


def test_the_sensors_first_tick_takes_files_already_ingested_as_seen(tmp_path, source):
    """Turned on after a run (``make ui`` after ``make demo``), the sensor starts no
    run for the files that run ingested, and one for a file it did not."""
    from dagster import build_sensor_context

    from orchestration.sensors import new_event_files

    (source / "events-001.csv").write_text(HEADER + "u1,a1,view,1600000000,\n")
    assert ingest(tmp_path / "home", source)[0].success
    state = RecsysState.of(Settings(home=tmp_path / "home", source=source))
    first = new_event_files(build_sensor_context(resources={"state": state}))
    assert not first.run_requests and "no new or changed" in first.skip_reason.skip_message
    (source / "events-002.csv").write_text(HEADER + "u2,a2,view,1600000100,\n")
    second = new_event_files(build_sensor_context(cursor=first.cursor,
                                                  resources={"state": state}))
    (request,) = second.run_requests
    assert request.tags["changed_files"] == "events-002.csv"
    # A file that grew after it was ingested is not seen, on a first tick too.
    with open(source / "events-001.csv", "a") as f:
        f.write("u3,a1,view,1600000200,\n")
    again = new_event_files(build_sensor_context(resources={"state": state}))
    (request,) = again.run_requests
    assert request.tags["changed_files"] == "events-001.csv,events-002.csv"


def test_sensor_waits_for_a_source(tmp_path):
    from dagster import build_sensor_context

    from orchestration.sensors import new_event_files

    state = RecsysState.of(Settings(home=tmp_path / "home"))
    result = new_event_files(build_sensor_context(resources={"state": state}))
    assert "no source directory yet" in result.skip_message


def test_retrain_sensor_fires_on_new_events_and_on_drift_error(tmp_path, source):
    from dagster import AssetMaterialization, DagsterInstance, SkipReason, build_sensor_context

    from orchestration.definitions import defs
    from orchestration.sensors import retrain_on_drift_or_new_events

    home = tmp_path / "home"
    state = RecsysState.of(Settings(home=home, source=source), retrain_min_new_events=3)
    (source / "events-001.csv").write_text(HEADER + "u1,a1,view,1600000000,\n")
    ingest(home, source)
    instance = DagsterInstance.ephemeral()

    def tick(cursor):
        return retrain_on_drift_or_new_events(build_sensor_context(
            cursor=cursor, instance=instance, resources={"state": state}))

    def drift(severity):
        instance.report_runless_asset_event(AssetMaterialization(
            "feature_drift", metadata={"severity": severity}))
        return instance.fetch_materializations(AssetKey("feature_drift"), limit=1
                                               ).records[0].storage_id

    baseline = tick(None)
    assert json.loads(baseline.cursor) == {"validated": 1, "drift": 0}
    assert not baseline.run_requests
    (source / "events-002.csv").write_text(HEADER + "u2,a1,view,1600000100,\n"
                                           "u2,a2,view,1600000200,\n")
    ingest(home, source)
    quiet = tick(baseline.cursor)
    assert quiet.skip_reason.skip_message == (
        "2 new validated events (< 3); newest drift: already seen or none")
    # A WARN drift does not retrain; the cursor remembers it was seen.
    warned = drift("WARN")
    quiet = tick(quiet.cursor)
    assert not quiet.run_requests and "newest drift: WARN" in quiet.skip_reason.skip_message
    assert json.loads(quiet.cursor) == {"validated": 1, "drift": warned}
    (source / "events-003.csv").write_text(HEADER + "u3,a3,view,1600000300,\n")
    ingest(home, source)
    fired = tick(quiet.cursor)
    (request,) = fired.run_requests
    assert request.job_name in (None, "recsys_pipeline")
    assert json.loads(fired.cursor) == {"validated": 4, "drift": warned}
    assert request.tags["retrain_reason"] == "3 new validated events (>= 3)"
    assert isinstance(tick(fired.cursor).skip_reason, SkipReason)
    # Drift at ERROR retrains once, with no new events at all.
    errored = drift("ERROR")
    fired = tick(fired.cursor)
    (request,) = fired.run_requests
    assert request.tags["retrain_reason"] == f"drift ERROR (record {errored})"
    assert json.loads(fired.cursor) == {"validated": 4, "drift": errored}
    assert not tick(fired.cursor).run_requests
    # The jobs, the sensors and the nightly schedule are all in the one Definitions.
    assert {s.name for s in defs.sensors} == {
        "new_event_files", "drift_after_ingest", "retrain_on_drift_or_new_events"}
    assert [(s.name, s.cron_schedule) for s in defs.schedules] == [
        ("nightly_pipeline", "0 3 * * *")]
