"""The service's privacy boundary: a caller's user id becomes its stored key
(``feature_repo.privacy``: the pseudonym, when pseudonymisation is on) before any
read or write, and forgotten users lose their learned vector at once.

Each worker holds the set of tombstones, refreshed from Redis when the tombstone
counter moves (checked with the fleet's reload counter, every watch tick), and
adds its own at once when it answers ``POST /forget``.
"""

from __future__ import annotations

import logging
import threading
import time

import redis

from feature_repo.event_rules import EventRules
from feature_repo.privacy import (
    TOMBSTONES_KEY,
    PseudonymKeyError,
    Pseudonyms,
    Tombstone,
    forget_online,
    load_key,
    online_tombstones,
    record,
    record_audit,
    tombstones_version,
)
from infra.settings import Settings

log = logging.getLogger("recsys.serving")


class PrivacyBoundary:
    def __init__(self, settings: Settings):
        self.settings = settings
        # The key is read at start: a replica without it refuses to start rather
        # than store ids it cannot pseudonymise.
        self.pseudonyms = Pseudonyms.from_settings(settings)
        self._tombstone_keys: set[str] = set()
        self._version: int | None = None
        self._lock = threading.Lock()
        self._hasher: Pseudonyms | None = self.pseudonyms

    def stored(self, user_id: object, rules: EventRules) -> object:
        """The key a caller's user id is stored under (the id itself when
        pseudonymisation is off)."""
        if self.pseudonyms is None:
            return user_id
        return self.pseudonyms.stored(user_id, rules.id_pattern)

    def stored_events(self, events: list[object], rules: EventRules) -> list[object]:
        if self.pseudonyms is None:
            return events
        return [{**e, "user_id": self.stored(e.get("user_id"), rules)}
                if isinstance(e, dict) else e for e in events]

    def _tombstone_of(self, stored: str) -> str | None:
        if self._hasher is None:  # pseudonymisation off: tombstones are keyed hashes
            try:
                self._hasher = Pseudonyms(load_key(self.settings), enabled=False)
            except PseudonymKeyError:  # no key: nobody has been forgotten yet
                return None
        return self._hasher.tombstone(stored)

    def forgotten(self, stored: str) -> bool:
        """Whether the user was forgotten (their learned vector is not used)."""
        if not self._tombstone_keys:
            return False
        return self._tombstone_of(stored) in self._tombstone_keys

    def refresh(self, client: redis.Redis) -> None:
        """Reload the tombstones when another worker or ``recsys forget`` added one."""
        version = tombstones_version(client)
        if version == self._version:
            return
        keys = set(online_tombstones(client))
        with self._lock:
            self._tombstone_keys, self._version = keys | self._tombstone_keys, version

    def forget(self, client: redis.Redis, events_client: redis.Redis, stored: str,
               in_model: bool, reason: str) -> dict:
        """Remove the user from Redis (online row, event stream) and record the
        tombstone (when anything was held for them) and the audit entry. The
        offline copies follow when the pipeline host applies the tombstone
        (``orchestration.privacy.apply_pending``)."""
        key = self._tombstone_of(stored)
        if key is None:
            raise PseudonymKeyError(
                "no pseudonym key to write a tombstone with: run the pipeline (it creates "
                f"{self.settings.pseudonym_key_path}) or set RECSYS_PSEUDONYM_KEY")
        removed = {k: v for k, v in forget_online(
            client, events_client, self.settings.feast_project, stored).items() if v}
        already = client.hexists(TOMBSTONES_KEY, key)
        known = bool(removed) or in_model or already
        now = time.time()
        entry = {"at": now, "request": "forget", "by": "api", "tombstone": key,
                 "reason": reason, "removed": removed,
                 "outcome": "forgotten" if known else "no_op"}
        if known and not already:
            record(client, Tombstone(key=key, at=now, reason=reason, by="api"), entry)
        else:
            record_audit(client, entry)
        if known:
            with self._lock:
                self._tombstone_keys.add(key)
        return {"known": known, "already_forgotten": bool(already), "removed": removed}
