"""The one Dagster ``Definitions`` of the project (``dagster dev -m orchestration.definitions``)."""

from dagster import Definitions, load_assets_from_modules

from infra.settings import Settings
from orchestration.assets import features, ingest, monitoring, training
from orchestration.checks import (
    challenger_beats_champion,
    no_rows_lost,
    raw_events_suite,
    training_serving_skew,
)
from orchestration.jobs import ingest_job, monitoring_job, pipeline_job
from orchestration.resources import resources_from_settings
from orchestration.schedules import nightly_pipeline
from orchestration.sensors import (
    drift_after_ingest,
    new_event_files,
    retrain_on_drift_or_new_events,
)

ASSETS = load_assets_from_modules([ingest, features, training, monitoring])
CHECKS = [no_rows_lost, raw_events_suite, challenger_beats_champion, training_serving_skew]

defs = Definitions(
    assets=ASSETS,
    asset_checks=CHECKS,
    jobs=[pipeline_job, ingest_job, monitoring_job],
    sensors=[new_event_files, drift_after_ingest, retrain_on_drift_or_new_events],
    schedules=[nightly_pipeline],
    resources=resources_from_settings(Settings.from_env()),
)
