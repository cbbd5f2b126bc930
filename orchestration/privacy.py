"""The offline side of privacy: pseudonyms and tombstones applied at ingest, and a
user forgotten in every copy under ``RECSYS_HOME``.

- ``IngestGuard`` sits between a source and the raw copy: it pseudonymises the
  source's user ids (``RECSYS_PSEUDONYMISE``) and leaves out, counted as
  forgotten, the rows of forgotten users from before their tombstone.
- ``forget_offline`` removes rows of forgotten users from every parquet file with
  a ``user_id`` column under ``RECSYS_HOME`` (raw copies, validated events,
  quarantine, feature tables, the training set) and from the event log, keeping
  the ingest ledger's counts and offsets true.
- ``forget`` (``recsys forget``) does a whole request: Redis (online rows, the
  event stream, the tombstone every service worker honours) and the offline side.
  ``apply_pending`` applies the requests the service took (``POST /forget``) to
  the offline side: the service has no access to the pipeline host's disk.

Every request is recorded in ``privacy/audit.jsonl`` under its tombstone key,
never the id. docs/privacy.md has the whole flow.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import redis

from feature_repo.privacy import (
    AUDIT_KEY,
    TOMBSTONES_KEY,
    Pseudonyms,
    Tombstone,
    TombstoneFile,
    append_lines,
    compact_persistence,
    forget_online,
    load_key,
    online_tombstones,
    pseudonym,
    record,
)
from feature_repo.schema import parse_timestamps
from infra import event_stream, redis_server
from infra.fingerprint import file_sha256
from infra.settings import Settings
from orchestration.ledger import Ledger
from orchestration.sources.event_log import locked

# Trees under RECSYS_HOME that are not the platform's copies of behaviour data: the
# built-in generator's output is the source itself (never modified), and MLflow's
# files are the registry's (docs/privacy.md says how long they keep what).
NOT_COPIES = ("generated_source", "mlflow", "mlflow-server")


def _keys(pseudonyms: Pseudonyms, users: pd.Series) -> pd.Series:
    """The tombstone key of each stored user id (computed once per distinct id)."""
    text = users.astype("string").str.strip()
    distinct = text.dropna().unique()
    return text.map({u: pseudonyms.tombstone(u) for u in distinct})


def forgotten_rows(frame: pd.DataFrame, pseudonyms: Pseudonyms,
                   tombstones: dict[str, Tombstone], time_column: str) -> pd.Series:
    """Rows of a forgotten user from before (or at) the tombstone's time; a row
    whose time cannot be read counts as before."""
    if not tombstones or frame.empty:
        return pd.Series(False, index=frame.index)
    at = _keys(pseudonyms, frame["user_id"]).map(
        {k: t.at for k, t in tombstones.items()}).astype(float)
    times = frame[time_column]
    seconds = (parse_timestamps(times) if times.dtype == object or times.dtype == "string"
               else (pd.to_datetime(times, utc=True) - pd.Timestamp(0, tz="UTC"))
               .dt.total_seconds())
    return at.notna() & (seconds.isna() | (seconds <= at))


class IngestGuard:
    """What raw ingestion applies to each chunk before it is written."""

    def __init__(self, settings: Settings, id_pattern: str):
        self.id_pattern = id_pattern
        self.tombstones = TombstoneFile(settings).read()
        # The key exists from the first ingest on, in both modes: tombstones are
        # keyed hashes even when ids are stored as given.
        self.pseudonyms = Pseudonyms(load_key(settings, create=True),
                                     enabled=settings.pseudonymise)

    def chunks(self, frames: Iterable[pd.DataFrame], from_source: bool,
               counts: dict[str, int]) -> Iterator[pd.DataFrame]:
        """``frames`` of raw rows -> what the raw copy holds. ``from_source``: ids as
        the source gives them (the event log holds stored ids already). Adds the
        rows read and the rows forgotten to ``counts``."""
        for frame in frames:
            counts["read"] = counts.get("read", 0) + len(frame)
            if from_source and self.pseudonyms.enabled:
                frame = frame.assign(user_id=self.pseudonyms.column(frame["user_id"],
                                                                    self.id_pattern))
            if self.tombstones:
                gone = forgotten_rows(frame, self.pseudonyms, self.tombstones, "timestamp")
                counts["forgotten"] = counts.get("forgotten", 0) + int(gone.sum())
                frame = frame[~gone.to_numpy()]
            yield frame


@dataclass
class Removed:
    """What a deletion removed, by place (rows, lines, keys)."""

    counts: dict[str, int] = field(default_factory=dict)

    def add(self, place: str, n: int) -> None:
        if n:
            self.counts[place] = self.counts.get(place, 0) + n

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def _parquet_copies(settings: Settings) -> list[Path]:
    skip = [settings.home / name for name in NOT_COPIES]
    return [p for p in sorted(settings.home.rglob("*.parquet"))
            if not any(p.is_relative_to(s) for s in skip)
            and "user_id" in pq.read_schema(p).names]


def _time_column(names: list[str]) -> str:
    return "timestamp" if "timestamp" in names else "event_timestamp"


def _rewrite_parquet(path: Path, pseudonyms: Pseudonyms,
                     tombstones: dict[str, Tombstone]) -> int:
    """Drop the rows of forgotten users from one parquet file; how many."""
    table = pq.read_table(path)
    frame = table.to_pandas()
    gone = forgotten_rows(frame, pseudonyms, tombstones, _time_column(table.column_names))
    if not gone.any():
        return 0
    kept = table.filter(pd.Series(~gone.to_numpy()).to_numpy())
    partial = path.with_name(f".{path.name}.forget.tmp")
    pq.write_table(kept, partial)
    os.replace(partial, path)
    return int(gone.sum())


def _rewrite_event_log(path: Path, pseudonyms: Pseudonyms,
                       tombstones: dict[str, Tombstone], ledger: Ledger) -> int:
    """Drop a forgotten user's lines from one event log file (under the log's lock)
    and move the ledger's byte offsets for the file to the same lines."""
    data = path.read_bytes()
    lines = data.splitlines(keepends=True)
    events = []
    for line in lines:
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            event = {}
        events.append(event if isinstance(event, dict) else {})
    frame = pd.DataFrame({"user_id": [e.get("user_id") for e in events],
                          "timestamp": [None if e.get("timestamp") is None
                                        else str(e["timestamp"]) for e in events]},
                         dtype=object)
    gone = forgotten_rows(frame, pseudonyms, tombstones, "timestamp").to_numpy()
    if not gone.any():
        return 0
    new_offset, old_offset, moved = 0, 0, {0: 0}
    kept = []
    for line, drop in zip(lines, gone, strict=True):
        old_offset += len(line)
        if not drop:
            kept.append(line)
            new_offset += len(line)
        moved[old_offset] = new_offset
    partial = path.with_name(f".{path.name}.forget.tmp")
    partial.write_bytes(b"".join(kept))
    os.replace(partial, path)
    for batch in ledger.batches:
        if batch.source == "event_log" and batch.file == path.name:
            batch.start_byte = moved.get(batch.start_byte, batch.start_byte)
            batch.end_byte = moved.get(batch.end_byte, batch.end_byte)
            batch.sha256 = file_sha256(path, batch.end_byte)
    return int(gone.sum())


