"""Thin access to Feast's Redis layout for ``user_recent_items`` rows (a read is
one HMGET and two protobuf parses instead of ``get_online_features``' general
path, a write one HSET instead of ``FeatureStore.push``: docs/benchmarks.md,
Features; docs/experiments.md, Features), and reads of ``item_content``'s text
embeddings. With them the service needs Redis only, not Feast's registry file:
a replica on another host has nothing of the batch host's disk. Batch
materialisation writes whole views' rows the same way (``write_rows``): Feast's
general conversion costs more than the Redis writes.

The definitions stay in Feast; this is the hash Feast's Redis online store
writes (key = serialised entity key + project, field = murmur3 of
``view:feature``, plus ``_ts:view``). ``tests/integration/test_features.py`` proves that a
read returns exactly what ``get_online_features`` returns for the
``behaviour_encoder_v1`` feature service (and the item reader what it returns for
``item_content``), and that a write leaves exactly the hash ``push`` leaves, so a
change of Feast's layout fails a test rather than serving wrong features.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd
import redis
from feast import FeatureView
from feast.infra.key_encoding_utils import deserialize_entity_key
from feast.infra.online_stores.helpers import _mmh3, _redis_key
from feast.protos.feast.types.EntityKey_pb2 import EntityKey
from feast.protos.feast.types.Value_pb2 import Value
from feast.type_map import (
    PYTHON_LIST_VALUE_TYPE_TO_PROTO_VALUE,
    PYTHON_SCALAR_VALUE_TYPE_TO_PROTO_VALUE,
)
from feast.value_type import ValueType
from google.protobuf.timestamp_pb2 import Timestamp

from feature_repo.feature_views import ITEM_CONTENT, USER_RECENT_ITEMS

ENTITY_KEY_SERIALIZATION_VERSION = 3  # as rendered in feature_store.yaml


@dataclass(frozen=True)
class RecentItems:
    item_ids: list[str]  # oldest first
    timestamps_us: list[int]
    row_seconds: int  # the stored row's time, whole seconds (0 when there is no row)


def entity_key(join_key: str, value: str, project: str) -> bytes:
    entity = EntityKey(join_keys=[join_key], entity_values=[Value(string_val=value)])
    return _redis_key(project, entity, ENTITY_KEY_SERIALIZATION_VERSION)


def read_values(client: redis.Redis, keys: list[bytes], field: bytes) -> list[Value]:
    """One field of each hash as a parsed ``Value`` (empty where there is none), in
    one pipelined round trip."""
    with client.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.hget(key, field)
        raw = pipe.execute()
    values = [Value() for _ in raw]
    for value, data in zip(values, raw, strict=True):
        if data:
            value.ParseFromString(data)
    return values


class ItemEmbeddingRows:
    """item_content's view has no TTL (``ITEM_CONTENT_TTL`` is 0): a stored row is
    always current, so no row time is read."""

    def __init__(self, client: redis.Redis, project: str):
        self.client = client
        self.project = project
        self.field = _mmh3(f"{ITEM_CONTENT}:text_embedding")

    def read(self, item_ids: list[str]) -> list[list[float] | None]:
        """Each item's text embedding (None for an item without a row), one
        pipelined round trip."""
        keys = [entity_key("item_id", item_id, self.project) for item_id in item_ids]
        return [list(value.float_list_val.val) if value.HasField("float_list_val") else None
                for value in read_values(self.client, keys, self.field)]


class RecentItemsRows:
    def __init__(self, client: redis.Redis, project: str, ttl_seconds: int | None = None):
        self.client = client
        self.project = project
        self.ttl_seconds = ttl_seconds  # the online store's key_ttl_seconds, as Feast applies it
        self.fields = [_mmh3(f"{USER_RECENT_ITEMS}:recent_item_ids"),
                       _mmh3(f"{USER_RECENT_ITEMS}:recent_timestamps"),
                       f"_ts:{USER_RECENT_ITEMS}".encode()]

    def key(self, user_id: str) -> bytes:
        return entity_key("user_id", user_id, self.project)

    def read(self, user_id: str) -> RecentItems:
        items_bin, times_bin, ts_bin = self.client.hmget(self.key(user_id), self.fields)
        items, times, stamp = Value(), Value(), Timestamp()
        if items_bin:
            items.ParseFromString(items_bin)
        if times_bin:
            times.ParseFromString(times_bin)
        if ts_bin:
            stamp.ParseFromString(ts_bin)
        return RecentItems(item_ids=list(items.string_list_val.val),
                           timestamps_us=list(times.int64_list_val.val),
                           row_seconds=int(stamp.seconds))

    def delete(self, user_id: str) -> int:
        """Remove the user's online row: every user view (recent items, profile)
        lives in this one hash. 1 if there was one, else 0."""
        return self.client.delete(self.key(user_id))

    def some_users(self, limit: int, scan_rounds: int = 20) -> list[str]:
        """Up to ``limit`` user ids that have an online row (a bounded SCAN: a few
        round trips whatever the number of keys)."""
        users: list[str] = []
        cursor, suffix = 0, self.project.encode()
        for _ in range(scan_rounds):
            cursor, keys = self.client.scan(cursor, match=b"*" + suffix, count=1000)
            for key in keys:
                entity = deserialize_entity_key(key[:-len(suffix)],
                                                ENTITY_KEY_SERIALIZATION_VERSION)
                if list(entity.join_keys) == ["user_id"]:
                    users.append(entity.entity_values[0].string_val)
            if cursor == 0 or len(users) >= limit:
                break
        return users[:limit]

    def lengths(self, user_ids: list[str]) -> list[int]:
        """The number of recent items of each user's row (0 without one)."""
        keys = [self.key(user_id) for user_id in user_ids]
        return [len(items.string_list_val.val)
                for items in read_values(self.client, keys, self.fields[0])]

    def write(self, user_id: str, item_ids: list[str], timestamps_us: list[int],
              row_time_us: int) -> None:
        """Replace the user's row (no staleness check: the caller holds the user's
        lock and passes a row time newer than the stored one)."""
        items, times = Value(), Value()
        items.string_list_val.val.extend(item_ids)
        times.int64_list_val.val.extend(timestamps_us)
        stamp = Timestamp(seconds=row_time_us // 1_000_000,
                          nanos=(row_time_us % 1_000_000) * 1000)
        key = self.key(user_id)
        mapping = {self.fields[2]: stamp.SerializeToString(),
                   self.fields[0]: items.SerializeToString(),
                   self.fields[1]: times.SerializeToString()}
        if self.ttl_seconds:
            with self.client.pipeline(transaction=False) as pipe:
                pipe.hset(key, mapping=mapping)
                pipe.expire(key, self.ttl_seconds)
                pipe.execute()
        else:
            self.client.hset(key, mapping=mapping)


