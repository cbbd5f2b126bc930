"""MLflow: log a training run, register ``behaviour_encoder`` versions, move the
``challenger`` / ``champion`` aliases, load the champion."""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import mlflow
import mlflow.data
import mlflow.pyfunc
import numpy as np
import pandas as pd
from mlflow import MlflowClient
from mlflow.data.digest_utils import MAX_ROWS, get_normalized_md5_digest
from mlflow.data.pandas_dataset import PandasDataset
from mlflow.exceptions import MlflowException
from mlflow.models import Model, infer_signature
from mlflow.types import ColSpec, Schema

from infra.fingerprint import tree_sha256
from training.checkpoint import NO_PICKLES, ModelFormatError, load_model, save_model
from training.model import BehaviourEncoder

MODEL_NAME = "behaviour_encoder"
EXPERIMENT = "behaviour_encoder"
CHAMPION, CHALLENGER = "champion", "challenger"
# Interaction counts per item id, logged with each run (the serving fallback).
POPULARITY_DOCUMENT = "item_popularity.json"
# The same over the last RECENT_POPULARITY_DAYS of the training data (the fallback's order).
RECENT_POPULARITY_DOCUMENT = "item_popularity_recent.json"
RECENT_POPULARITY_DAYS = 30
# What a valid event of the training data is (feature_repo.event_rules): the
# service checks /events against the rules of the data its champion learned from.
EVENT_RULES_DOCUMENT = "event_rules.json"
# The query blend's weights chosen on validation (training.query.QueryBlend).
QUERY_BLEND_DOCUMENT = "query_blend.json"
# Run and version tag: the newest event time in the training data (the drift reference).
TRAINED_UNTIL_TAG = "training_events_until"
# The pyfunc's code file ("models from code": MLflow stores the file, no pickle).
PYFUNC_CODE = Path(__file__).with_name("pyfunc_model.py")
# What the pyfunc takes and answers, stated: given only an input example, MLflow
# loads the whole model twice while logging it (to infer this, then to check the
# example serves), which at a million items costs minutes and GBs.
PYFUNC_SIGNATURE = infer_signature(pd.DataFrame({"item_ids": [["i1", "i2"]]}),
                                   pd.DataFrame({"item_ids": [["i3"]], "scores": [[0.5]]}))
TEXT_PYFUNC_CODE = Path(__file__).with_name("pyfunc_text_model.py")
ENCODER_ARTIFACT = "encoder"  # the pyfunc artifact holding training.checkpoint's files
TEXT_MODEL_NAME = "item_text_encoder"  # the pretrained item text encoder
TEXT_EXPERIMENT = "item_text_encoder"
TEXT_MODEL_SHA_TAG = "model_dir_sha256"  # sha256 of the registered model directory

logging.getLogger("mlflow").setLevel(logging.WARNING)


@dataclass(frozen=True)
class Registered:
    version: str
    run_id: str


def client(tracking_uri: str) -> MlflowClient:
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


# MLflow 3's UI opens an experiment of this kind on its training runs (not on the
# GenAI traces page).
EXPERIMENT_KIND_TAG, TRAINING_KIND = "mlflow.experimentKind", "custom_model_development"
DESCRIPTIONS = {
    MODEL_NAME: "Behaviour-sequence encoder (GPT-2 blocks over item ids) with its item table, "
                "transitions and user vectors; alias champion is served, challenger is the "
                "newest candidate. Stored as safetensors weights and JSON (no pickle).",
    TEXT_MODEL_NAME:
        "Pretrained text encoder (all-MiniLM-L6-v2) for item content and cold starts: "
        "mean-pooled, unit-length embeddings of title, genres and description.",
}


