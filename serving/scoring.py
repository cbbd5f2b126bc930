"""The served model and top-K scoring, as plain functions (no HTTP, no Redis).

Every answer says where it came from: the model (with, per item, the recent items
that contributed most to it: the encoder's attention to each, times its
similarity to the item), or a fallback with its reason:
- no usable history: recent popularity, blended with content similarity to the
  items given in the request when there are any, or with the query's relevance
  when the request has a query;
- the model raised or returned non-finite scores: recent popularity.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import cached_property

import numpy as np
import torch
from mlflow.exceptions import MlflowException

from feature_repo.event_rules import EventRules
from infra.settings import Settings
from serving.query import QueryEncoder
from serving.retrieval import CandidateScores, TwoStage
from training import ann, registry
from training.inference import attention_rollout, quantized, traced_encoder
from training.model import PAD, BehaviourEncoder
from training.query import (
    DEFAULT_BLEND,
    QueryBlend,
    TextMoments,
    behaviour_base,
    model_blends,
    popularity_relevance,
    relevance,
)
from training.sequences import ItemIndex, pad_left

log = logging.getLogger("recsys.serving")

BECAUSE = 2  # recent items named as the reason for each recommended item
BECAUSE_WINDOW = 20  # how many of the newest history items are candidates for it
CONTENT_WEIGHT = 0.7  # share of content similarity in the cold-start blend
POPULAR_RANKED = 1_000
# Up to the default two-stage threshold, where both paths answer equally fast, an
# exact answer costs what a two-stage one does.
QUICK_EXACT_ITEMS = Settings.ann_min_items
# With two-stage retrieval, the items of highest text relevance to a query join
# the candidates (the behaviour index cannot find what only the query asks for).
QUERY_CANDIDATES = 100


@dataclass(frozen=True)
class ServedModel:
    version: str
    model: BehaviourEncoder
    index: ItemIndex
    popularity: np.ndarray  # (N + 1,) fallback scores: recent counts, all-time as tie-break
    # (B, max_len) sequences and (B,) user rows -> (B, D) user vectors and the
    # layers' attention projections (for ``attention_rollout``): the traced
    # ``encode_explained``
    encoder: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
    # (N + 1, D) the item table the model scores against (the model's own storage,
    # not a copy: at a million items each copy is a quarter GB a worker)
    table: torch.Tensor
    rules: EventRules  # what a valid event of the training data is (for /events)
    content: np.ndarray | None = None  # (N + 1, D) unit text embeddings; row 0 and unknown = 0
    # Large catalogues: ANN candidates + exact re-ranking instead of scoring every item.
    retrieval: TwoStage | None = None
    # The POPULAR_RANKED most popular items, best first: what a no-history answer
    # reads instead of the whole catalogue's popularity.
    popular: CandidateScores | None = None
    # The query path: the text encoder for what users type, the version's blend
    # weights, and the item text embeddings' moments (``content``'s).
    queries: QueryEncoder | None = None
    query_blend: QueryBlend = DEFAULT_BLEND
    text_moments: TextMoments | None = None

    @property
    def answers_quickly(self) -> bool:
        """Whether one answer costs little next to a request's deadline: the
        two-stage path, or the exact one over at most QUICK_EXACT_ITEMS items."""
        return self.retrieval is not None or len(self.index) <= QUICK_EXACT_ITEMS

    @cached_property
    def popularity_relevance(self) -> np.ndarray:
        """(N + 1,) z(log popularity): the no-history query blend's popularity term,
        the same for every request, so worked out once per loaded version."""
        return popularity_relevance(self.popularity)


@dataclass(frozen=True)
class Ranked:
    items: list[tuple[str, float, str, list[str]]]  # item id, score, title, because (ids)
    reason: str | None  # None when the model answered
    query: str | None = None  # the query that steered the answer, if any


def popularity_scores(index: ItemIndex, recent: dict[str, int], all_time: dict[str, int],
                      ) -> np.ndarray:
    """Recent-window counts; all-time counts scaled below 1 break ties (and rank
    items when the recent window is empty)."""
    scores = np.zeros(len(index) + 1)
    top = max(all_time.values(), default=0) + 1
    for item, count in all_time.items():
        if item in index.index:
            scores[index.index[item]] += count / top
    for item, count in recent.items():
        if item in index.index:
            scores[index.index[item]] += count
    return scores


def load_served_model(tracking_uri: str, alias: str = registry.CHAMPION,
                      quantize: bool = False, ann_min_items: int | None = None) -> ServedModel:
    """The version behind ``alias`` with its fallback popularity; ``quantize``: the
    encoder's linear layers int8 (see ``training.inference.quantized``);
    ``ann_min_items``: see ``serve``."""
    version = registry.alias_version(tracking_uri, alias)
    if version is None:
        raise LookupError(f"no {registry.MODEL_NAME} version has alias {alias!r}; "
                          "run the pipeline first (make demo or dagster asset materialize)")
    model = registry.load_version(tracking_uri, version)
    if quantize:
        model = quantized(model)
    all_time = registry.load_document(tracking_uri, version, registry.POPULARITY_DOCUMENT)
    try:
        recent = registry.load_document(tracking_uri, version,
                                        registry.RECENT_POPULARITY_DOCUMENT)
    except (MlflowException, OSError):  # versions registered before the document existed
        recent = {}
    rules = EventRules.from_dict(registry.load_document(tracking_uri, version,
                                                        registry.EVENT_RULES_DOCUMENT))
    return serve(model, version, rules, all_time, recent, ann_min_items)


def serve(model: BehaviourEncoder, version: str, rules: EventRules, all_time: dict[str, int],
          recent: dict[str, int], ann_min_items: int | None = None) -> ServedModel:
    """A model ready to answer: its traced encoder, item tables and fallback
    popularity (item id -> count, all time and recent). ``ann_min_items``: from
    this catalogue size on, two-stage retrieval (``serving.retrieval``) instead of
    scoring every item (None: never)."""
    index = ItemIndex(model.item_ids)
    table = model.item_table().detach()
    retrieval = None
    if ann_min_items is not None and model.config.n_items >= ann_min_items:
        retrieval = TwoStage(model, _version_index(model, version))
    popularity = popularity_scores(index, recent, all_time)
    return ServedModel(version=version, model=model, index=index, popularity=popularity,
                       popular=_most_popular(popularity),
                       encoder=traced_encoder(model), table=table,
                       rules=rules, retrieval=retrieval)


def _most_popular(popularity: np.ndarray) -> CandidateScores:
    """The POPULAR_RANKED highest of (N + 1,) ``popularity`` (padding left out),
    best first, ties by catalogue order."""
    count = min(POPULAR_RANKED, len(popularity) - 1)
    top = np.argpartition(-popularity[1:], count - 1)[:count] + 1 if count else \
        np.empty(0, np.int64)
    top = top[np.lexsort((top, -popularity[top]))]
    return CandidateScores(items=top.astype(np.int64), values=popularity[top])


def _popular_top(served: ServedModel, k: int, exclude: list[int]) -> list[tuple[int, float]]:
    """Top-k by popularity from the ranked few when they hold k unexcluded items
    (no work over the catalogue), else over every item."""
    ranked = served.popular
    if ranked is not None and (len(ranked.items) == len(served.popularity) - 1
                               or len(exclude) + k <= len(ranked.items)):
        return _top(ranked, k, exclude)
    return _top(served.popularity, k, exclude)


def _version_index(model: BehaviourEncoder, version: str) -> ann.AnnIndex:
    """The index registered with the version; built here (every worker builds its
    own, minutes at a million items) when the version has none, or one that does
    not fit its item table."""
    if model.ann is not None and ann.fits(model.ann, model):
        return model.ann
    log.warning("model v%s has %s: building the item index at load; register versions "
                "with RECSYS_ANN_MIN_ITEMS <= %d so that it is built once, with the version",
                version, "an index of other item vectors" if model.ann is not None
                else "no item index", model.config.n_items)
    return ann.build(model)


def with_content(served: ServedModel, content: dict[str, np.ndarray]) -> ServedModel:
    """``content``: item id -> text embedding (the online ``item_content`` view),
    for the cold-start blend."""
    if not content:
        return served
    dim = len(next(iter(content.values())))
    table = np.zeros((len(served.index) + 1, dim), dtype=np.float32)
    for item, vector in content.items():
        if item in served.index.index:
            table[served.index.index[item]] = vector
    return replace(served, content=table, text_moments=TextMoments.of(table))


def with_queries(served: ServedModel, queries: QueryEncoder, blend: QueryBlend) -> ServedModel:
    """The query path, where the item text embeddings are held (``with_content``)."""
    if served.content is None or served.content.shape[1] != queries.dim:
        return served
    return replace(served, queries=queries, query_blend=blend)


def query_vector(served: ServedModel, query: str | None) -> np.ndarray | None:
    """A cleaned query's embedding; None without a query or a query path."""
    if query is None or served.queries is None:
        return None
    return served.queries.vector(query)


