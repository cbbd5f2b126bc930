"""Sensors and schedules. New or grown event files in the source directory start
an ingest run; enough newly validated events start a retraining run; the whole
pipeline can run nightly.

The cursor is the (size, mtime) of every event file last seen; a change starts
the ``ingest`` job once. Exactly-once does not rest on the sensor: the ingest
ledger skips bytes already read, so a run started twice reads nothing twice."""

import hashlib
import json

from dagster import (
    DefaultScheduleStatus,
    DefaultSensorStatus,
    RunRequest,
    ScheduleDefinition,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)

from orchestration.jobs import ingest_job, pipeline_job
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


@sensor(job=ingest_job, minimum_interval_seconds=30,
        default_status=DefaultSensorStatus.RUNNING)
def new_event_files(context: SensorEvaluationContext, state: RecsysState):
    """Start an ingest run when an event file appears or changes in the source directory."""
    snapshot = event_file_snapshot(state)
    if snapshot is None:
        return SkipReason("no source directory yet: run the pipeline once")
    previous = json.loads(context.cursor) if context.cursor else {}
    changed = sorted(name for name, stat in snapshot.items() if previous.get(name) != stat)
    cursor = json.dumps(snapshot, sort_keys=True)
    if not changed:
        return SensorResult(skip_reason=SkipReason("no new or changed event files"),
                            cursor=cursor)
    return SensorResult(
        run_requests=[RunRequest(run_key=hashlib.sha256(cursor.encode()).hexdigest()[:16],
                                 tags={"changed_files": ",".join(changed)[:200]})],
        cursor=cursor)


@sensor(job=pipeline_job, minimum_interval_seconds=300,
        default_status=DefaultSensorStatus.STOPPED)
def retrain_on_new_events(context: SensorEvaluationContext, state: RecsysState):
    """Start the whole pipeline (ingest, features, train, the blocking promotion
    check) once ``min_new_events`` validated events have arrived since the last
    retraining this sensor started (``RecsysState.retrain_min_new_events``). The
    cursor is the validated-event count then."""
    minimum = state.retrain_min_new_events
    total = Ledger(state.settings().ingest_ledger).total("validated")
    if not context.cursor:
        return SensorResult(skip_reason=SkipReason(f"baseline: {total} validated events"),
                            cursor=str(total))
    new = total - int(context.cursor)
    if new < minimum:
        return SkipReason(f"{new} new validated events (< {minimum})")
    return SensorResult(run_requests=[RunRequest(run_key=f"retrain-at-{total}",
                                                 tags={"new_validated_events": str(new)})],
                        cursor=str(total))


nightly_pipeline = ScheduleDefinition(
    name="nightly_pipeline", job=pipeline_job, cron_schedule="0 3 * * *",
    default_status=DefaultScheduleStatus.STOPPED,
    description="The whole pipeline every night at 03:00 (turn on in the UI).")
