"""Feature views: entity + content, with TTLs that say how long a value stays true."""

from __future__ import annotations

from datetime import timedelta

from feast import FeatureView, Field
from feast.types import Array, Float32, Float64, Int64, String

from feature_repo import data_sources
from feature_repo.entities import item, user
from infra.settings import Settings

USER_RECENT_ITEMS = "user_recent_items"
USER_PROFILE = "user_profile"
ITEM_POPULARITY = "item_popularity"
ITEM_CONTENT = "item_content"

# A user's sequence and profile are still useful after a long pause, but not forever.
USER_RECENT_ITEMS_TTL = timedelta(days=365)
USER_PROFILE_TTL = timedelta(days=365)
# Counts over windows of at most 30 days say nothing once 30 days have passed.
ITEM_POPULARITY_TTL = timedelta(days=30)
# An item's text does not go stale (0 = no expiry in Feast).
ITEM_CONTENT_TTL = timedelta(0)
TEXT_EMBEDDING_DIM = 384  # all-MiniLM-L6-v2


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
        source=data_sources.user_recent_items_push(settings),
        online=True,
        description="The user's most recent interactions, the behaviour encoder's input.",
    )


def user_profile(settings: Settings) -> FeatureView:
    return FeatureView(
        name=USER_PROFILE,
        entities=[user],
        ttl=USER_PROFILE_TTL,
        schema=[
            Field(name="event_count", dtype=Int64, description="Events so far."),
            Field(name="last_event_us", dtype=Int64,
                  description="Time of the latest event (unix microseconds): recency."),
            Field(name="mean_rating", dtype=Float64,
                  description="Mean of the ratings so far (NaN before the first)."),
            Field(name="top_genres", dtype=Array(String),
                  description="The most frequent genres among the items seen so far."),
            Field(name="top_genre_shares", dtype=Array(Float64),
                  description="Share of each of top_genres in the user's history."),
        ],
        source=data_sources.user_profile_source(settings),
        online=True,
        description="Who the user is so far: activity, recency, ratings, genre affinity.",
    )


def item_popularity(settings: Settings) -> FeatureView:
    return FeatureView(
        name=ITEM_POPULARITY,
        entities=[item],
        ttl=ITEM_POPULARITY_TTL,
        schema=[Field(name=f"count_{d}d", dtype=Int64,
                      description=f"Events of the item in the {d} days up to this one.")
                for d in (1, 7, 30)],
        source=data_sources.item_popularity_source(settings),
        online=True,
        description="How popular the item is, as of event time.",
    )


def item_content(settings: Settings) -> FeatureView:
    return FeatureView(
        name=ITEM_CONTENT,
        entities=[item],
        ttl=ITEM_CONTENT_TTL,
        schema=[
            Field(name="text_embedding", dtype=Array(Float32),
                  description=f"{TEXT_EMBEDDING_DIM}-d unit vector of title, genres and "
                              "description from the pretrained text encoder."),
            Field(name="genres", dtype=Array(String), description="The item's genres."),
        ],
        source=data_sources.item_content_source(settings),
        online=True,
        description="What the item is about, known before anyone interacts with it.",
    )
