"""Schedules: ``nightly_pipeline`` runs the whole pipeline at 03:00 (off until
turned on in the UI; the sensors already retrain on drift or new events)."""

from dagster import DefaultScheduleStatus, ScheduleDefinition

from orchestration.jobs import pipeline_job

nightly_pipeline = ScheduleDefinition(
    name="nightly_pipeline", job=pipeline_job, cron_schedule="0 3 * * *",
    default_status=DefaultScheduleStatus.STOPPED,
    description="The whole pipeline every night at 03:00 (turn on in the UI).")
