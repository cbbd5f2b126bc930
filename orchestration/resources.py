"""Typed Dagster resources for every external system, built from one Settings."""

from __future__ import annotations

import json

from dagster import ConfigurableResource
from feast import FeatureStore

from feature_repo.store import open_store
from infra import redis_server
from infra.settings import Settings
from orchestration.sources.base import CHUNK_ROWS, Source
from orchestration.sources.detect import detect_source
from orchestration.sources.generator import GeneratorConfig, generate, write_canonical


class RecsysState(ConfigurableResource):
    """The whole ``Settings`` (state directory, behaviour source, every service and
    knob) plus the pipeline's own knobs: the built-in generator's size, chunking and
    the retraining threshold."""

    settings_json: str  # Settings.to_json(): every setting reaches every asset
    generator_users: int = 2000
    generator_items: int = 1000
    generator_events: int = 100_000
    generator_seed: int = 7
    chunk_rows: int = CHUNK_ROWS  # rows per chunk when reading and validating events
    retrain_min_new_events: int = 10_000  # validated events that start a retraining run

    @classmethod
    def of(cls, settings: Settings, **knobs) -> RecsysState:
        return cls(settings_json=settings.to_json(), **knobs)

    def settings(self) -> Settings:
        return Settings.from_json(self.settings_json)

    def open_source(self) -> Source:
        settings = self.settings()
        if settings.source is not None:
            return detect_source(settings.source)
        config = GeneratorConfig(users=self.generator_users, items=self.generator_items,
                                 events=self.generator_events, seed=self.generator_seed)
        directory = settings.generated_source_dir
        marker = directory / "generator.json"
        wanted = json.dumps(config.__dict__, sort_keys=True)
        if not marker.exists() or marker.read_text() != wanted:
            write_canonical(generate(config), directory)
            marker.write_text(wanted)
        return detect_source(directory)


class FeatureStoreResource(ConfigurableResource):
    """Feast on Redis (``REDIS_URL`` or the embedded Redis under home, a Redis Cluster
    when ``RECSYS_REDIS_CLUSTER``), with the offline store the settings name."""

    settings_json: str  # Settings.to_json()

    def settings(self) -> Settings:
        return Settings.from_json(self.settings_json)

    def store(self) -> FeatureStore:
        settings = self.settings()
        return open_store(settings, redis_server.ensure(settings).url)


class MlflowResource(ConfigurableResource):
    """MLflow tracking and registry: the external server, or a store under home."""

    tracking_uri: str
    artifact_location: str | None = None


def resources_from_settings(settings: Settings, **state_knobs) -> dict:
    """Every resource, built from one ``Settings`` (the only place they are built)."""
    return {
        "state": RecsysState.of(settings, **state_knobs),
        "feature_store": FeatureStoreResource(settings_json=settings.to_json()),
        "mlflow": MlflowResource(
            tracking_uri=settings.tracking_uri(),
            artifact_location=None if settings.mlflow_tracking_uri
            else settings.artifact_location()),
    }