def _top(scores: np.ndarray | CandidateScores, k: int, exclude: list[int],
         ) -> list[tuple[int, float]]:
    if isinstance(scores, CandidateScores):  # a few hundred items, in index order
        values = scores.values.astype(np.float64, copy=True)
        values[np.isin(scores.items, exclude)] = -np.inf
        order = np.argsort(-values, kind="stable")[:min(k, int(np.isfinite(values).sum()))]
        return [(int(scores.items[j]), float(values[j])) for j in order]
    scores = scores.astype(np.float64, copy=True)
    scores[0] = -np.inf
    scores[exclude] = -np.inf
    k = min(k, int(np.isfinite(scores).sum()))
    top = np.argpartition(-scores, k - 1)[:k] if k else np.array([], dtype=int)
    top = top[np.argsort(-scores[top], kind="stable")]
    return [(int(i), float(scores[i])) for i in top]


def model_scores(served: ServedModel, encoded: list[int], explain: bool = False,
                 user_id: str | None = None, items: list[int] | None = None,
                 query: np.ndarray | None = None,
                 ) -> tuple[np.ndarray | CandidateScores, np.ndarray | None]:
    """(N + 1,) scores for one history (and the user's learned vector, when the
    model has one for ``user_id``), and with ``explain`` the encoder's attention
    rollout over its last max_len items (oldest first, summing to 1; else None);
    raises when the model fails or returns non-finite scores for catalogue items.
    With two-stage retrieval: the same scores for the candidates only (or for
    ``items``, when given). With a ``query`` embedding: the behaviour blend plus
    the query's relevance at the version's weight (``training.query``)."""
    config = served.model.config
    window = encoded[-config.max_len:]
    seq = pad_left([window], config.max_len)
    given = None if items is None else np.asarray(items, dtype=np.int64)
    with torch.inference_mode():
        user, projections = served.encoder(seq, served.model.user_rows([user_id]))
        if served.retrieval is not None:
            scores = served.retrieval.scores(
                user, seq, given, standardise=query is not None,
                extra=None if query is None or given is not None
                else _most_relevant(served, query))
        else:
            scores = served.model.blend_transitions(served.model.logits(user, served.table),
                                                    seq)[0].numpy()
    if query is not None:
        scores = _with_query(served, scores, query)
    finite = scores.values if isinstance(scores, CandidateScores) else scores[1:]
    if not np.isfinite(finite).all():
        raise FloatingPointError("the model returned non-finite scores")
    if not explain:
        return scores, None
    flow = attention_rollout(projections.numpy(), seq.numpy() != PAD, config.heads)
    return scores, flow[0, config.max_len - len(window):]


