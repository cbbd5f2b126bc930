"""``bentoml serve serving.service:Recommender``: top-K recommendations from the
champion behaviour encoder over online features, and real-time event intake."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from typing import Annotated, Any, TypeVar

import anyio
import bentoml
import redis
import threadpoolctl
import torch
from mlflow.exceptions import MlflowException
from pydantic import (
    AfterValidator,
    BaseModel,
    Field,
    PlainValidator,
    StrictBool,
    StrictInt,
    WithJsonSchema,
)
from starlette.responses import JSONResponse

from feature_repo.event_rules import is_id
from feature_repo.privacy import PseudonymKeyError
from feature_repo.schema import EVENT_TYPES, ID_MAX_LENGTH, ID_PATTERN
from infra import event_stream, redis_server
from infra.collector import settle_collector
from infra.settings import Settings
from serving import api_page, client_errors
from serving.api_page import ApiPage
from serving.arrivals import stamp_task_creation
from serving.breaker import CircuitBreaker
from serving.connections import ConnectionRotation
from serving.guard import Guard, arrival
from serving.intake import check_request
from serving.online import OnlineFeatures
from serving.privacy import PrivacyBoundary
from serving.query import QueryEncoder
from serving.scoring import (
    ServedModel,
    load_served_model,
    recommend,
    score_items,
    with_content,
    with_queries,
)
from serving.web_page import WebPage
from serving.workers import REPORT_S, Fleet
from training import registry
from training.query import DEFAULT_BLEND, QUERY_MAX_CHARS, QueryBlend, clean_query

log = logging.getLogger("recsys.serving")
T = TypeVar("T")

WATCH_TICK_S = 0.2  # how often a worker looks for a /reload answered by another
RELOAD_WAIT_S = 60.0  # how long /reload waits for every worker to load the new model
SWITCH_INTERVAL_S = 0.0005  # sys.setswitchinterval for the service's workers
BREAKER_FAILURES = 3  # consecutive Redis failures that open the breaker
BREAKER_PROBE_S = 0.1  # how often an open breaker pings Redis
# Writes (the event stream, the online rows, the fleet) wait for Redis's fsync
# (appendfsync always), which a busy disk can stretch past the read timeout.
WRITE_TIMEOUT_S = 1.0
WARM_UP_CALLS = 3  # model calls made when a version is loaded, before it serves
ONLINE_DOWN = "online store unavailable: popularity"
SAMPLE_USERS = 2000  # online users whose history lengths /sample_users compares
STATUS_METRICS = ("best_val_ndcg_at_10", "best_val_hr_at_10", "ndcg_at_10", "hr_at_10",
                  "baseline_pop_ndcg_at_10")
PAST_DEADLINE = "past the request deadline: popularity"


def _as_id(value: object) -> str | int:
    """An id as the batch validation accepts it, with one message when it is not."""
    if not is_id(value):
        raise ValueError(f"an id is a string or an integer of 1 to {ID_MAX_LENGTH} letters, "
                         f"digits or _.:- (got {str(value)[:70]!r})")
    return value


IdLike = Annotated[str | int, PlainValidator(_as_id), WithJsonSchema({
    "anyOf": [{"type": "integer"}, {"type": "string", "pattern": ID_PATTERN,
                                    "minLength": 1, "maxLength": ID_MAX_LENGTH}],
    "description": "A user or item id (string or integer)."})]

# Checked by the model (too long, blank) so a bad query is a 400 with clean_query's
# message; "" is no query.
QueryText = Annotated[str, AfterValidator(lambda text: clean_query(text) or ""), Field(
    max_length=QUERY_MAX_CHARS, description=(
        "What the user typed (at most 200 characters; empty: no query). With a history "
        "it steers the personalised list towards items whose text matches it; without "
        "one it ranks alone, with popularity."))]


class Because(BaseModel):
    item_id: str = Field(description="A recent item of the user's.")
    title: str = Field(description="Its title.")


class RecommendedItem(BaseModel):
    item_id: str = Field(description="Catalogue item id.")
    score: float = Field(description=(
        "Model score (the encoder's, standardised and blended with item transitions and "
        "popularity when the model has them; a popularity or content-blended score when "
        "degraded)."))
    title: str = Field(description="Item title from the catalogue.")
    because: list[Because] = Field(description=(
        "The recent items that contributed most to this one (the encoder's attention "
        "to each times its similarity to this item), for 'because you watched ...'; "
        "empty for popularity."))


class Recommendation(BaseModel):
    user_id: str = Field(description="The user the items are for.")
    items: list[RecommendedItem] = Field(description="Top-k items, best first.")
    model_version: str = Field(description="behaviour_encoder registry version that answered.")
    degraded: bool = Field(description="True when a fallback answered instead of the model.")
    reason: str | None = Field(description="Why the answer is degraded, else null.")
    query: str | None = Field(default=None, description=(
        "The query that steered the answer (whitespace collapsed); null without one, or "
        "where the service has no item text to match it against."))


class Rejected(BaseModel):
    index: int = Field(description="Position of the event in the request.")
    error: str = Field(description="Why it was rejected.")


class EventsAccepted(BaseModel):
    accepted: int = Field(description=(
        "Events now in the event stream (drained into the offline log) and the online "
        "store."))
    rejected: list[Rejected] = Field(description="Events not accepted, with the reason.")


class Forgotten(BaseModel):
    user_id: str = Field(description="The user, as the caller gave the id.")
    forgotten: bool = Field(description="True if anything was held for the user.")
    already_forgotten: bool = Field(description="True if an earlier request forgot them.")
    removed: dict[str, int] = Field(description=(
        "What went from the online side, by kind (online_rows, stream_events, ...)."))
    offline: str = Field(description="What happens to the offline copies.")


class Scores(BaseModel):
    user_id: str = Field(description="The user the scores are for.")
    model_version: str = Field(description="behaviour_encoder registry version that answered.")
    scores: dict[str, float | None] = Field(description="item_id -> score (null if unknown).")
    degraded: bool = Field(description="True when popularity scored instead of the model.")
    reason: str | None = Field(description="Why the answer is degraded, else null.")


class Reloaded(BaseModel):
    model_version: str = Field(description="The version serving now.")
    previous_version: str = Field(description="The version that served before the call.")
    changed: bool = Field(description="Whether the call swapped models.")
    workers: int = Field(description="Service workers running, over every replica.")
    workers_on_version: int = Field(description=(
        "How many of them serve model_version when the call returns (all of them "
        "unless one did not finish loading within RELOAD_WAIT_S)."))


class FleetWorker(BaseModel):
    worker: str = Field(description="host:pid of a service worker.")
    model_version: str = Field(description="The behaviour_encoder version it serves.")
    reported_s_ago: float = Field(description="Seconds since it last reported.")


class FleetStatus(BaseModel):
    worker: str = Field(description="The worker that answered (host:pid).")
    model_version: str = Field(description="The version it serves.")
    workers: list[FleetWorker] = Field(description=(
        "Every live worker of every replica sharing this Redis (empty while Redis is "
        "unreachable)."))


class HistoryItem(BaseModel):
    item_id: str = Field(description="An item of the user's online history.")
    title: str = Field(description="Its title (the id when the model does not know it).")


class History(BaseModel):
    user_id: str = Field(description="The user.")
    items: list[HistoryItem] = Field(description="The online recent items, newest first.")
    degraded: bool = Field(description="True when the online store could not be read.")
    reason: str | None = Field(description="Why the history is missing, else null.")


class SampleUsers(BaseModel):
    most_active: str | None = Field(description=(
        "A user with the longest online history (null with pseudonymisation on, or "
        "while the online store is empty or down)."))
    median: str | None = Field(description="A user with a median-length online history.")
    new_visitor: str = Field(description="An id no one has used (no history).")


class ModelSummary(BaseModel):
    version: str = Field(description="behaviour_encoder registry version.")
    metrics: dict[str, float] = Field(description=(
        "Its run's validation and test metrics (best_val_ndcg_at_10, ndcg_at_10, ...)."))


class Status(BaseModel):
    model_version: str = Field(description="The version the answering worker serves.")
    champion: ModelSummary | None = Field(description="The registry's champion.")
    challenger: ModelSummary | None = Field(description="The registry's challenger.")
    registry_error: str | None = Field(description="Why the registry could not be read.")
    online_store: bool = Field(description="Whether Redis answers.")
    fleet: list[FleetWorker] = Field(description="Every live worker of every replica.")


_startup = Settings.from_env()
if not _startup.tracing:
    # BentoML wraps every request in an OpenTelemetry span, exported nowhere unless
    # a tracing exporter is configured; a disabled SDK makes those spans no-ops.
    os.environ.setdefault("OTEL_SDK_DISABLED", "true")
# An MLflow tracking server that does not answer must not hold /reload for minutes
# (MLflow's defaults: a 120 s timeout and 7 retries with backoff); the champion
# watch retries on its own every RECSYS_MODEL_POLL_S.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
client_errors.install()


@bentoml.service(name="recommender", description=api_page.DESCRIPTION,
                 traffic={"timeout": 30}, workers=_startup.serving_workers,
                 logging={"access": {"enabled": _startup.access_log}})
class Recommender:
    def __init__(self) -> None:
        settings = Settings.from_env()
        self.settings = settings
        torch.set_num_threads(settings.serving_threads)
        # numpy's BLAS too (the query path's catalogue x query products): OpenBLAS
        # starts a thread per core in each worker, and with several workers on the
        # cores those threads spin against each other's requests, so a request
        # that costs milliseconds alone waits tens of them under load.
        threadpoolctl.threadpool_limits(settings.serving_threads)
        # Blocking handlers (/events, /history, ...) run in BentoML's thread pool while
        # the event loop thread accepts, parses and scores requests: hand the GIL over
        # more often than every 5 ms (the default), so neither waits a whole interval
        # for the other.
        sys.setswitchinterval(SWITCH_INTERVAL_S)
        server = redis_server.ensure(settings)
        # Bounded calls and a breaker: a Redis that is down or hung costs a request
        # at most one timeout, and once the breaker is open nothing at all.
        self.redis = server.client(timeout_s=settings.redis_timeout_ms / 1000)
        self.breaker = CircuitBreaker(self.redis.ping, failures_to_open=BREAKER_FAILURES,
                                      probe_interval_s=BREAKER_PROBE_S, name="redis")
        self.deadline_s = settings.deadline_ms / 1000
        self.redis_writes = server.client(timeout_s=WRITE_TIMEOUT_S)
        self.events_redis = (event_stream.client(settings, timeout_s=WRITE_TIMEOUT_S)
                             if settings.events_url else self.redis_writes)
        self.online = OnlineFeatures(self.redis, settings.feast_project, settings.recent_items,
                                     writer=self.redis_writes)
        self.board = Fleet(self.redis_writes)
        self.privacy = PrivacyBoundary(settings)
        self._reload_token = self._fleet_token()
        self.queries = self._query_encoder()
        self.served = self._load()
        self._report()
        self.future_tolerance_s = settings.future_tolerance_s  # as in batch validation
        self._swap_lock = threading.Lock()
        self._handler: anyio.CapacityLimiter | None = None  # slow answers' thread
        self._stop = threading.Event()
        settle_collector()
        threading.Thread(target=self._watch, name="champion-watch", daemon=True).start()
        log.info("serving behaviour_encoder version %s from %s", self.served.version,
                 settings.home)

    def _query_encoder(self) -> QueryEncoder | None:
        """The ``item_text_encoder`` champion for queries; None (queries are then
        not applied, and answers say so) when none is registered."""
        uri = self.settings.tracking_uri()
        try:
            version = registry.alias_version(uri, registry.CHAMPION, registry.TEXT_MODEL_NAME)
            if version is None:
                raise LookupError(f"no {registry.TEXT_MODEL_NAME} champion")
            return QueryEncoder(registry.text_encoder_dir(uri, version),
                                self.settings.query_cache)
        except (LookupError, MlflowException, OSError) as error:
            log.warning("no query path (%s: %s)", type(error).__name__, error)
            return None

    def _query_blend(self, version: str) -> QueryBlend:
        """The version's query weights (the defaults for one registered without)."""
        try:
            return QueryBlend.from_dict(registry.load_document(
                self.settings.tracking_uri(), version, registry.QUERY_BLEND_DOCUMENT))
        except (MlflowException, OSError, KeyError):
            return DEFAULT_BLEND

    def _load(self) -> ServedModel:
        """The champion, with the item text embeddings from the online store."""
        served = self._with_text(load_served_model(
            self.settings.tracking_uri(), quantize=self.settings.quantize,
            ann_min_items=self.settings.ann_min_items))
        self._warm(served)
        return served

    def _with_text(self, served: ServedModel) -> ServedModel:
        """``served`` with the item text embeddings (cold starts and queries) and the
        query path; without them, with a warning, while Redis is unreachable (the
        champion watch adds them once it answers: ``_complete_text``). Sets
        ``_text_unread``: whether the text is still to be read."""
        self._text_unread = False  # read, or not to be read
        limit = self.settings.content_max_items
        if len(served.index) > limit:
            log.warning("%d items: no content blend for users without history and no "
                        "queries (more than RECSYS_CONTENT_MAX_ITEMS, %d)",
                        len(served.index), limit)
            return served
        try:
            served = with_content(served, self.online.item_embeddings(served.index.item_ids))
        except redis.RedisError as error:
            log.warning("item embeddings unavailable (%s): no content blend and no queries "
                        "until the online store answers", type(error).__name__)
            self._text_unread = True
            return served
        if self.queries is not None:
            served = with_queries(served, self.queries, self._query_blend(served.version))
        return served

    @staticmethod
    def _warm(served: ServedModel) -> None:
        """TorchScript's profiling executor specialises the traced encoder on its
        first calls, each several times slower than a warm one: make them here,
        before the version takes requests, not on the first users' requests."""
        history = served.index.item_ids[:3]
        for _ in range(WARM_UP_CALLS):
            recommend(served, history, 10, True, user_id=None)
            recommend(served, history, 10, True, user_id=None, query="warm up")

    def _complete_text(self) -> None:
        """A worker that loaded its model while Redis was down serves it without
        item text: add the text once Redis answers (the same model, one swap)."""
        with self._swap_lock:
            if not self._text_unread:
                return
            completed = self._with_text(self.served)
            if self._text_unread:
                return
            self._warm(completed)
            self.served = completed
            settle_collector()
            log.info("item embeddings loaded for v%s: content blend and queries on",
                     completed.version)

    def _swap_if_moved(self) -> tuple[str, str]:
        """Load the champion when the alias moved; one swap at a time. A request
        reads ``self.served`` once, so it is answered by one model, old or new."""
        with self._swap_lock:
            before = self.served.version
            current = registry.alias_version(self.settings.tracking_uri(), registry.CHAMPION)
            if current is not None and current != before:
                self.served = self._load()
                settled_s = settle_collector()
                self._report()
                log.info("champion moved: v%s -> v%s (collector settled in %.0f ms)",
                         before, self.served.version, 1000 * settled_s)
            return before, self.served.version

    def _report(self) -> None:
        """Tell the fleet which version this worker serves (skipped while Redis is down)."""
        try:
            self.board.report(self.served.version)
        except redis.RedisError:
            pass

    def _fleet_token(self) -> int | None:
        """The fleet's reload counter; None while Redis does not answer."""
        try:
            return self.board.reload_token()
        except redis.RedisError:
            return None

    def _watch(self) -> None:
        """Report this worker's version every REPORT_S; check the alias every
        RECSYS_MODEL_POLL_S seconds, and at once when a worker of any replica
        answered /reload."""
        last_poll = last_report = time.monotonic()
        while not self._stop.wait(WATCH_TICK_S):
            if time.monotonic() - last_report >= REPORT_S:
                self._report()
                last_report = time.monotonic()
            try:
                self.privacy.refresh(self.redis_writes)
            except redis.RedisError:
                pass
            token = self._fleet_token()
            if token in (None, self._reload_token) and (
                    time.monotonic() - last_poll < self.settings.model_poll_s):
                continue
            self._reload_token = token if token is not None else self._reload_token
            last_poll = time.monotonic()
            try:
                self._complete_text()
                self._swap_if_moved()
            except Exception as error:  # keep serving the loaded model
                log.warning("champion watch failed: %s: %s", type(error).__name__, error)

    def _reload_fleet(self, version: str) -> dict[str, str]:
        """Ask every worker of every replica to check the registry now; their
        versions once all serve ``version`` (or after RELOAD_WAIT_S). While Redis is
        down the others are out of reach: this worker alone (they converge through
        their own poll)."""
        try:
            self.board.request_reload()
            return self.board.wait_all(version, RELOAD_WAIT_S)
        except redis.RedisError as error:
            log.warning("/reload: the fleet is unreachable through Redis (%s)",
                        type(error).__name__)
            return {self.board.name: self.served.version}

    @bentoml.on_startup
    async def _stamp_arrivals(self) -> None:
        """Tasks of this worker's event loop record their creation: a request's
        arrival, which its deadline counts from (``serving.arrivals``)."""
        stamp_task_creation(asyncio.get_running_loop())

    @bentoml.on_shutdown
    def close(self) -> None:
        self._stop.set()
        self.breaker.close()
        try:
            self.board.leave()
        except redis.RedisError:
            pass
        self.redis.close()
        self.redis_writes.close()

    def _redis_failed(self, error: redis.RedisError) -> None:
        was_open = not self.breaker.allow()
        self.breaker.failed()
        if not was_open and not self.breaker.allow():
            log.warning("online store unavailable (%s): answering degraded until it answers "
                        "again", type(error).__name__)

    def _call_redis(self, call: Callable[[], T]) -> tuple[bool, T | None]:
        """(True, ``call()``) through the breaker; (False, None) while Redis is down or
        the breaker is open (then at once, without calling)."""
        if not self.breaker.allow():
            return False, None
        try:
            value = call()
        except redis.RedisError as error:
            self._redis_failed(error)
            return False, None
        self.breaker.succeeded()
        return True, value

    def _online_up(self) -> bool:
        """Whether the online store answers now."""
        return self._call_redis(self.redis.ping)[0]

    def __is_ready__(self) -> bool:
        """/readyz: 503 while the online store (Redis) does not answer."""
        return self._online_up()

    def _key(self, user_id: object, served: ServedModel) -> str:
        """The stored key of a caller's user id (its pseudonym, when on)."""
        return str(self.privacy.stored(user_id, served.rules))

    def _vector_user(self, key: str) -> str | None:
        """Whose learned vector the model may use: nobody's for a forgotten user."""
        return None if self.privacy.forgotten(key) else key

    def _history(self, user: str, ctx: bentoml.Context) -> tuple[list[str] | None, str | None]:
        """The user's online history, or None and why: the online store is down (or
        its breaker open), or the request is already past its deadline."""
        up, history = self._call_redis(lambda: self.online.recent(user))
        if not up:
            return None, ONLINE_DOWN
        if time.monotonic() - arrival(ctx) > self.deadline_s:
            return None, PAST_DEADLINE
        return history, None

    # /recommend and /score answer on the event loop when the model answers
    # quickly (``ServedModel.answers_quickly``: two-stage, or exact over a small
    # catalogue): their work is then CPU (one torch thread) and one Redis read bounded
    # by its timeout and the breaker, and handing every request to a thread and
    # back costs a worker CPU of its own, more under load, when the two threads
    # contend for the GIL (docs/experiments.md). Requests that come in meanwhile
    # wait for the loop, and their deadline counts that wait from when the loop
    # read them. A slow exact answer (a large catalogue without the two-stage path)
    # goes to the worker's one handler thread instead, so that the loop keeps
    # reading requests, and their arrival times stay true, while it is computed.
    async def _answer(self, served: ServedModel, call: Callable[[], T]) -> T:
        if served.answers_quickly:
            return call()
        if self._handler is None:  # made on the loop, by the first slow answer
            self._handler = anyio.CapacityLimiter(1)
        return await anyio.to_thread.run_sync(call, limiter=self._handler)

    @bentoml.api
    async def recommend(self, user_id: IdLike,
                        k: Annotated[StrictInt, Field(ge=1, le=1000,
                                                      description="How many items.")] = 10,
                        exclude_seen: Annotated[StrictBool, Field(
                            description="Leave out items in the user's recent history.")] = True,
                        context_item_ids: Annotated[list[IdLike], Field(
                            max_length=1000, description=(
                                "Items the user just interacted with, newest last, not yet sent "
                                "to /events (e.g. an anonymous session). With an online history "
                                "the model reads them after it; without one they steer the "
                                "fallback by content similarity."))] = [],  # noqa: B006
                        query: QueryText = "",
                        ctx: bentoml.Context = None,
                        ) -> Recommendation:
        """Top-k items for a user from the champion model over online features."""
        served = self.served
        return await self._answer(served, lambda: self._recommend(
            served, user_id, k, exclude_seen, context_item_ids, query, ctx))

    def _recommend(self, served: ServedModel, user_id: str | int, k: int, exclude_seen: bool,
                   context_item_ids: list[str | int], query: str,
                   ctx: bentoml.Context) -> Recommendation:
        key = self._key(user_id, served)
        history, unavailable = self._history(key, ctx)
        ranked = recommend(served, history or [], k, exclude_seen,
                           [str(i) for i in context_item_ids], self._vector_user(key),
                           query or None)
        reason = unavailable or ranked.reason
        titles, position = served.model.titles, served.index.index
        return Recommendation(
            user_id=str(user_id), model_version=served.version, degraded=reason is not None,
            reason=reason, query=ranked.query, items=[RecommendedItem(
                item_id=i, score=s, title=t,
                because=[Because(item_id=b, title=titles[position[b] - 1]) for b in why])
                for i, s, t, why in ranked.items],
        )

    @bentoml.api
    async def score(self, user_id: IdLike,
                    item_ids: Annotated[list[IdLike], Field(
                        min_length=1, max_length=1000, description="Candidate item ids.")],
                    ctx: bentoml.Context = None,
                    ) -> Scores:
        """Scores of the given candidate items for a user."""
        served = self.served
        return await self._answer(served, lambda: self._score(served, user_id, item_ids, ctx))

    def _score(self, served: ServedModel, user_id: str | int, item_ids: list[str | int],
               ctx: bentoml.Context) -> Scores:
        ids = [str(i) for i in item_ids]
        key = self._key(user_id, served)
        history, unavailable = self._history(key, ctx)
        values, reason = score_items(served, history or [], ids, self._vector_user(key))
        reason = unavailable or reason
        return Scores(user_id=str(user_id), model_version=served.version,
                      scores=dict(zip(ids, values, strict=True)),
                      degraded=reason is not None, reason=reason)

    @bentoml.api
    async def reload(self, ctx: bentoml.Context) -> Reloaded:
        """Check the champion alias now and swap to it if it moved (the service also
        checks every RECSYS_MODEL_POLL_S seconds); answers when every worker serves
        it. Needs RECSYS_API_KEY to be set."""
        # BentoML sets a response's status from the context: set both.
        if not self.settings.api_key:
            ctx.response.status_code = 403
            return JSONResponse({"error": "/reload is refused while the service runs "
                                 "without RECSYS_API_KEY"}, status_code=403)
        # Registry calls and the wait for the other workers run in threads of their
        # own: a slow registry never holds the handler threads that /recommend uses.
        try:
            before, after = await asyncio.to_thread(self._swap_if_moved)
        except Exception as error:  # the registry is down: keep the loaded model, say so
            log.warning("/reload: registry unavailable (%s: %s)", type(error).__name__, error)
            ctx.response.status_code = 503
            return JSONResponse({
                "error": f"the model registry is unavailable ({type(error).__name__}); "
                         f"still serving behaviour_encoder v{self.served.version}",
                "model_version": self.served.version}, status_code=503)
        workers = await asyncio.to_thread(self._reload_fleet, after)
        return Reloaded(model_version=after, previous_version=before, changed=before != after,
                        workers=len(workers),
                        workers_on_version=sum(v == after for v in workers.values()))

    @bentoml.api
    def history(self, user_id: IdLike, ctx: bentoml.Context = None) -> History:
        """The user's online recent items (what /recommend reads), newest first."""
        user = str(user_id)
        key = self._key(user_id, self.served)
        up, items = self._call_redis(lambda: self.online.recent(key))
        titles, position = self.served.model.titles, self.served.index.index
        return History(user_id=user, degraded=not up, reason=None if up else ONLINE_DOWN,
                       items=[HistoryItem(item_id=i, title=titles[position[i] - 1]
                                          if i in position else i)
                              for i in reversed(items or [])])

    @bentoml.api
    def sample_users(self) -> SampleUsers:
        """Users to try: one with the longest online history and one with a median
        one (among up to SAMPLE_USERS users with an online row, those the champion
        was trained on when there are any), and a new visitor.
        With pseudonymisation on the service knows no user's id, only keys: then
        only the new visitor."""
        visitor = f"visitor-{os.urandom(4).hex()}"
        if self.privacy.pseudonyms is not None:
            return SampleUsers(most_active=None, median=None, new_visitor=visitor)
        up, picked = self._call_redis(lambda: self.online.some_users(SAMPLE_USERS))
        # Users the champion was trained on, when there are any: rows that callers'
        # own events created (any id a client sent) make poor examples.
        model = self.served.model
        picked = [u for u in picked or [] if model.has_user_vector(u)] or picked
        if up and picked:
            up, lengths = self._call_redis(lambda: self.online.history_lengths(picked))
        ranked = (sorted(zip(lengths, picked, strict=True), key=lambda x: -x[0])
                  if up and picked else [])
        return SampleUsers(most_active=ranked[0][1] if ranked else None,
                           median=ranked[len(ranked) // 2][1] if ranked else None,
                           new_visitor=visitor)

    def _summary(self, alias: str) -> ModelSummary | None:
        uri = self.settings.tracking_uri()
        version = registry.alias_version(uri, alias)
        if version is None:
            return None
        metrics = registry.version_run(uri, version).data.metrics
        return ModelSummary(version=version, metrics={
            k: round(metrics[k], 4) for k in STATUS_METRICS if k in metrics})

    @bentoml.api
    async def status(self) -> Status:
        """For the operator panel: champion and challenger with their metrics, the
        fleet's versions, and whether Redis answers."""
        champion = challenger = error = None
        try:
            champion = await asyncio.to_thread(self._summary, registry.CHAMPION)
            challenger = await asyncio.to_thread(self._summary, registry.CHALLENGER)
        except Exception as failure:  # the registry is down: say so, answer the rest
            error = f"the model registry is unavailable ({type(failure).__name__})"
        return Status(model_version=self.served.version, champion=champion,
                      challenger=challenger, registry_error=error,
                      online_store=await asyncio.to_thread(self._online_up),
                      fleet=await asyncio.to_thread(self._fleet_workers))

    @bentoml.api
    def fleet(self) -> FleetStatus:
        """The version this worker serves, and every live worker of every replica
        with the version it reported (through Redis: empty while it is down)."""
        return FleetStatus(worker=self.board.name, model_version=self.served.version,
                           workers=self._fleet_workers())

    def _fleet_workers(self) -> list[FleetWorker]:
        try:
            workers = self.board.workers()
        except redis.RedisError:
            return []
        now = time.time()
        return [FleetWorker(worker=name, model_version=entry["version"],
                            reported_s_ago=round(now - entry["at"], 3))
                for name, entry in sorted(workers.items())]

    @bentoml.api
    def forget(self, user_id: IdLike,
               reason: Annotated[str, Field(max_length=200, description=(
                   "Why, for the privacy audit."))] = "deletion request",
               ctx: bentoml.Context = None) -> Forgotten:
        """Forget a user: their online row and events on the stream go at once, the
        model stops using their learned vector, a tombstone keeps them from coming
        back, and the pipeline host removes the offline copies when it applies the
        tombstone. Needs RECSYS_API_KEY; idempotent; an unknown user is a no-op.
        The id travels in the body, not the path: BentoML labels its request
        metrics with the path, which would keep the id in every worker's counters."""
        if not self.settings.api_key:
            ctx.response.status_code = 403
            return JSONResponse({"error": "/forget is refused while the service runs "
                                 "without RECSYS_API_KEY"}, status_code=403)
        key = self._key(user_id, self.served)
        try:
            result = self.privacy.forget(self.redis_writes, self.events_redis, key,
                                         self.served.model.has_user_vector(key), reason)
        except redis.RedisError as error:
            ctx.response.status_code = 503
            return JSONResponse({"error": f"the online store is unavailable "
                                 f"({type(error).__name__}): nothing was forgotten, retry"},
                                status_code=503)
        except PseudonymKeyError as error:
            ctx.response.status_code = 503
            return JSONResponse({"error": str(error)}, status_code=503)
        return Forgotten(
            user_id=str(user_id), forgotten=result["known"],
            already_forgotten=result["already_forgotten"], removed=result["removed"],
            offline=("pending: removed from the offline copies when the pipeline host "
                     "applies the tombstone (next ingest, or recsys forget --pending)")
            if result["known"] else "nothing held for this user: nothing to do")

    @bentoml.api
    def events(self, events: Annotated[list[Any], Field(
                   min_length=1, max_length=1000, description=(
                       "Events as objects: user_id and item_id (a string or an integer "
                       "id), event_type (" + ", ".join(EVENT_TYPES) + "), timestamp (unix "
                       "seconds or ISO-8601; default now), rating (a number, optional). "
                       "Checked with the batch validation's rules and reasons."))],
               ctx: bentoml.Context) -> EventsAccepted:
        """Accept behaviour events: each on the event stream (drained into the
        offline log for the next batch run) and merged into the online features
        before the reply. 503 (nothing written, every event rejected with the
        reason) while the online store or the stream is unavailable."""
        if not self._online_up():
            ctx.response.status_code = 503
            error = "the online store (Redis) is unavailable; nothing was written, retry later"
            return EventsAccepted(accepted=0, rejected=[
                Rejected(index=i, error=error) for i in range(len(events))])
        served = self.served
        rules = replace(served.rules, future_tolerance_s=self.future_tolerance_s)
        events = self.privacy.stored_events(events, rules)
        accepted, refused = check_request(events, rules, served.index.index, time.time())
        rejected = [Rejected(index=index, error=error) for index, error in refused]
        if accepted:
            try:
                event_stream.publish(self.events_redis, [asdict(e) for e in accepted])
            except redis.RedisError as error:
                if self.events_redis is self.redis_writes:
                    self._redis_failed(error)
                ctx.response.status_code = 503
                message = (f"the event stream is unavailable ({type(error).__name__}); "
                           "nothing was written, retry later")
                return EventsAccepted(accepted=0, rejected=[
                    Rejected(index=i, error=message) for i in range(len(events))])
            by_user: dict[str, tuple[list[str], list[int]]] = {}
            for event in accepted:
                items, times = by_user.setdefault(event.user_id, ([], []))
                items.append(event.item_id)
                times.append(int(round(event.timestamp * 1_000_000)))
            try:
                for user, (items, times) in by_user.items():
                    self.online.append(user, items, times)
            except redis.RedisError as error:
                # Redis went away after the stream took the events: they reach the
                # offline log (and the features at the next batch run), not all online.
                ctx.response.status_code = 503
                self._redis_failed(error)
                note = ("on the event stream, but the online store (Redis) failed: the "
                        "online features may miss it until the next batch run")
                return EventsAccepted(accepted=len(accepted), rejected=rejected + [
                    Rejected(index=-1, error=note)])
        return EventsAccepted(accepted=len(accepted), rejected=rejected)


# Outermost of ours: every answer counts, a 401 too.
Recommender.add_asgi_middleware(ConnectionRotation)
Recommender.add_asgi_middleware(Guard, api_key=_startup.api_key,
                                max_body_bytes=_startup.max_body_bytes)
Recommender.add_asgi_middleware(ApiPage)
# Inside the guard: the page's files are open paths, the report mounts need the key.
Recommender.add_asgi_middleware(WebPage, api_key=_startup.api_key,
                                data_docs_dir=str(_startup.data_docs_dir),
                                reports_dir=str(_startup.reports_dir))
