"""Features: computed once from validated events, written to the offline store
(parquet) and materialised into the online store (Redis) through Feast."""


import time

import pandas as pd
from dagster import AssetExecutionContext, MaterializeResult, MetadataValue, asset

from feature_repo.data_sources import USER_RECENT_ITEMS_FILE
from feature_repo.recent_items import recent_items_table
from feature_repo.store import apply_definitions
from orchestration.assets.ingest import read_validated_events
from orchestration.resources import FeatureStoreResource, RecsysState


@asset(group_name="features", deps=["validated_events"])
def user_recent_items_offline(state: RecsysState) -> MaterializeResult:
    """Offline table of user_recent_items: one row per event (the last N items after it)."""
    settings = state.settings()
    events = read_validated_events(settings)
    table = recent_items_table(events, settings.recent_items)
    path = settings.offline_dir / USER_RECENT_ITEMS_FILE
    table.to_parquet(path, index=False)
    return MaterializeResult(metadata={
        "row_count": len(table), "users": int(table["user_id"].nunique()),
        "path": MetadataValue.path(str(path)),
    })


@asset(group_name="features", deps=["user_recent_items_offline"])
def feast_definitions(feature_store: FeatureStoreResource) -> MaterializeResult:
    """Feast registry: entities, sources, views and feature services applied."""
    names = apply_definitions(feature_store.store(), feature_store.settings())
    return MaterializeResult(metadata={"applied": MetadataValue.json(names)})


@asset(group_name="features", deps=["feast_definitions"])
def online_user_features(context: AssetExecutionContext, state: RecsysState,
                         feature_store: FeatureStoreResource) -> MaterializeResult:
    """user_recent_items materialised into Redis (the latest row per user)."""
    path = state.settings().offline_dir / USER_RECENT_ITEMS_FILE
    times = pd.read_parquet(path, columns=["event_timestamp"])["event_timestamp"]
    start, end = times.min(), times.max() + pd.Timedelta(seconds=1)
    store = feature_store.store()
    started = time.perf_counter()
    store.materialize(start_date=start.to_pydatetime(), end_date=end.to_pydatetime(),
                      feature_views=["user_recent_items"])
    seconds = time.perf_counter() - started
    users = int(pd.read_parquet(path, columns=["user_id"])["user_id"].nunique())
    return MaterializeResult(metadata={
        "users": users, "start": str(start), "end": str(end),
        "materialize_seconds": round(seconds, 2),
    })