def _most_relevant(served: ServedModel, query: np.ndarray) -> np.ndarray:
    """The QUERY_CANDIDATES items (indices 1..N) of highest text cosine to ``query``."""
    cosines = served.content[1:] @ query
    count = min(QUERY_CANDIDATES, len(cosines))
    return np.argpartition(-cosines, count - 1)[:count] + 1


def _with_query(served: ServedModel, scores: np.ndarray | CandidateScores, query: np.ndarray,
                ) -> np.ndarray | CandidateScores:
    """Behaviour scores (standardised already for candidates) plus the weighted
    relevance of ``query``."""
    weight = served.query_blend.weight
    if isinstance(scores, CandidateScores):
        return CandidateScores(scores.items, scores.values + weight * served.text_moments.
                               relevance_at(served.content, query, scores.items))
    base = behaviour_base(scores[None], model_blends(served.model))[0]
    return base + weight * relevance(served.content, query[None])[0]


def _query_alone(served: ServedModel, query: np.ndarray) -> np.ndarray:
    """No history: the query's relevance plus weighted z(log popularity)."""
    return (relevance(served.content, query[None])[0] + served.query_blend.popularity_weight
            * served.popularity_relevance)


def _unit_rows(table: np.ndarray | torch.Tensor, rows: list[int]) -> np.ndarray:
    vectors = np.asarray(table[rows], dtype=np.float64)
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


def _because(table: np.ndarray | torch.Tensor, picked: list[int], history: list[int],
             attention: np.ndarray | None = None) -> list[list[int]]:
    """Per picked item, its reason: among the newest BECAUSE_WINDOW distinct
    history items, those with the largest attention x cosine similarity (rows of
    ``table``, an item table) to it. ``attention``: the encoder's share of each
    of the last ``len(attention)`` history positions (summed over an item's
    repeats); without it, similarity alone."""
    recent = list(dict.fromkeys(reversed(history)))[:BECAUSE_WINDOW]
    if not picked or not recent:
        return [[] for _ in picked]
    relevance = _unit_rows(table, picked) @ _unit_rows(table, recent).T  # (k, R)
    if attention is not None:
        weight = dict.fromkeys(recent, 0.0)
        for item, share in zip(history[len(history) - len(attention):], attention, strict=True):
            if item in weight:
                weight[item] += float(share)
        # An item unlike the recommended one is no reason for it, however attended to.
        relevance = np.clip(relevance, 0.0, None) * np.fromiter(weight.values(), dtype=np.float64)
    order = np.argsort(-relevance, axis=1, kind="stable")[:, :BECAUSE]
    return [[recent[j] for j in row] for row in order]


