"""The online path: read user_recent_items and item_content (Feast's Redis layout,
thin readers: no Feast registry needed), and merge accepted events into
user_recent_items (one writer per user at a time, via a Redis lock)."""

from __future__ import annotations

import time

import numpy as np
import redis

from feature_repo.online_rows import ItemEmbeddingRows, RecentItemsRows
from feature_repo.recent_items import merge_recent

LOCK_PREFIX = "recsys:lock:user:"


class OnlineFeatures:
    def __init__(self, client: redis.Redis, project: str, recent_items: int,
                 lock_wait_s: float = 10.0, writer: redis.Redis | None = None):
        """``client`` reads; ``writer`` (default: the same) takes the locks and
        writes, which may wait for Redis's fsync. ``project``: the Feast project."""
        self.client = client
        self.writer = writer or client
        self.recent_items = recent_items
        self.lock_wait_s = lock_wait_s  # how long a writer waits for the user's lock
        # Reads and writes go through thin access to Feast's Redis layout (proved
        # equal to get_online_features and to push in the tests). The store is
        # rendered without key_ttl_seconds: rows do not expire in Redis.
        self.rows = RecentItemsRows(client, project)
        self.write_rows = RecentItemsRows(self.writer, project)
        self.embeddings = ItemEmbeddingRows(client, project)

    def recent(self, user_id: str) -> list[str]:
        """The user's recent item ids, oldest first ([] for an unknown user)."""
        return self.rows.read(user_id).item_ids

    def some_users(self, limit: int) -> list[str]:
        """Users with an online row (stored ids), up to ``limit``."""
        return self.rows.some_users(limit)

    def history_lengths(self, user_ids: list[str]) -> list[int]:
        """How many recent items each user has online (one pipelined round trip)."""
        return self.rows.lengths(user_ids)

    def append(self, user_id: str, items: list[str], timestamps_us: list[int]) -> list[str]:
        """Merge events into the user's online row; returns the new recent items."""
        with self.writer.lock(f"{LOCK_PREFIX}{user_id}", timeout=10, sleep=0.002,
                              blocking_timeout=self.lock_wait_s):
            row = self.write_rows.read(user_id)
            old_items, old_times, stamp_s = row.item_ids, row.timestamps_us, row.row_seconds
            new_items, new_times = merge_recent(old_items, old_times, items, timestamps_us,
                                                self.recent_items)
            # Feast's own writes (materialisation) skip a row whose time is not newer
            # than the stored one, which reads back in whole seconds here: stay
            # strictly above it, so a later batch write is ordered after this one.
            row_time = max(time.time_ns() // 1000, new_times[-1], (stamp_s + 1) * 1_000_000)
            self.write_rows.write(user_id, new_items, new_times, row_time)
            return new_items

    def item_embeddings(self, item_ids: list[str], batch: int = 1000) -> dict[str, np.ndarray]:
        """The online ``item_content`` text embeddings of these items (those with one)."""
        out = {}
        for start in range(0, len(item_ids), batch):
            chunk = item_ids[start:start + batch]
            for item, vector in zip(chunk, self.embeddings.read(chunk), strict=True):
                if vector is not None:
                    out[item] = np.asarray(vector, dtype=np.float32)
        return out
