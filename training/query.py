"""What a user types, as one more component of the recommendation.

A query is embedded with the item text encoder (mean pooling, unit length: the
items' own text embeddings), and its cosine with each item's text embedding,
standardised over the catalogue, is its ``relevance``. With a history the
relevance joins the behaviour blend (``z(encoder) + transitions + popularity``,
the same standardised scale) at ``QueryBlend.weight``; with none the query
ranks alone, plus ``QueryBlend.popularity_weight`` x z(log popularity). Both
weights are chosen on validation (``evaluate_query``).

The evaluation (docs/models.md, Queries): each validation and test event gets a
query made from its target item's genres ("comedy romance"; never its title or
id), and behaviour alone, the query alone and the blend are ranked under the
protocol (every item, the history excluded). Events whose target has no genres
have no query and are left out of it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

from training.evaluate import (
    K,
    Scorer,
    evaluation_batch,
    evaluation_rows,
    ndcg_at_k,
    target_ranks,
)
from training.sequences import ItemIndex, Split

QUERY_MAX_CHARS = 200
# Candidate weights of the relevance in the behaviour blend, and of popularity
# beside a query with no history (0: the query alone).
QUERY_WEIGHTS = (0.25, 0.5, 1.0, 2.0, 4.0)
POPULARITY_WEIGHTS = (0.0, 0.1, 0.25, 0.5, 1.0)
# Genre labels that say nothing about an item (ML-100K's "unknown", ML-latest's).
NO_GENRE = frozenset({"unknown", "(no genres listed)"})
GENRE_SEPARATOR = "|"


def clean_query(text: str | None) -> str | None:
    """The query as it is embedded (whitespace runs collapsed); None for no query
    (None or ""). Raises ValueError for one longer than QUERY_MAX_CHARS or blank."""
    if not text:
        return None
    if len(text) > QUERY_MAX_CHARS:
        raise ValueError(f"a query is at most {QUERY_MAX_CHARS} characters (got {len(text)})")
    cleaned = " ".join(text.split())
    if not cleaned:
        raise ValueError("the query is blank: send text, or leave it out for no query")
    return cleaned


def genre_query(genres: str | None) -> str:
    """An item's genres as the evaluation's query, e.g. "Comedy|Romance" ->
    "comedy romance"; "" when it has none that say anything."""
    labels = [g.strip().lower() for g in (genres or "").split(GENRE_SEPARATOR)]
    return " ".join(g for g in labels if g and g not in NO_GENRE)


@dataclass(frozen=True)
class QueryBlend:
    weight: float  # of the query's relevance, added to the behaviour blend
    popularity_weight: float  # with no history: relevance + this x z(log popularity)

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> QueryBlend:
        return cls(weight=float(values["weight"]),
                   popularity_weight=float(values["popularity_weight"]))


# For versions registered without a chosen blend (and catalogues without genres,
# where the evaluation has no query to choose on): equal standing with the
# behaviour blend's encoder term, popularity a light tie-break.
DEFAULT_BLEND = QueryBlend(weight=1.0, popularity_weight=0.25)


def standardised_rows(scores: np.ndarray) -> np.ndarray:
    """(B, N + 1) -> per row z-scores over columns 1..N (column 0, padding, 0); a
    constant row is all 0."""
    out = np.empty(scores.shape, dtype=np.float64)
    out[:, 0] = 0.0
    items = out[:, 1:]  # worked on in place: a batch over a large catalogue is big
    items[:] = scores[:, 1:]
    items -= items.mean(axis=1, keepdims=True)
    spread = np.sqrt(np.einsum("ij,ij->i", items, items) / max(1, items.shape[1]))[:, None]
    items /= np.where(spread > 0, spread, 1.0)
    return out


def relevance(content: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """(N + 1, T) unit text embeddings (zero rows: padding, items without text),
    (B, T) unit query embeddings -> (B, N + 1) standardised cosines."""
    return standardised_rows(np.asarray(queries, dtype=np.float32) @ content.T)


@dataclass(frozen=True)
class TextMoments:
    """The catalogue's mean text embedding and mean outer product (over items
    1..N): a query's mean and spread of cosines over every item are ``q . m`` and
    ``sqrt(q' S q - (q . m)^2)``, so the relevance of a few candidates is exact
    without a pass over the catalogue."""

    mean: np.ndarray  # (T,) float64
    second_moment: np.ndarray  # (T, T) float64

    @classmethod
    def of(cls, content: np.ndarray) -> TextMoments:
        rows = content[1:].astype(np.float64)
        return cls(mean=rows.mean(axis=0), second_moment=rows.T @ rows / max(1, len(rows)))

    def relevance_at(self, content: np.ndarray, query: np.ndarray, items: np.ndarray,
                     ) -> np.ndarray:
        """``relevance(content, query[None])[0, items]``, from ``items``' rows alone."""
        q = np.asarray(query, dtype=np.float64)
        mean = float(q @ self.mean)
        spread = float(np.sqrt(max(q @ self.second_moment @ q - mean * mean, 0.0)))
        return (content[items].astype(np.float64) @ q - mean) / (spread if spread > 0 else 1.0)


def popularity_relevance(popularity: np.ndarray) -> np.ndarray:
    """(N + 1,) counts -> (N + 1,) z(log1p(counts)) over items 1..N, 0 at padding."""
    return standardised_rows(np.log1p(np.asarray(popularity, dtype=np.float64))[None])[0]


def behaviour_base(scores: np.ndarray, blended: bool) -> np.ndarray:
    """(B, N + 1) behaviour scores on the blend's standardised scale: already on it
    when the model blends transitions or popularity (``Transitions.blend``
    standardises the encoder's term), standardised here when it does not."""
    return np.asarray(scores, dtype=np.float64) if blended else standardised_rows(scores)


def model_blends(model) -> bool:
    """Whether the model's served scores are already the standardised blend."""
    transitions = getattr(model, "transitions", None)
    return transitions is not None and transitions.blending


def _query_rows(split: Split, index: ItemIndex, stage: str, item_queries: dict[str, str],
                ) -> tuple[list[list[int]], list[int], list[str], list[str]]:
    """``evaluation_rows`` of ``stage`` whose target has a query, and those queries."""
    histories, targets, users = evaluation_rows(split, index, stage)
    ids = index.item_ids
    kept = [j for j, t in enumerate(targets) if item_queries.get(ids[t - 1])]
    return ([histories[j] for j in kept], [targets[j] for j in kept],
            [users[j] for j in kept], [item_queries[ids[targets[j] - 1]] for j in kept])


def _stage_gains(scorer: Scorer, blended: bool, split: Split, index: ItemIndex,
                 content: np.ndarray, embed: Callable[[list[str]], np.ndarray],
                 item_queries: dict[str, str], popularity: np.ndarray, stage: str,
                 weights: tuple[float, ...], popularity_weights: tuple[float, ...],
                 ) -> tuple[int, dict[str, np.ndarray]]:
    """How many events had a query, and the summed NDCG@10 and hits of: behaviour
    alone ('behaviour', (1,)), behaviour + w x relevance per ``weights``
    ('blend'), relevance + p x z(log popularity) per ``popularity_weights``
    ('only': the query alone)."""
    histories, targets, users, queries = _query_rows(split, index, stage, item_queries)
    distinct = sorted(set(queries))
    vectors = dict(zip(distinct, embed(distinct), strict=True)) if distinct else {}
    popular = popularity_relevance(popularity)[None]
    sums = {name: np.zeros((2, size)) for name, size in
            (("behaviour", 1), ("blend", len(weights)), ("only", len(popularity_weights)))}
    batch = evaluation_batch(len(index))
    for start in range(0, len(histories), batch):
        rows = slice(start, start + batch)
        chunk, goal = histories[rows], np.asarray(targets[rows])
        base = behaviour_base(scorer(chunk, users[rows]), blended)
        relevant = relevance(content, np.stack([vectors[q] for q in queries[rows]]))
        blend = np.empty_like(relevant)  # each ranking's scores, in one buffer

        def add(name: str, column: int, scores: np.ndarray, chunk=chunk, goal=goal) -> None:
            ranks = target_ranks(scores, goal, chunk)
            sums[name][:, column] += (ndcg_at_k(ranks).sum(), (ranks < K).sum())
        add("behaviour", 0, base)
        for j, w in enumerate(weights):
            add("blend", j, np.add(base, np.multiply(w, relevant, out=blend), out=blend))
        for j, p in enumerate(popularity_weights):
            add("only", j, np.add(relevant, p * popular, out=blend))
    return len(histories), sums


def evaluate_query(scorer: Scorer, blended: bool, split: Split, index: ItemIndex,
                   content: np.ndarray, embed: Callable[[list[str]], np.ndarray],
                   item_queries: dict[str, str], popularity: np.ndarray,
                   validation: Split | None = None) -> tuple[QueryBlend, dict[str, float]]:
    """The query blend chosen on validation (the weights of best NDCG@10, the
    earlier on a tie), and NDCG@10 / HR@10 of behaviour alone, the query alone and
    the blend on test at those weights (``query_*`` metrics; val_ ones too).
    ``scorer``: the model's served scores; ``blended``: ``model_blends``;
    ``content``: (N + 1, T) item text embeddings; ``embed``: texts -> unit
    embeddings (the item text encoder); ``item_queries``: item id -> its genre
    query; ``popularity``: (N + 1,) training counts; ``validation``: the users the
    weights are chosen on (default: all of ``split``'s), e.g. the sample the
    behaviour blend was chosen on (``train.validation_sample``)."""
    def gains(users: Split, stage: str, weights: tuple[float, ...],
              popularity_weights: tuple[float, ...]) -> tuple[int, dict[str, np.ndarray]]:
        return _stage_gains(scorer, blended, users, index, content, embed, item_queries,
                            popularity, stage, weights, popularity_weights)
    events, val = gains(split if validation is None else validation, "validation",
                        QUERY_WEIGHTS, POPULARITY_WEIGHTS)
    if events == 0:
        return DEFAULT_BLEND, {"query_events": 0}
    weight = int(np.argmax(val["blend"][0]))
    pop = int(np.argmax(val["only"][0]))
    chosen = QueryBlend(weight=QUERY_WEIGHTS[weight], popularity_weight=POPULARITY_WEIGHTS[pop])
    test_events, test = gains(split, "test", (chosen.weight,), (chosen.popularity_weight,))
    metrics = {"query_events": test_events, "val_query_events": events,
               "query_weight": chosen.weight,
               "query_popularity_weight": chosen.popularity_weight}
    for name, column_val in (("behaviour", 0), ("only", pop), ("blend", weight)):
        metrics[f"val_query_{name}_ndcg_at_10"] = val[name][0, column_val] / events
        if test_events:
            metrics[f"query_{name}_ndcg_at_10"] = test[name][0, 0] / test_events
            metrics[f"query_{name}_hr_at_10"] = test[name][1, 0] / test_events
    return chosen, metrics