def _content_blend(served: ServedModel, given: list[int]) -> np.ndarray | None:
    """Popularity (scaled to 0..1) blended with cosine similarity to the mean text
    embedding of the given items; None without text embeddings for them."""
    if served.content is None or not given:
        return None
    profile = served.content[given].mean(axis=0)
    norm = float(np.linalg.norm(profile))
    if norm == 0:
        return None
    similarity = served.content @ (profile / norm)
    top = served.popularity.max()
    popular = np.log1p(served.popularity) / np.log1p(top) if top > 0 else served.popularity
    return CONTENT_WEIGHT * similarity + (1 - CONTENT_WEIGHT) * popular


def scores_or_popularity(served: ServedModel, encoded: list[int], explain: bool = False,
                         user_id: str | None = None, items: list[int] | None = None,
                         query: np.ndarray | None = None,
                         ) -> tuple[np.ndarray | CandidateScores, np.ndarray | None, str | None]:
    """The model's scores for a history (and with ``explain`` its attention
    rollout), or, when the model fails, popularity and the reason."""
    try:
        return *model_scores(served, encoded, explain, user_id, items, query), None
    except Exception as error:  # any model failure: answer from popularity
        log.warning("model v%s failed (%s: %s); answering from popularity",
                    served.version, type(error).__name__, error)
        return served.popularity, None, f"model failed ({type(error).__name__}): popularity"


def recommend(served: ServedModel, history: list[str], k: int, exclude_seen: bool,
              context: list[str] = (), user_id: str | None = None,
              query: str | None = None) -> Ranked:
    """Top-k, best first, for a user's online history (item ids, oldest first) and
    the items given in the request (``context``, newest last). With an online
    history the model reads both (and the user's learned vector, if the model
    has one for ``user_id``); without one, popularity answers, blended with
    content similarity to the given items when there are any. A ``query``
    (cleaned: ``training.query.clean_query``) joins either blend where the
    worker has the query path (``with_queries``)."""
    known = served.index.encode(history)
    given = served.index.encode(list(context))
    encoded = known + given if known else []
    exclude = (encoded or given) if exclude_seen else []
    because = None
    vector = query_vector(served, query)
    if encoded:
        scores, attention, reason = scores_or_popularity(served, encoded, explain=True,
                                                         user_id=user_id, query=vector)
        ranked = _top(scores, k, exclude)
        if reason is None:
            because = _because(served.table, [i for i, _ in ranked], encoded, attention)
        else:
            vector = None
    elif vector is not None:
        reason = "no history for this user: the query's text relevance, with popularity"
        ranked = _top(_query_alone(served, vector), k, exclude)
    else:
        blend = _content_blend(served, given)
        if blend is None:
            reason = "no history for this user: popularity"
            ranked = _popular_top(served, k, exclude)
        else:
            reason = ("no history for this user: popularity blended with content "
                      "similarity to the given items")
            ranked = _top(blend, k, exclude)
            because = _because(served.content, [i for i, _ in ranked], given)
    ids, titles = served.index.item_ids, served.model.titles
    because = because or [[] for _ in ranked]
    return Ranked(items=[(ids[i - 1], s, titles[i - 1], [ids[j - 1] for j in why])
                         for (i, s), why in zip(ranked, because, strict=True)],
                  reason=reason, query=query if vector is not None else None)


def score_items(served: ServedModel, history: list[str], item_ids: list[str],
                user_id: str | None = None) -> tuple[list[float | None], str | None]:
    """Scores for given candidates (None for items not in the catalogue), and the
    fallback's reason when popularity answered instead of the model."""
    encoded = served.index.encode(history)
    known = [served.index.index[i] for i in item_ids if i in served.index.index]
    if encoded:
        scores, _, reason = scores_or_popularity(served, encoded, user_id=user_id, items=known)
    else:
        scores, reason = served.popularity, "no history for this user: popularity"
    if isinstance(scores, CandidateScores):  # the scores of exactly the known items
        scores = dict(zip(scores.items.tolist(), scores.values.tolist(), strict=True))
    return [float(scores[served.index.index[i]]) if i in served.index.index else None
            for i in item_ids], reason
