"""Jobs."""

from dagster import AssetSelection, define_asset_job

pipeline_job = define_asset_job(
    "recsys_pipeline", selection=AssetSelection.all(),
    description="Ingest, validate, features (offline + online), train, register, promote.",
)

ingest_job = define_asset_job(
    "ingest", selection=AssetSelection.groups("ingest"),
    description="Read new event bytes (ingest ledger), validate them, quarantine failures.",
)

monitoring_job = define_asset_job(
    "monitoring", selection=AssetSelection.groups("monitoring"),
    description="Drift of the newest events against the champion's training data; reports index.",
)