def ensure_experiment(tracking_uri: str, artifact_location: str | None,
                      name: str = EXPERIMENT) -> str:
    """The experiment's id (created when missing), marked as model training."""
    c = client(tracking_uri)
    found = c.get_experiment_by_name(name)
    if found is None:
        return c.create_experiment(name, artifact_location=artifact_location,
                                   tags={EXPERIMENT_KIND_TAG: TRAINING_KIND})
    if found.tags.get(EXPERIMENT_KIND_TAG) != TRAINING_KIND:
        c.set_experiment_tag(found.experiment_id, EXPERIMENT_KIND_TAG, TRAINING_KIND)
    return found.experiment_id


def _describe(c: MlflowClient, name: str) -> None:
    if c.get_registered_model(name).description != DESCRIPTIONS[name]:
        c.update_registered_model(name, description=DESCRIPTIONS[name])


def log_and_register(tracking_uri: str, artifact_location: str | None,
                     model: BehaviourEncoder, params: dict, history: list[dict[str, float]],
                     metrics: dict[str, float], tags: dict[str, str],
                     documents: dict[str, dict] | None = None,
                     inputs: list[tuple[pd.DataFrame, str, str, str]] = (),
                     started_at: float | None = None) -> Registered:
    """One MLflow run: params, per-epoch curves, final metrics, the model (with its
    config and item table), registered as a new ``behaviour_encoder`` version
    with alias ``challenger``. ``inputs``: (frame, name, source path, context)
    logged as MLflow datasets with their digests; ``tags`` go on the run and on
    the registered version (lineage). ``started_at`` (unix seconds): when training
    began, the run's start time, so its duration is the training's."""
    experiment_id = ensure_experiment(tracking_uri, artifact_location)
    created = client(tracking_uri).create_run(
        experiment_id, tags=tags,
        start_time=None if started_at is None else int(started_at * 1000))
    with mlflow.start_run(run_id=created.info.run_id) as run:
        mlflow.log_params(params)
        for step, row in enumerate(history, start=1):
            mlflow.log_metrics(row, step=step)
        mlflow.log_metrics(metrics)
        for frame, name, source, purpose in inputs:
            mlflow.log_input(logged_dataset(frame, source, name), context=purpose)
        mlflow.log_dict(model.config.to_dict(), "encoder_config.json")
        for name, document in (documents or {}).items():
            mlflow.log_dict(document, name)
        with tempfile.TemporaryDirectory() as scratch:
            encoder_dir = save_model(model, Path(scratch) / ENCODER_ARTIFACT)
            info = mlflow.pyfunc.log_model(
                name="model", python_model=str(PYFUNC_CODE),
                artifacts={ENCODER_ARTIFACT: str(encoder_dir)},
                registered_model_name=MODEL_NAME, signature=PYFUNC_SIGNATURE,
                # faiss: training.checkpoint reads a large catalogue's item index
                pip_requirements=["torch==2.13.0", "transformers==5.23.0", "safetensors==0.8.0",
                                  "faiss-cpu==1.15.1"],
            )
    version = str(info.registered_model_version)
    c = client(tracking_uri)
    _describe(c, MODEL_NAME)
    for key, value in tags.items():
        c.set_model_version_tag(MODEL_NAME, version, key, value)
    c.set_registered_model_alias(MODEL_NAME, CHALLENGER, version)
    return Registered(version=version, run_id=run.info.run_id)


def logged_dataset(frame: pd.DataFrame, source: str, name: str) -> PandasDataset:
    """``mlflow.data.from_pandas(frame, source, name=name)`` with the same digest
    and schema, computed without MLflow's Python call per value of every row
    (minutes and GBs at tens of millions of events): the digest, as MLflow's, from
    the first ``MAX_ROWS`` rows and the row count (string columns told from those
    rows: a typed table's columns hold one type); the column types from those
    rows, and whether a column is required (never missing) from all of it."""
    head = frame.head(MAX_ROWS)
    strings = head.columns[head.map(lambda value: isinstance(value, str)).all(0)]
    hashed = head[strings.union(head.select_dtypes(include=[np.number]).columns)]
    digest = get_normalized_md5_digest([pd.util.hash_pandas_object(hashed).values,
                                        np.int64(len(frame))]
                                       + [str(c).encode() for c in frame.columns])
    dataset = mlflow.data.from_pandas(frame, source=source, name=name, digest=digest)
    # ``schema`` is a cached property: set here, MLflow does not infer it again.
    dataset.__dict__["schema"] = Schema([
        ColSpec(type=spec.type, name=spec.name, required=not frame[spec.name].isna().any())
        for spec in infer_signature(head).inputs.inputs])
    return dataset


