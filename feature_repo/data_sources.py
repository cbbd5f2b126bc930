"""Sources: offline parquet tables under ``$RECSYS_HOME/offline`` and the push
source that real-time events arrive through. Paths come from settings."""

from __future__ import annotations

from feast import FileSource, PushSource

from infra.settings import Settings

USER_RECENT_ITEMS_FILE = "user_recent_items.parquet"
USER_RECENT_ITEMS_PUSH = "user_recent_items_push"
USER_PROFILE_FILE = "user_profile.parquet"
ITEM_POPULARITY_FILE = "item_popularity.parquet"
ITEM_CONTENT_FILE = "item_content.parquet"


def _file_source(settings: Settings, name: str, file: str, description: str) -> FileSource:
    return FileSource(name=name, path=str(settings.offline_dir / file),
                      timestamp_field="event_timestamp", description=description)


def user_recent_items_source(settings: Settings) -> FileSource:
    return _file_source(settings, "user_recent_items_source", USER_RECENT_ITEMS_FILE,
                        "One row per event: the user's most recent items after that event.")


def user_recent_items_push(settings: Settings) -> PushSource:
    return PushSource(
        name=USER_RECENT_ITEMS_PUSH,
        batch_source=user_recent_items_source(settings),
        description="Real-time updates of user_recent_items from the /events endpoint.",
    )


def user_profile_source(settings: Settings) -> FileSource:
    return _file_source(settings, "user_profile_source", USER_PROFILE_FILE,
                        "One row per event: the user's profile after that event.")


def item_popularity_source(settings: Settings) -> FileSource:
    return _file_source(settings, "item_popularity_source", ITEM_POPULARITY_FILE,
                        "One row per event: the item's trailing-window counts at that event.")


def item_content_source(settings: Settings) -> FileSource:
    return _file_source(settings, "item_content_source", ITEM_CONTENT_FILE,
                        "One row per catalogue item: its text embedding and genres.")
