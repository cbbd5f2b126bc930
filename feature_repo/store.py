"""The Feast store for a settings object: ``feature_store.yaml`` rendered under
``$RECSYS_HOME/feast`` (no host or path in the repository), definitions applied
from this package."""

from __future__ import annotations

import json
from urllib.parse import unquote, urlparse

import numpy as np
import pandas as pd
import yaml
from feast import FeatureStore

from feature_repo import feature_services, feature_views
from feature_repo.data_sources import user_recent_items_push
from feature_repo.entities import item, user
from infra.engine import Embedded, Ray
from infra.files import atomic_write_text
from infra.settings import Settings


def feast_connection_string(redis_url: str) -> str:
    """``redis://[user:password@]host:port[/db]`` (or ``rediss://``) -> Feast's
    ``host:port[,db=..][,username=..][,password=..][,ssl=true]``."""
    url = urlparse(redis_url)
    if url.scheme not in ("redis", "rediss"):
        raise ValueError(f"REDIS_URL must start with redis:// or rediss://, got {url.scheme}://")
    parts = [f"{url.hostname}:{url.port or 6379}"]
    db = (url.path or "/0").strip("/") or "0"
    if db != "0":
        parts.append(f"db={db}")
    if url.username:
        parts.append(f"username={unquote(url.username)}")
    if url.password:
        parts.append(f"password={unquote(url.password)}")
    if url.scheme == "rediss":
        parts.append("ssl=true")
    return ",".join(parts)


def render_config(settings: Settings, redis_url: str) -> dict:
    settings.feast_dir.mkdir(parents=True, exist_ok=True)
    config = {
        "project": settings.feast_project,
        "provider": "local",
        "registry": str(settings.feast_dir / "registry.db"),
        "online_store": {"type": "redis",
                         "redis_type": "redis_cluster" if settings.redis_cluster else "redis",
                         "connection_string": feast_connection_string(redis_url)},
        "offline_store": (json.loads(settings.feast_offline_store)
                          if settings.feast_offline_store else {"type": "duckdb"}),
        "entity_key_serialization_version": 3,
    }
    # The YAML holds the password when REDIS_URL has one: keep it private. Several
    # processes open the store at once (service workers, Dagster): replace the file
    # atomically, and only when it changes, so no reader ever sees half of it.
    path = settings.feast_dir / "feature_store.yaml"
    text = yaml.safe_dump(config, sort_keys=False)
    if not path.exists() or path.read_text() != text:
        atomic_write_text(path, text, mode=0o600)
    return config


def open_store(settings: Settings, redis_url: str) -> FeatureStore:
    render_config(settings, redis_url)
    return FeatureStore(repo_path=str(settings.feast_dir))


def definitions(settings: Settings) -> list:
    recent = feature_views.user_recent_items(settings)
    profile = feature_views.user_profile(settings)
    popularity = feature_views.item_popularity(settings)
    content = feature_views.item_content(settings)
    return [user, item, user_recent_items_push(settings), recent, profile, popularity, content,
            feature_services.behaviour_encoder_v1(recent),
            feature_services.item_text_encoder_v1(content),
            feature_services.monitoring_v1(profile, popularity)]


def apply_definitions(store: FeatureStore, settings: Settings) -> list[str]:
    objects = definitions(settings)
    store.apply(objects)
    return [o.name for o in objects]


# Entity rows per point-in-time join (``historical_features``).
ENTITY_ROWS_PER_JOIN = 200_000


def historical_features(store: FeatureStore, entity: pd.DataFrame, service: str,
                        join_key: str, rows_per_join: int = ENTITY_ROWS_PER_JOIN,
                        engine: Embedded | Ray | None = None) -> tuple[pd.DataFrame, int]:
    """``get_historical_features`` of the feature service for ``entity``, as blocks
    of whole entities (``join_key``, in sorted order), each its own join on
    ``engine`` (default: this process), and how many joins. A row's features do
    not depend on the other rows, so the result is one join's; but a join holds
    every earlier feature row of its entities, lists and all, which for a large
    history must fit in one process's memory."""
    keys = np.sort(entity[join_key].unique())
    blocks = max(1, -(-len(entity) // rows_per_join))
    block = np.searchsorted(keys, entity[join_key].to_numpy()) * blocks // max(1, len(keys))
    parts = [(str(store.repo_path), entity[block == b], service)
             for b in range(blocks) if (block == b).any()]
    frames = list((engine or Embedded()).map(join_block, parts))
    return pd.concat(frames, ignore_index=True), blocks


def join_block(repo_path: str, entity: pd.DataFrame, service: str) -> pd.DataFrame:
    """One point-in-time join, with the store at ``repo_path`` opened where it runs
    (a Ray task's process: a store does not travel)."""
    store = FeatureStore(repo_path=repo_path)
    return store.get_historical_features(
        entity_df=entity, features=store.get_feature_service(service)).to_df()