# What the registry answers for an alias (or a model) that does not exist; any
# other error (the registry unreachable) is raised, never read as "no version".
NOT_FOUND = frozenset({"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"})


def alias_version(tracking_uri: str, alias: str, name: str = MODEL_NAME) -> str | None:
    """The version behind ``alias``; None when the model or the alias does not exist."""
    try:
        return str(client(tracking_uri).get_model_version_by_alias(name, alias).version)
    except MlflowException as error:
        if error.error_code in NOT_FOUND:
            return None
        raise


@dataclass(frozen=True)
class PromotionDecision:
    promote: bool
    reason: str


def decide_promotion(challenger: str, challenger_score: float, champion: str | None,
                     champion_score: float | None, min_margin: float = 0.0,
                     ) -> PromotionDecision:
    """Promote when there is no champion, or when the challenger's validation
    NDCG@10 beats the champion's (measured on the same data) by more than
    ``min_margin``."""
    if champion is None or champion_score is None:
        return PromotionDecision(True, "no champion yet")
    if champion == challenger:
        return PromotionDecision(False, f"version {challenger} is already champion")
    verdict = (f"challenger v{challenger} {challenger_score:.4f} vs champion v{champion} "
               f"{champion_score:.4f} (margin {min_margin})")
    return PromotionDecision(challenger_score > champion_score + min_margin, verdict)


HISTORY_TAG = "champion_history"  # JSON list of versions that were champion, oldest first


def champion_history(tracking_uri: str) -> list[str]:
    tags = client(tracking_uri).get_registered_model(MODEL_NAME).tags
    return json.loads(tags.get(HISTORY_TAG, "[]"))


def set_champion(tracking_uri: str, version: str) -> None:
    """Point ``champion`` at ``version`` (which must exist) and record it in the history."""
    c = client(tracking_uri)
    c.get_model_version(MODEL_NAME, str(version))  # a clear error for a version that is not
    c.set_registered_model_alias(MODEL_NAME, CHAMPION, str(version))
    history = champion_history(tracking_uri)
    if not history or history[-1] != str(version):
        c.set_registered_model_tag(MODEL_NAME, HISTORY_TAG,
                                   json.dumps(history + [str(version)]))


def rollback_champion(tracking_uri: str) -> str:
    """Move ``champion`` back to the version that was champion before this one."""
    history = champion_history(tracking_uri)
    if len(history) < 2:
        raise ValueError(f"no earlier champion to roll back to (history: {history})")
    previous = history[-2]
    c = client(tracking_uri)
    c.set_registered_model_alias(MODEL_NAME, CHAMPION, previous)
    c.set_registered_model_tag(MODEL_NAME, HISTORY_TAG, json.dumps(history[:-1]))
    return previous


def load_document(tracking_uri: str, version: str, name: str) -> dict:
    """A JSON document logged with the run that produced ``version``."""
    run_id = client(tracking_uri).get_model_version(MODEL_NAME, version).run_id
    return mlflow.artifacts.load_dict(f"runs:/{run_id}/{name}")


