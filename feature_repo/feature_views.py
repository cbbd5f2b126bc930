"""Feature views: entity + content."""

from __future__ import annotations

from datetime import timedelta

from feast import FeatureView, Field
from feast.types import Array, Int64, String

from feature_repo.data_sources import user_recent_items_push
from feature_repo.entities import user
from infra.settings import Settings

# A user's sequence is still a useful signal after a long pause, but not forever.
USER_RECENT_ITEMS_TTL = timedelta(days=365)
USER_RECENT_ITEMS = "user_recent_items"


def user_recent_items(settings: Settings) -> FeatureView:
    return FeatureView(
        name=USER_RECENT_ITEMS,
        entities=[user],
        ttl=USER_RECENT_ITEMS_TTL,
        schema=[
            Field(name="recent_item_ids", dtype=Array(String),
                  description=f"Last {settings.recent_items} item ids, oldest first."),
            Field(name="recent_timestamps", dtype=Array(Int64),
                  description="Event times (unix microseconds) of recent_item_ids."),
        ],
        source=user_recent_items_push(settings),
        online=True,
        description="The user's most recent interactions, the behaviour encoder's input.",
    )
