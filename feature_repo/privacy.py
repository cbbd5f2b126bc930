"""Pseudonymous user keys, defined once: batch ingestion (before anything is
written) and the service (at its boundary) turn a user id into the same keyed
hash, so no store the platform runs holds the id a caller or a source uses.

- A valid id (by the source's id pattern) becomes ``p`` + the first 24 hex
  digits (96 bits) of HMAC-SHA256(key, id). Among a million users the chance of
  any collision is below 1e-17; ``Pseudonyms.column`` still checks every id it
  maps against the others it mapped, and stops ingestion on a collision.
- An invalid id (it fails the pattern) becomes ``?`` + 16 hex digits: it still
  fails validation with the reason it would have had, without being stored.
- A missing id stays missing.

The tombstone of a forgotten user is the pseudonym of their id in both modes:
with pseudonymisation on it is the stored key itself; off, the key file is
created on the first forget and the tombstone is still a keyed hash, never the id.
See docs/privacy.md.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd
import redis

from feature_repo.online_rows import RecentItemsRows
from infra import event_stream
from infra.settings import Settings

PSEUDONYM_PREFIX = "p"
PSEUDONYM_HEX = 24  # 96 bits
PSEUDONYM_PATTERN = rf"^{PSEUDONYM_PREFIX}[0-9a-f]{{{PSEUDONYM_HEX}}}$"
INVALID_PREFIX = "?"  # fails every id pattern: an invalid id, replaced
KEY_BYTES = 32


class PseudonymKeyError(RuntimeError):
    """The pseudonymisation key is missing or unreadable."""


class PseudonymCollision(RuntimeError):
    """Two different ids mapped to one pseudonym (practically impossible at 96 bits)."""


def load_key(settings: Settings, create: bool = False) -> bytes:
    """The key: ``RECSYS_PSEUDONYM_KEY``, else the key file (created, readable by
    its owner only, when ``create``: the pipeline and ``recsys forget`` create it;
    a serving replica must be given the same key, never a new one)."""
    if settings.pseudonym_key:
        return settings.pseudonym_key.encode()
    path = settings.pseudonym_key_path
    if path.exists():
        key = path.read_bytes().strip()
        if len(key) < 16:
            raise PseudonymKeyError(f"{path} holds {len(key)} bytes: a key has at least 16")
        return key
    if not create:
        raise PseudonymKeyError(
            f"no pseudonymisation key: set RECSYS_PSEUDONYM_KEY or RECSYS_PSEUDONYM_KEY_FILE "
            f"(the pipeline's key file is {path}); every host must use the same key")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(KEY_BYTES))
    return path.read_bytes().strip()


def _digest(key: bytes, text: str) -> str:
    return hmac.new(key, text.encode("utf-8"), hashlib.sha256).hexdigest()


def pseudonym(key: bytes, user_id: str) -> str:
    return PSEUDONYM_PREFIX + _digest(key, user_id)[:PSEUDONYM_HEX]


def is_pseudonym(value: str) -> bool:
    return re.fullmatch(PSEUDONYM_PATTERN, value) is not None


class Pseudonyms:
    """Maps user ids to their stored form. ``enabled`` False: ids are stored as
    given (only tombstones are keyed hashes)."""

    def __init__(self, key: bytes, enabled: bool):
        self.key, self.enabled = key, enabled
        # pseudonym -> the digest's next 64 bits: two ids with one pseudonym differ there
        self._seen: dict[str, str] = {}

    @classmethod
    def from_settings(cls, settings: Settings, create: bool = False) -> Pseudonyms | None:
        """The mapping when ``RECSYS_PSEUDONYMISE`` is on, else None."""
        if not settings.pseudonymise:
            return None
        return cls(load_key(settings, create), enabled=True)

    def stored(self, value: object, id_pattern: str) -> object:
        """A user id as a caller or a source gives it -> what is stored: its
        pseudonym when it is a valid id (a string or an integer matching
        ``id_pattern``), a replacement that fails every pattern when it is not,
        and a missing one (None, empty) unchanged."""
        if value is None or isinstance(value, bool) or not isinstance(value, str | int):
            return value
        text = str(value)
        if text == "":
            return value
        if re.fullmatch(id_pattern, text) is None:
            return INVALID_PREFIX + _digest(self.key, text)[:16]
        return pseudonym(self.key, text)

    def column(self, values: pd.Series, id_pattern: str) -> pd.Series:
        """``stored`` of every value of a raw column (stripped first, as validation
        strips), computed once per distinct value; every pseudonym is checked
        against the others this mapping made (``PseudonymCollision``)."""
        text = values.where(values.isna(), values.astype(str).str.strip())
        mapping = {}
        for value in text.dropna().unique():
            mapping[value] = stored = self.stored(value, id_pattern)
            if isinstance(stored, str) and is_pseudonym(stored):
                rest = _digest(self.key, value)[PSEUDONYM_HEX:PSEUDONYM_HEX + 16]
                if self._seen.setdefault(stored, rest) != rest:
                    raise PseudonymCollision(f"two user ids map to {stored}")
        return text.map(mapping).where(text.notna(), None)

    def tombstone(self, stored_id: str) -> str:
        """The tombstone key of a user, from the id as stored."""
        return stored_id if self.enabled else pseudonym(self.key, stored_id)


# Tombstones live in Redis (the service writes them, every worker reads them) and
# in a file under RECSYS_HOME (what ingestion honours even when Redis lost them).
# A hash tag keeps the keys on one Redis Cluster slot.
TOMBSTONES_KEY = "{recsys:privacy}:tombstones"  # hash: tombstone -> JSON {at, reason, by}
TOMBSTONES_VERSION_KEY = "{recsys:privacy}:version"  # bumped on every new tombstone
AUDIT_KEY = "{recsys:privacy}:audit"  # list: the service's requests, until filed offline


@dataclass(frozen=True)
class Tombstone:
    key: str  # pseudonym of the user's id
    at: float  # unix seconds: events up to this time are forgotten
    reason: str
    by: str  # who asked: "cli", "api"

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> Tombstone:
        return cls(**json.loads(text))


def record(client: redis.Redis, tombstone: Tombstone, audit: dict) -> None:
    """Store a tombstone and its audit entry in Redis, in one transaction."""
    pipe = client.pipeline(transaction=True)
    pipe.hset(TOMBSTONES_KEY, tombstone.key, tombstone.to_json())
    pipe.incr(TOMBSTONES_VERSION_KEY)
    pipe.rpush(AUDIT_KEY, json.dumps(audit, sort_keys=True))
    pipe.execute()


def record_audit(client: redis.Redis, audit: dict) -> None:
    client.rpush(AUDIT_KEY, json.dumps(audit, sort_keys=True))


def online_tombstones(client: redis.Redis) -> dict[str, Tombstone]:
    return {(k.decode() if isinstance(k, bytes) else k): Tombstone.from_json(v)
            for k, v in client.hgetall(TOMBSTONES_KEY).items()}


def tombstones_version(client: redis.Redis) -> int:
    return int(client.get(TOMBSTONES_VERSION_KEY) or 0)


class TombstoneFile:
    """``privacy/tombstones.jsonl``: every tombstone, one JSON object a line."""

    def __init__(self, settings: Settings):
        self.path = settings.privacy_dir / "tombstones.jsonl"

    def read(self) -> dict[str, Tombstone]:
        if not self.path.exists():
            return {}
        lines = self.path.read_text(encoding="utf-8").splitlines()
        return {t.key: t for t in map(Tombstone.from_json, filter(None, lines))}

    def add(self, tombstones: list[Tombstone]) -> None:
        known = self.read()
        new = [t for t in tombstones if t.key not in known]
        if new:
            append_lines(self.path, [t.to_json() for t in new])


def append_lines(path: Path, lines: list[str]) -> None:
    """Append lines to a file under RECSYS_HOME, fsynced, readable by its owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "a", encoding="utf-8") as f:
        f.write("".join(line + "\n" for line in lines))
        f.flush()
        os.fsync(f.fileno())


def forget_online(client: redis.Redis, events_client: redis.Redis, project: str,
                  stored_id: str) -> dict[str, int]:
    """Remove a user from Redis: their online row (every user view) and their
    entries on the event stream. What was removed, by place."""
    return {"online_rows": RecentItemsRows(client, project).delete(stored_id),
            "stream_events": event_stream.delete_user_entries(events_client, stored_id)}


def compact_persistence(client: redis.Redis, timeout_s: float = 60.0) -> bool:
    """Rewrite the append-only file from the data Redis holds now, so that deleted
    rows do not survive in its history; waits for the rewrite. False when this
    Redis has no AOF (its persistence is the operator's: docs/privacy.md)."""
    info = client.info("persistence")
    if not info.get("aof_enabled"):
        return False
    deadline = time.monotonic() + timeout_s
    while True:  # one rewrite at a time: wait out one already running
        try:
            client.bgrewriteaof()
            break
        except redis.ResponseError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    while time.monotonic() < deadline:
        info = client.info("persistence")
        if not info.get("aof_rewrite_in_progress") and not info.get("aof_rewrite_scheduled"):
            return True
        time.sleep(0.05)
    raise TimeoutError("the Redis AOF rewrite did not finish in time")
