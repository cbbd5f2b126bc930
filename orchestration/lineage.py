"""Lineage of a registered model version, back to the raw files:

registry version -> MLflow run (tags: Dagster run id, fingerprints, source, feature
service; dataset inputs) -> the Dagster run and the assets it materialised ->
raw files with their SHA-256 and row counts (``raw_events`` metadata).
"""

from __future__ import annotations

from dagster import DagsterEventType, DagsterInstance

from infra.settings import Settings
from training import registry

LINEAGE_TAGS = ("dagster_run_id", "source", "feature_service", "validated_events_sha256",
                "training_set_sha256")


def instance_for(settings: Settings) -> DagsterInstance:
    """The Dagster instance under ``$RECSYS_HOME/dagster`` (made on first use)."""
    settings.dagster_home.mkdir(parents=True, exist_ok=True)
    config = settings.dagster_home / "dagster.yaml"
    if not config.exists():
        config.write_text("telemetry:\n  enabled: false\n")
    return DagsterInstance.from_config(str(settings.dagster_home))


def lineage(settings: Settings, version: str) -> dict:
    """The chain for ``behaviour_encoder`` version ``version``, as plain data."""
    c = registry.client(settings.tracking_uri())
    model_version = c.get_model_version(registry.MODEL_NAME, str(version))
    run = c.get_run(model_version.run_id)
    chain: dict = {
        "model": {"name": registry.MODEL_NAME, "version": str(version),
                  "aliases": list(model_version.aliases),
                  "tags": {k: model_version.tags.get(k) for k in LINEAGE_TAGS}},
        "mlflow_run": {"run_id": run.info.run_id, "experiment_id": run.info.experiment_id,
                       "tags": {k: run.data.tags.get(k) for k in LINEAGE_TAGS},
                       "datasets": [{"name": d.dataset.name, "digest": d.dataset.digest,
                                     "source": d.dataset.source}
                                    for d in run.inputs.dataset_inputs]},
    }
    run_id = run.data.tags.get("dagster_run_id")
    instance = instance_for(settings)
    dagster_run = instance.get_run_by_id(run_id) if run_id else None
    if dagster_run is None:
        chain["dagster_run"] = {"run_id": run_id, "found": False,
                                "instance": str(settings.dagster_home)}
        return chain
    records = instance.get_records_for_run(
        run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION, limit=10_000).records
    materialized = {}
    for record in records:
        m = record.asset_materialization
        materialized[m.asset_key.to_user_string()] = {
            k: v.value for k, v in m.metadata.items()}
    chain["dagster_run"] = {"run_id": run_id, "found": True, "job": dagster_run.job_name,
                            "status": dagster_run.status.value,
                            "assets": sorted(materialized)}
    raw = materialized.get("raw_events", {})
    chain["raw_files"] = raw.get("files", {})
    chain["raw_events"] = {k: raw.get(k) for k in ("row_count", "source", "path")}
    return chain


def format_lineage(chain: dict) -> str:
    model, run, dag = chain["model"], chain["mlflow_run"], chain["dagster_run"]
    lines = [f"{model['name']} v{model['version']} (aliases: {', '.join(model['aliases']) or '-'})",
             f"  <- MLflow run {run['run_id']} (experiment {run['experiment_id']})"]
    lines += [f"       {k}: {v}" for k, v in run["tags"].items()]
    lines += [f"       dataset {d['name']} digest {d['digest']} from {d['source']}"
              for d in run["datasets"]]
    if not dag["found"]:
        lines.append(f"  <- Dagster run {dag['run_id']}: not in the instance at "
                     f"{dag['instance']}")
        return "\n".join(lines)
    lines.append(f"  <- Dagster run {dag['run_id']} ({dag['job']}, {dag['status']}), "
                 f"materialised: {', '.join(dag['assets'])}")
    lines.append(f"  <- raw_events: {chain['raw_events']['row_count']} rows from "
                 f"{chain['raw_events']['source']}")
    for name, info in chain["raw_files"].items():
        lines.append(f"       {name}: {info['rows']} rows, sha256 {info['sha256']} "
                     f"({info['path']})")
    return "\n".join(lines)