def load_version(tracking_uri: str, version: str) -> BehaviourEncoder:
    """Version ``version`` rebuilt from its plain files (``training.checkpoint``):
    weights read as tensors only, so a tampered registry cannot run code here."""
    root = _version_root(tracking_uri, MODEL_NAME, version)
    artifacts = Model.load(str(root / "MLmodel")).flavors.get("python_function", {}).get(
        "artifacts", {})
    if ENCODER_ARTIFACT not in artifacts:
        raise ModelFormatError(
            f"{MODEL_NAME} version {version} has no {ENCODER_ARTIFACT!r} artifact ({NO_PICKLES})")
    return load_model(root / artifacts[ENCODER_ARTIFACT]["path"])


def register_text_encoder(tracking_uri: str, artifact_location: str | None, model_dir: Path,
                          dim: int) -> tuple[str, bool]:
    """``item_text_encoder``: the pretrained model directory logged as an MLflow
    pyfunc (weights and tokenizer as artifacts), registered with alias ``champion``.
    A directory whose bytes are already registered is not logged again.
    Returns (version, whether it was new)."""
    digest = tree_sha256(model_dir)
    c = client(tracking_uri)
    found = c.search_model_versions(f"name='{TEXT_MODEL_NAME}' and "
                                    f"tag.{TEXT_MODEL_SHA_TAG}='{digest}'")
    if found:
        version = str(max(int(v.version) for v in found))
        c.set_registered_model_alias(TEXT_MODEL_NAME, CHAMPION, version)
        return version, False
    experiment_id = ensure_experiment(tracking_uri, artifact_location, TEXT_EXPERIMENT)
    tags = {TEXT_MODEL_SHA_TAG: digest, "model_dir": str(model_dir)}
    with mlflow.start_run(experiment_id=experiment_id, tags=tags):
        mlflow.log_params({"pooling": "mean", "normalised": True, "dim": dim})
        info = mlflow.pyfunc.log_model(
            name="model", python_model=str(TEXT_PYFUNC_CODE),
            artifacts={"model_dir": str(model_dir)}, registered_model_name=TEXT_MODEL_NAME,
            pip_requirements=["torch==2.13.0", "transformers==5.23.0"])
    version = str(info.registered_model_version)
    _describe(c, TEXT_MODEL_NAME)
    for key, value in tags.items():
        c.set_model_version_tag(TEXT_MODEL_NAME, version, key, value)
    c.set_registered_model_alias(TEXT_MODEL_NAME, CHAMPION, version)
    return version, True


def _version_root(tracking_uri: str, name: str, version: str) -> Path:
    """A registered version's model directory as a local path (downloaded first when
    the artifact store is remote)."""
    source = client(tracking_uri).get_model_version_download_uri(name, version)
    return (Path(source.removeprefix("file://")) if source.startswith("file://")
            else Path(mlflow.artifacts.download_artifacts(source)))


def text_encoder_dir(tracking_uri: str, version: str) -> Path:
    """The registered text model's directory, as a local path."""
    root = _version_root(tracking_uri, TEXT_MODEL_NAME, version)
    flavor = Model.load(str(root / "MLmodel")).flavors["python_function"]
    return root / flavor["artifacts"]["model_dir"]["path"]


def version_run(tracking_uri: str, version: str):
    """The MLflow run that produced ``behaviour_encoder`` version ``version``."""
    c = client(tracking_uri)
    return c.get_run(c.get_model_version(MODEL_NAME, str(version)).run_id)


def log_metrics_to_run(tracking_uri: str, run_id: str, metrics: dict[str, float]) -> None:
    """Add metrics to a finished run (evaluations computed after registration)."""
    c = client(tracking_uri)
    for name, value in metrics.items():
        c.log_metric(run_id, name, float(value))


def metric_curves(tracking_uri: str, run_id: str, names: list[str]
                  ) -> dict[str, list[tuple[int, float]]]:
    """Per-epoch history of each metric: name -> [(step, value)] in step order."""
    c = client(tracking_uri)
    return {n: sorted((m.step, m.value) for m in c.get_metric_history(run_id, n))
            for n in names}
