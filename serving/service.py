"""``bentoml serve serving.service:Recommender``: top-K recommendations from the
champion behaviour encoder over online features, and real-time event intake."""

from __future__ import annotations

import logging
import time
from typing import Annotated, Literal

import bentoml
import pandas as pd
import redis
import torch
from pydantic import BaseModel, Field, StrictInt, StringConstraints, ValidationError

from feature_repo.schema import (
    EVENT_TYPES,
    FUTURE_TOLERANCE_S,
    ID_MAX_LENGTH,
    MIN_TIMESTAMP,
    parse_timestamps,
)
from feature_repo.store import open_store
from infra import redis_server
from infra.settings import Settings
from serving.online import EventLog, OnlineFeatures
from serving.scoring import load_served_model, recommend, score_items

log = logging.getLogger("recsys.serving")

Id = Annotated[str, StringConstraints(min_length=1, max_length=ID_MAX_LENGTH,
                                      pattern=r"^[A-Za-z0-9_.:\-]+$")]
IdLike = Annotated[StrictInt | Id, Field(description="A user or item id (string or integer).")]

class RecommendedItem(BaseModel):
    item_id: str = Field(description="Catalogue item id.")
    score: float = Field(description="Model score (or popularity count when degraded).")
    title: str = Field(description="Item title from the catalogue.")


class Recommendation(BaseModel):
    user_id: str = Field(description="The user the items are for.")
    items: list[RecommendedItem] = Field(description="Top-k items, best first.")
    model_version: str = Field(description="behaviour_encoder registry version that answered.")
    degraded: bool = Field(description="True when a fallback answered instead of the model.")
    reason: str | None = Field(description="Why the answer is degraded, else null.")


class Event(BaseModel):
    user_id: IdLike
    item_id: IdLike
    event_type: Literal["view", "click", "rating", "add_to_cart", "purchase"] = Field(
        description="One of " + ", ".join(EVENT_TYPES) + ".")
    timestamp: StrictInt | float | str | None = Field(
        default=None, description="Unix seconds or ISO-8601; default: now.")
    rating: float | None = Field(default=None, description="Rating, for event_type=rating.")


class Rejected(BaseModel):
    index: int = Field(description="Position of the event in the request.")
    error: str = Field(description="Why it was rejected.")


class EventsAccepted(BaseModel):
    accepted: int = Field(description="Events now in the online store and the offline log.")
    rejected: list[Rejected] = Field(description="Events not accepted, with the reason.")


class Scores(BaseModel):
    user_id: str
    model_version: str
    scores: dict[str, float | None] = Field(description="item_id -> score (null if unknown).")


def event_times_us(values: list[int | float | str | None], now: float,
                   future_tolerance_s: float = FUTURE_TOLERANCE_S) -> list[int | None]:
    """Unix seconds or ISO-8601 (None = now) -> unix microseconds; None where the
    value is unparseable, before 1990 or more than the tolerance in the future."""
    seconds = parse_timestamps(pd.Series([now if v is None else v for v in values], dtype=object))
    valid = seconds.between(MIN_TIMESTAMP, now + future_tolerance_s)
    return [int(round(x * 1_000_000)) if ok else None for x, ok in zip(seconds, valid, strict=True)]


def _error_text(error: ValidationError) -> str:
    return "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())


