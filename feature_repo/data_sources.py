"""Sources: offline parquet tables under ``$RECSYS_HOME/offline`` and the push
source that real-time events arrive through. Paths come from settings."""

from __future__ import annotations

from feast import FileSource, PushSource

from infra.settings import Settings

USER_RECENT_ITEMS_FILE = "user_recent_items.parquet"
USER_RECENT_ITEMS_PUSH = "user_recent_items_push"


def user_recent_items_source(settings: Settings) -> FileSource:
    return FileSource(
        name="user_recent_items_source",
        path=str(settings.offline_dir / USER_RECENT_ITEMS_FILE),
        timestamp_field="event_timestamp",
        description="One row per event: the user's most recent items after that event.",
    )


def user_recent_items_push(settings: Settings) -> PushSource:
    return PushSource(
        name=USER_RECENT_ITEMS_PUSH,
        batch_source=user_recent_items_source(settings),
        description="Real-time updates of user_recent_items from the /events endpoint.",
    )
