"""Sensors and schedules: the loop that runs without a person.

- ``new_event_files``: new or grown event files in the source directory start an
  ``ingest`` run;
- ``drift_after_ingest``: each ``ingest`` run's new ``validated_events`` start a
  ``monitoring`` run (drift against the champion's training data, reports index);
- ``retrain_on_drift_or_new_events``: drift at ERROR, or enough newly validated
  events, start the whole pipeline: a challenger is trained and registered, and
  the blocking check ``challenger_beats_champion`` decides whether it is promoted;

The cursor is the (size, mtime) of every event file last seen; a change starts
the ``ingest`` job once. Exactly-once does not rest on the sensor: the ingest
ledger skips bytes already read, so a run started twice reads nothing twice."""

import hashlib
import json

from dagster import (
    AssetKey,
    DefaultSensorStatus,
    EventLogEntry,
    RunRequest,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    asset_sensor,
    sensor,
)

from orchestration.drift import ERROR
from orchestration.jobs import ingest_job, monitoring_job, pipeline_job
from orchestration.ledger import Ledger
from orchestration.resources import RecsysState
from orchestration.sources.detect import detect_source


def event_file_snapshot(state: RecsysState) -> dict[str, list[int]] | None:
    """{file name: [size, mtime_ns]} of the source's event files; None when there
    is no source yet (the built-in generator writes its files on the first run)."""
    settings = state.settings()
    directory = settings.source or settings.generated_source_dir
    if not directory.is_dir():
        return None
    source = detect_source(directory)
    return {p.name: [p.stat().st_size, p.stat().st_mtime_ns] for p in source.event_files}


def ingested_snapshot(state: RecsysState, snapshot: dict[str, list[int]],
                      ) -> dict[str, list[int]]:
    """The first tick's cursor: the files the ingest ledger already holds whole (their
    last batch ends at the file's size and was read after its last change), so a
    sensor turned on after a run (the demo, then ``make ui``) starts nothing for them."""
    last: dict[str, tuple[int, float]] = {}
    for batch in Ledger(state.settings().ingest_ledger).batches:
        last[batch.file] = (batch.end_byte, batch.ingested_at)
    return {name: stat for name, stat in snapshot.items()
            if name in last and last[name][0] == stat[0] and last[name][1] * 1e9 >= stat[1]}


@sensor(job=ingest_job, minimum_interval_seconds=30,
        default_status=DefaultSensorStatus.RUNNING)
def new_event_files(context: SensorEvaluationContext, state: RecsysState):
    """Start an ingest run when an event file appears or changes in the source directory."""
    snapshot = event_file_snapshot(state)
    if snapshot is None:
        return SkipReason("no source directory yet: run the pipeline once")
    previous = (json.loads(context.cursor) if context.cursor
                else ingested_snapshot(state, snapshot))
    changed = sorted(name for name, stat in snapshot.items() if previous.get(name) != stat)
    cursor = json.dumps(snapshot, sort_keys=True)
    if not changed:
        return SensorResult(skip_reason=SkipReason("no new or changed event files"),
                            cursor=cursor)
    return SensorResult(
        run_requests=[RunRequest(run_key=hashlib.sha256(cursor.encode()).hexdigest()[:16],
                                 tags={"changed_files": ",".join(changed)[:200]})],
        cursor=cursor)


@asset_sensor(asset_key=AssetKey("validated_events"), job=monitoring_job,
              minimum_interval_seconds=30, default_status=DefaultSensorStatus.RUNNING)
def drift_after_ingest(context: SensorEvaluationContext, asset_event: EventLogEntry):
    """Check drift after every ``ingest`` run (the whole pipeline checks it itself)."""
    run = context.instance.get_run_by_id(asset_event.run_id)
    if run is None or run.job_name != ingest_job.name:
        return SkipReason(f"validated_events came from {run.job_name if run else 'no run'}, "
                          "which checks drift itself")
    new_rows = asset_event.asset_materialization.metadata.get("run_rows")
    if new_rows is not None and new_rows.value == 0:
        return SkipReason(f"ingest run {asset_event.run_id} read no new rows: nothing to check")
    return RunRequest(run_key=f"drift-after-{asset_event.run_id}")


DRIFT_ASSET = AssetKey("feature_drift")


@sensor(job=pipeline_job, minimum_interval_seconds=300,
        default_status=DefaultSensorStatus.RUNNING)
def retrain_on_drift_or_new_events(context: SensorEvaluationContext, state: RecsysState):
    """Start the whole pipeline (ingest, features, train, the blocking promotion
    check) when the newest ``feature_drift`` materialisation says ERROR, or once
    ``RecsysState.retrain_min_new_events`` validated events have arrived since the
    last retraining this sensor started. Cursor: the validated-event count and the
    newest drift record id it has acted on."""
    minimum = state.retrain_min_new_events
    total = Ledger(state.settings().ingest_ledger).total("validated")
    records = context.instance.fetch_materializations(DRIFT_ASSET, limit=1).records
    latest = records[0] if records else None
    drift_id = latest.storage_id if latest else 0
    if not context.cursor:
        return SensorResult(
            skip_reason=SkipReason(f"baseline: {total} validated events"),
            cursor=json.dumps({"validated": total, "drift": drift_id}))
    cursor = json.loads(context.cursor)
    new = total - cursor["validated"]
    severity = (latest.asset_materialization.metadata["severity"].value
                if latest and drift_id > cursor["drift"] else None)
    reasons = []
    if severity == ERROR:
        reasons.append(f"drift ERROR (record {drift_id})")
    if new >= minimum:
        reasons.append(f"{new} new validated events (>= {minimum})")
    if not reasons:
        return SensorResult(
            skip_reason=SkipReason(f"{new} new validated events (< {minimum}); newest drift: "
                                   f"{severity or 'already seen or none'}"),
            cursor=json.dumps({"validated": cursor["validated"], "drift": drift_id}))
    return SensorResult(
        run_requests=[RunRequest(run_key=f"retrain-at-{total}-{drift_id}",
                                 tags={"retrain_reason": "; ".join(reasons)[:200]})],
        cursor=json.dumps({"validated": total, "drift": drift_id}))