@bentoml.service(name="recommender", traffic={"timeout": 30})
class Recommender:
    def __init__(self) -> None:
        settings = Settings.from_env()
        torch.set_num_threads(settings.serving_threads)
        server = redis_server.ensure(settings)
        self.redis = server.client()
        self.online = OnlineFeatures(open_store(settings, server.url), self.redis,
                                     settings.recent_items)
        self.served = load_served_model(settings.tracking_uri())
        self.event_log = EventLog(settings.event_log_dir)
        self.future_tolerance_s = settings.future_tolerance_s  # as in batch validation
        log.info("serving behaviour_encoder version %s from %s", self.served.version,
                 settings.home)

    @bentoml.on_shutdown
    def close(self) -> None:
        self.redis.close()

    def __is_ready__(self) -> bool:
        """/readyz: 503 while the online store (Redis) does not answer."""
        try:
            return bool(self.redis.ping())
        except redis.RedisError:
            return False

    def _history(self, user: str) -> list[str] | None:
        """The user's online history; None when the online store is unreachable."""
        try:
            return self.online.recent(user)
        except redis.RedisError as error:
            log.warning("online store unavailable: %s", type(error).__name__)
            return None

    @bentoml.api
    def recommend(self, user_id: IdLike,
                  k: Annotated[int, Field(ge=1, le=1000, description="How many items.")] = 10,
                  exclude_seen: Annotated[bool, Field(
                      description="Leave out items in the user's recent history.")] = True,
                  ) -> Recommendation:
        """Top-k items for a user from the champion model over online features."""
        user = str(user_id)
        served = self.served
        history = self._history(user)
        items, from_model = recommend(served, history or [], k, exclude_seen)
        if history is None:
            reason = "online store unavailable: popularity"
        else:
            reason = None if from_model else "no history for this user: popularity"
        return Recommendation(
            user_id=user, model_version=served.version,
            items=[RecommendedItem(item_id=i, score=s, title=t) for i, s, t in items],
            degraded=reason is not None, reason=reason,
        )

    @bentoml.api
    def score(self, user_id: IdLike,
              item_ids: Annotated[list[IdLike], Field(min_length=1, max_length=1000)],
              ) -> Scores:
        """Scores of the given candidate items for a user."""
        user = str(user_id)
        served = self.served
        ids = [str(i) for i in item_ids]
        values = score_items(served, self._history(user) or [], ids)
        return Scores(user_id=user, model_version=served.version,
                      scores=dict(zip(ids, values, strict=True)))

    @bentoml.api
    def events(self, events: Annotated[list[dict], Field(min_length=1, max_length=1000)],
               ctx: bentoml.Context) -> EventsAccepted:
        """Accept behaviour events: online features updated before the reply, and
        each event appended to the offline event log. 503 (nothing written, every
        event rejected with the reason) while the online store is unavailable."""
        if not self.__is_ready__():
            ctx.response.status_code = 503
            error = "the online store (Redis) is unavailable; nothing was written, retry later"
            return EventsAccepted(accepted=0, rejected=[
                Rejected(index=i, error=error) for i in range(len(events))])
        rejected: list[Rejected] = []
        parsed: list[tuple[int, Event]] = []
        for position, raw in enumerate(events):
            try:
                event = Event.model_validate(raw)
            except ValidationError as error:
                rejected.append(Rejected(index=position, error=_error_text(error)))
                continue
            if str(event.item_id) not in self.served.index.index:
                rejected.append(Rejected(
                    index=position, error=f"item_id {event.item_id!r} is not in the catalogue"))
                continue
            parsed.append((position, event))
        stamps = event_times_us([e.timestamp for _, e in parsed], time.time(),
                                self.future_tolerance_s)
        accepted: list[tuple[Event, int]] = []
        for (position, event), stamp in zip(parsed, stamps, strict=True):
            if stamp is None:
                rejected.append(Rejected(index=position, error=(
                    "timestamp: unparseable, before 1990 or more than "
                    f"{self.future_tolerance_s:g} s in the future")))
            else:
                accepted.append((event, stamp))
        rejected.sort(key=lambda r: r.index)
        if accepted:
            self.event_log.append([{
                "user_id": str(e.user_id), "item_id": str(e.item_id),
                "event_type": e.event_type, "timestamp": stamp / 1e6,
                "rating": e.rating} for e, stamp in accepted])
            by_user: dict[str, tuple[list[str], list[int]]] = {}
            for event, stamp in accepted:
                items, times = by_user.setdefault(str(event.user_id), ([], []))
                items.append(str(event.item_id))
                times.append(stamp)
            for user, (items, times) in by_user.items():
                self.online.append(user, items, times)
        return EventsAccepted(accepted=len(accepted), rejected=rejected)