def forget_offline(settings: Settings, pseudonyms: Pseudonyms,
                   tombstones: dict[str, Tombstone]) -> Removed:
    """Remove the rows of these forgotten users from every copy under RECSYS_HOME."""
    removed = Removed()
    if not tombstones:
        return removed
    ledger = Ledger(settings.ingest_ledger)
    by_part = {b.part: b for b in ledger.batches}
    tables = {settings.raw_events_dir: "raw_events",
              settings.validated_events_dir: "validated_events",
              settings.quarantine_dir: "quarantine"}
    for path in _parquet_copies(settings):
        n = _rewrite_parquet(path, pseudonyms, tombstones)
        table = tables.get(path.parent)
        removed.add(table or path.relative_to(settings.home).as_posix(), n)
        batch = by_part.get(path.name) if table else None
        if batch is not None and n:
            if table == "raw_events":
                batch.forgotten += n
            elif table == "validated_events" and batch.validated is not None:
                batch.validated -= n
            elif table == "quarantine" and batch.quarantined is not None:
                batch.quarantined -= n
                batch.reasons = _reasons(path)
    if settings.event_log_dir.is_dir():
        with locked(settings.event_log_dir):
            for path in sorted(settings.event_log_dir.glob("*.jsonl")):
                removed.add("event_log", _rewrite_event_log(path, pseudonyms, tombstones,
                                                            ledger))
    ledger.save()
    return removed