def _encoder(value_type: ValueType) -> Callable[[object], Value]:
    """A feature value -> its ``Value``, as Feast's ``python_values_to_proto_values``
    makes it for this type: a null (None, NaN) is the empty ``Value``, a list (or
    array) fills the type's list field, a scalar its scalar field."""
    if value_type in PYTHON_LIST_VALUE_TYPE_TO_PROTO_VALUE:
        proto_type, field, _ = PYTHON_LIST_VALUE_TYPE_TO_PROTO_VALUE[value_type]

        def encode_list(value) -> Value:
            if value is None or (isinstance(value, float) and math.isnan(value)):
                return Value()
            return Value(**{field: proto_type(val=list(value))})
        return encode_list
    field, convert, _ = PYTHON_SCALAR_VALUE_TYPE_TO_PROTO_VALUE[value_type]

    def encode_scalar(value) -> Value:
        if value is None or pd.isnull(value):
            return Value()
        return Value(**{field: convert(value)})
    return encode_scalar


def write_rows(client: redis.Redis, project: str, view: FeatureView, join_key: str,
               rows: pd.DataFrame, ttl_seconds: int | None = None) -> int:
    """The hashes Feast's ``write_to_online_store`` leaves for ``rows`` (one per
    entity, with ``event_timestamp`` and the view's features), written without
    its general conversion: a row not newer than the stored one is skipped, as
    Feast skips it. Two pipelined round trips (the stored times, then the
    writes). Returns how many rows were written."""
    ts_field = f"_ts:{view.name}".encode()
    features = [(f.name, _mmh3(f"{view.name}:{f.name}"), _encoder(f.dtype.to_value_type()))
                for f in view.features]
    keys = [entity_key(join_key, str(value), project) for value in rows[join_key]]
    with client.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.hget(key, ts_field)
        stored = pipe.execute()
    nanos = rows["event_timestamp"].astype("datetime64[us, UTC]").astype("int64").to_numpy() * 1000
    columns = [rows[name].tolist() for name, _, _ in features]
    written = 0
    with client.pipeline(transaction=False) as pipe:
        for k, (key, previous) in enumerate(zip(keys, stored, strict=True)):
            new = int(nanos[k])
            if previous:
                old = Timestamp()
                old.ParseFromString(previous)
                seen = old.seconds * 1_000_000_000 + old.nanos
                if seen and new <= seen:
                    continue
            stamp = Timestamp(seconds=new // 1_000_000_000, nanos=new % 1_000_000_000)
            mapping = {ts_field: stamp.SerializeToString()}
            for (_, field, encode), column in zip(features, columns, strict=True):
                mapping[field] = encode(column[k]).SerializeToString()
            pipe.hset(key, mapping=mapping)
            if ttl_seconds:
                pipe.expire(key, ttl_seconds)
            written += 1
        pipe.execute()
    return written
