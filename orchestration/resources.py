"""Typed Dagster resources for every external system, built from one Settings."""


import json
from pathlib import Path

from dagster import ConfigurableResource
from feast import FeatureStore

from feature_repo.store import open_store
from infra import redis_server
from infra.settings import Settings
from orchestration.sources.base import CHUNK_ROWS, Source
from orchestration.sources.detect import detect_source
from orchestration.sources.generator import GeneratorConfig, generate, write_canonical


class RecsysState(ConfigurableResource):
    """The state directory and the behaviour source (``None`` = built-in generator)."""

    home: str
    source: str | None = None
    recent_items: int = 50
    future_tolerance_s: float = 86400.0
    generator_users: int = 2000
    generator_items: int = 1000
    generator_events: int = 100_000
    generator_seed: int = 7
    chunk_rows: int = CHUNK_ROWS  # rows per chunk when reading and validating events
    retrain_min_new_events: int = 10_000  # validated events that start a retraining run

    def settings(self) -> Settings:
        return Settings(home=Path(self.home), source=Path(self.source) if self.source else None,
                        recent_items=self.recent_items,
                        future_tolerance_s=self.future_tolerance_s)

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
    """Feast on Redis: ``REDIS_URL`` when given, else the embedded Redis under home."""

    home: str
    redis_url: str | None = None
    recent_items: int = 50

    def settings(self) -> Settings:
        return Settings(home=Path(self.home), redis_url=self.redis_url,
                        recent_items=self.recent_items)

    def store(self) -> FeatureStore:
        settings = self.settings()
        return open_store(settings, redis_server.ensure(settings).url)


class MlflowResource(ConfigurableResource):
    """MLflow tracking and registry: the external server, or a store under home."""

    tracking_uri: str
    artifact_location: str | None = None


def resources_from_settings(settings: Settings) -> dict:
    home = str(settings.home)
    return {
        "state": RecsysState(home=home, source=str(settings.source) if settings.source else None,
                             recent_items=settings.recent_items,
                             future_tolerance_s=settings.future_tolerance_s),
        "feature_store": FeatureStoreResource(home=home, redis_url=settings.redis_url,
                                              recent_items=settings.recent_items),
        "mlflow": MlflowResource(
            tracking_uri=settings.tracking_uri(),
            artifact_location=None if settings.mlflow_tracking_uri
            else settings.artifact_location()),
    }