def _reasons(quarantine_part: Path) -> dict[str, int]:
    reasons = pd.read_parquet(quarantine_part, columns=["reason"])["reason"]
    counts = reasons.str.split("; ").explode().value_counts()
    return {str(k): int(v) for k, v in counts.items()}


def audit(settings: Settings, entries: list[dict]) -> None:
    append_lines(settings.privacy_dir / "audit.jsonl",
                 [json.dumps(e, sort_keys=True) for e in entries])


@dataclass(frozen=True)
class Forgotten:
    key: str  # the tombstone key (a pseudonym of the id)
    known: bool  # anything was held for the user
    removed: dict[str, int]


def _clients(settings: Settings) -> tuple[redis.Redis, redis.Redis]:
    online = redis_server.ensure(settings).client(timeout_s=30)
    return online, (event_stream.client(settings, timeout_s=30) if settings.events_url
                    else online)


def forget(settings: Settings, user_ids: list[str], reason: str, by: str = "cli",
           now: float | None = None) -> list[Forgotten]:
    """Forget users everywhere this host reaches: Redis and every copy under
    RECSYS_HOME. A user nothing is held for is a no-op (no tombstone), audited."""
    pseudonyms = Pseudonyms(load_key(settings, create=True), enabled=settings.pseudonymise)
    online, events = _clients(settings)
    now = time.time() if now is None else now
    results, entries, tombstones = [], [], {}
    for user_id in user_ids:
        text = str(user_id).strip()
        stored = pseudonym(pseudonyms.key, text) if settings.pseudonymise else text
        tombstone = Tombstone(key=pseudonyms.tombstone(stored), at=now, reason=reason, by=by)
        removed = Removed(dict(forget_online(online, events, settings.feast_project, stored)))
        offline = forget_offline(settings, pseudonyms, {tombstone.key: tombstone})
        for place, n in offline.counts.items():
            removed.add(place, n)
        removed.counts = {k: v for k, v in removed.counts.items() if v}
        known = removed.total > 0
        entry = {"at": now, "request": "forget", "by": by, "tombstone": tombstone.key,
                 "reason": reason, "outcome": "forgotten" if known else "no_op",
                 "removed": removed.counts}
        if known:
            tombstones[tombstone.key] = tombstone
            record(online, tombstone, entry)
        entries.append(entry)
        results.append(Forgotten(tombstone.key, known, removed.counts))
    TombstoneFile(settings).add(list(tombstones.values()))
    _file_service_audit(settings, online)
    audit(settings, entries)
    if tombstones:
        compact_persistence(online)
        if events is not online:
            compact_persistence(events)
    return results


def _file_service_audit(settings: Settings, client: redis.Redis) -> int:
    """Move the audit entries the service left in Redis into the audit file."""
    moved = 0
    while True:
        batch = client.lpop(AUDIT_KEY, 1000)
        if not batch:
            return moved
        audit(settings, [json.loads(b) for b in batch])
        moved += len(batch)


def apply_pending(settings: Settings, client: redis.Redis | None = None) -> Removed:
    """Apply the tombstones the service recorded to every copy under RECSYS_HOME
    (``raw_events`` runs this first; so does ``recsys forget``), and give Redis
    back any tombstone it lost (the file is the durable copy)."""
    client = client or _clients(settings)[0]
    held = TombstoneFile(settings).read()
    live = online_tombstones(client)
    new = {k: t for k, t in live.items() if k not in held}
    lost = [t for k, t in held.items() if k not in live]
    if lost:
        client.hset(TOMBSTONES_KEY, mapping={t.key: t.to_json() for t in lost})
    removed = Removed()
    if new:
        pseudonyms = Pseudonyms(load_key(settings), enabled=settings.pseudonymise)
        removed = forget_offline(settings, pseudonyms, new)
        TombstoneFile(settings).add(list(new.values()))
    _file_service_audit(settings, client)
    if new:
        audit(settings, [{"at": time.time(), "request": "apply", "by": "pipeline",
                          "tombstones": sorted(new), "removed": removed.counts}])
        compact_persistence(client)
    return removed

