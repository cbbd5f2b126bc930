"""Items nobody has interacted with yet: their vector in the behaviour encoder's
item space comes from their text.

An item without training interactions gets the similarity-weighted mean
direction of the ``NEIGHBOURS`` items with interactions whose text
(``item_text_encoder``, the ``item_content`` view) is nearest its own, at the
mean length of those items' vectors, so the model can recommend it and read it
in a history. The neighbours are drawn from items with at least
``LENDER_MIN_INTERACTIONS`` training interactions: an item seen a few times has
a vector trained mostly as a negative, pointing away from every user, and on a
large sparse catalogue most items are such (a new item lent their directions
ranks below random).

The cold-start evaluation holds out a share of the catalogue from the training
interactions (the items stay in the catalogue, with their text), trains on the
rest, and reports HR@10 on the test events whose item was held out, against
the rate of a random ranking.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from training.evaluate import (
    K,
    evaluation_batch,
    evaluation_rows,
    interaction_counts,
    ndcg_at_k,
    rank_of_targets,
    stage_ranks,
    warm_items,
)
from training.model import BehaviourEncoder, EncoderConfig
from training.sequences import ItemIndex, Split, pad_left
from training.train import TrainConfig, model_scorer, train_encoder, validation_sample
from training.transitions import standardised

# How many text neighbours a cold item's vector is drawn from, chosen on the
# validation events of held-out items (docs/experiments.md, Cold-start item vectors).
NEIGHBOURS = 20
CHUNK = 1024  # cold items whose (CHUNK, warm items) similarities are held at once
# Beyond this many cold x warm pairs the neighbours come from an inverted file
# (approximate): exact, a million-item catalogue's tens of thousands of cold items
# would take a quarter of an hour.
EXACT_PAIRS = 2_000_000_000
# Items that lend their vectors to cold ones, chosen on the validation events of
# held-out items of two sets (docs/experiments.md, Cold-start item vectors); all
# items with interactions when fewer than NEIGHBOURS have this many.
LENDER_MIN_INTERACTIONS = 50
# How much of their lenders' transition score cold items take, tried in this
# order on the validation events of the filled model (the earlier on a tie).
BORROWED_WEIGHTS = (1.0, 0.5, 0.25, 0.0)
IVF_PROBES = 32
IVF_TRAIN_PER_LIST = 64
BOOTSTRAP = 2000  # resamples of the users for the lift's interval


def text_neighbours(text: np.ndarray, warm_text: np.ndarray, neighbours: int = NEIGHBOURS,
                    ) -> tuple[np.ndarray, np.ndarray]:
    """(n, T) unit text embeddings of cold items, (m, T) the warm items' ->
    (n, k) rows of the k nearest warm items and (n, k) their shares (text cosine
    similarity, negative ones 0, summing to 1; all alike when none is positive).
    Exact up to EXACT_PAIRS cold x warm pairs, approximate (``_ivf_search``) above."""
    k = min(neighbours, len(warm_text))
    if len(text) * len(warm_text) > EXACT_PAIRS:
        similarity, nearest = _ivf_search(text, warm_text, k)
    else:
        nearest = np.empty((len(text), k), dtype=np.int64)
        similarity = np.empty((len(text), k), dtype=np.float32)
        for start in range(0, len(text), CHUNK):
            rows = slice(start, start + CHUNK)
            every = text[rows] @ warm_text.T  # (chunk, m)
            nearest[rows] = np.argpartition(-every, k - 1, axis=1)[:, :k]
            similarity[rows] = np.take_along_axis(every, nearest[rows], axis=1)
    weights = similarity.clip(min=0)
    weights[weights.sum(axis=1) == 0] = 1.0
    return nearest, (weights / weights.sum(axis=1, keepdims=True)).astype(np.float32)


def _ivf_search(text: np.ndarray, warm_text: np.ndarray, k: int,
                ) -> tuple[np.ndarray, np.ndarray]:
    """The k warm items of highest cosine per cold item from an inverted file
    (faiss IVF, sqrt(m) lists, IVF_PROBES of them searched): on a million-item
    catalogue the exact search would compare every cold item with every warm
    one. A neighbour missing from the probed lists (rare) is the first warm item
    at similarity 0, so it takes no share."""
    import faiss

    warm_text = np.ascontiguousarray(warm_text, dtype=np.float32)
    lists = max(1, int(np.sqrt(len(warm_text))))
    quantiser = faiss.IndexFlatIP(warm_text.shape[1])
    index = faiss.IndexIVFFlat(quantiser, warm_text.shape[1], lists,
                               faiss.METRIC_INNER_PRODUCT)
    rng = np.random.default_rng(0)
    sample = rng.choice(len(warm_text), size=min(len(warm_text), IVF_TRAIN_PER_LIST * lists),
                        replace=False)
    index.train(warm_text[np.sort(sample)])
    index.add(warm_text)
    index.nprobe = min(IVF_PROBES, lists)
    similarity, nearest = index.search(np.ascontiguousarray(text, dtype=np.float32), k)
    missing = nearest < 0
    return np.where(missing, 0.0, similarity).astype(np.float32), np.where(missing, 0, nearest)


def neighbour_vectors(nearest: np.ndarray, shares: np.ndarray, warm_vectors: np.ndarray,
                      ) -> np.ndarray:
    """``text_neighbours``' (n, k) rows and shares, (m, D) the warm items' vectors
    -> (n, D): the shares' mix of the neighbours' unit vectors, scaled to the warm
    vectors' mean length."""
    lengths = np.linalg.norm(warm_vectors, axis=1, keepdims=True)
    units = warm_vectors / np.maximum(lengths, 1e-12)
    mixed = np.einsum("nk,nkd->nd", shares, units[nearest])
    mixed /= np.maximum(np.linalg.norm(mixed, axis=1, keepdims=True), 1e-12)
    return (mixed * lengths.mean()).astype(np.float32)


def lenders(warm: np.ndarray, counts: np.ndarray | None) -> np.ndarray:
    """Of ``warm`` (model indices), those that lend their vectors to cold items:
    at least LENDER_MIN_INTERACTIONS in ``counts`` ((N + 1,) training
    interactions; None: every warm item), or all of them when fewer than
    NEIGHBOURS qualify."""
    if counts is None:
        return warm
    kept = warm[counts[warm] >= LENDER_MIN_INTERACTIONS]
    return kept if len(kept) >= NEIGHBOURS else warm


def fill_cold_items(model: BehaviourEncoder, text: np.ndarray, warm: np.ndarray,
                    counts: np.ndarray | None = None) -> int:
    """Give every catalogue item outside ``warm`` (model indices with training
    interactions) a vector from its text neighbours among the lending warm items
    (``lenders``, from the (N + 1,) interaction ``counts``), in place, and, when
    the model has item transitions, the neighbours' transition scores too
    (nothing followed a cold item in training). ``text``: (N + 1, T), row i =
    model index i, zero rows for items without text (left as they are). Returns
    how many items were filled."""
    has_text = np.linalg.norm(text, axis=1) > 0
    warm_mask = np.zeros(len(text), dtype=bool)
    warm_mask[warm] = True
    warm_mask[0] = False
    lending = np.zeros(len(text), dtype=bool)
    lending[lenders(np.asarray(warm), counts)] = True
    fit_rows = np.flatnonzero(lending & warm_mask & has_text)
    cold_rows = np.flatnonzero(~warm_mask & has_text)
    cold_rows = cold_rows[cold_rows > 0]
    if len(fit_rows) == 0 or len(cold_rows) == 0:
        return 0
    nearest, shares = text_neighbours(text[cold_rows], text[fit_rows])
    table = model.item_embedding.weight
    vectors = neighbour_vectors(nearest, shares, table[fit_rows].detach().numpy())
    with torch.no_grad():
        table[torch.from_numpy(cold_rows)] = torch.from_numpy(vectors)
    if getattr(model, "transitions", None) is not None:
        model.transitions = model.transitions.borrowing(cold_rows, fit_rows[nearest], shares)
    return len(cold_rows)


def choose_borrowed_weight(model: BehaviourEncoder, split: Split, index: ItemIndex) -> float:
    """Set the model's ``Transitions.borrowed_weight`` to the one of
    BORROWED_WEIGHTS with the best validation NDCG@10 on ``split`` (the earlier
    on a tie) and return it. The encoder's scores and the transition scores
    before lending are worked out once per batch; each weight only relends them
    and blends (``Transitions.blend``'s arithmetic)."""
    transitions = getattr(model, "transitions", None)
    if transitions is None or transitions.borrowers is None or not transitions.weight:
        return transitions.borrowed_weight if transitions is not None else 1.0
    variants = [transitions.lending(weight) for weight in BORROWED_WEIGHTS]
    histories, targets, users = evaluation_rows(split, index, "validation")
    gains = np.zeros(len(variants))
    batch = evaluation_batch(len(index))
    for start in range(0, len(histories), batch):
        chunk = histories[start:start + batch]
        seq = pad_left(chunk, model.config.max_len)
        with torch.inference_mode():
            encoder = model.encoder_scores(seq, model.user_rows(users[start:start + batch]))
            encoder[:, 1:] = standardised(encoder[:, 1:])
        own = transitions.own_scores(seq.numpy())
        largest = transitions.largest_lent(own)
        for j, variant in enumerate(variants):
            scores = variant.blend_standardised(encoder.clone(), seq,
                                                variant.lent_scores(own, largest))
            ranks, _ = rank_of_targets(scores.numpy(), np.asarray(targets[start:start + batch]),
                                       chunk)
            gains[j] += ndcg_at_k(ranks).sum()
    model.transitions = variants[int(np.argmax(gains))]
    return model.transitions.borrowed_weight


def cold_items_from_text(model: BehaviourEncoder, text: np.ndarray, split: Split,
                         index: ItemIndex, config: TrainConfig) -> int:
    """``fill_cold_items`` for the items without interactions in ``split``'s
    training events, then ``choose_borrowed_weight`` on the validation users the
    model's blend was chosen on (``validation_sample``); returns how many items
    were filled."""
    filled = fill_cold_items(model, text, warm_items(split, index),
                             interaction_counts(split, index))
    if filled:
        choose_borrowed_weight(model, validation_sample(split, len(index), config), index)
    return filled


def hold_out_items(index: ItemIndex, fraction: float, seed: int) -> set[str]:
    rng = np.random.default_rng(seed)
    n = max(1, int(round(fraction * len(index))))
    return set(rng.choice(np.asarray(index.item_ids, dtype=object), size=n, replace=False))


def without_items(histories: list[list[int]], users: list[str], held_out: set[int],
                  ) -> tuple[list[list[int]], list[str]]:
    """Training histories (and their users) with the held-out items taken out; a
    history left shorter than 2 is dropped."""
    kept = [([i for i in seq if i not in held_out], user)
            for seq, user in zip(histories, users, strict=True)]
    kept = [(seq, user) for seq, user in kept if len(seq) >= 2]
    return [seq for seq, _ in kept], [user for _, user in kept]


def cold_split(split: Split, held_out: set[str]) -> tuple[Split, Split]:
    """(the split to train and early-stop on: held-out items removed from training
    histories, validation without held-out targets; the split to measure on: the
    users whose test item is held out, histories as in the protocol)."""
    train = {u: [i for i in items if i not in held_out] for u, items in split.train.items()}
    validation = {u: i for u, i in split.validation.items() if i not in held_out}
    fit = Split(train=train, validation=validation,
                test={u: split.test[u] for u in validation})
    cold_users = [u for u, i in split.test.items() if i in held_out]
    measure = Split(train=split.train, validation={u: split.validation[u] for u in cold_users},
                    test={u: split.test[u] for u in cold_users})
    return fit, measure


def random_hit_rates(split: Split, index: ItemIndex) -> np.ndarray:
    """Per test user (``evaluation_rows`` order), the HR@10 of a uniformly random
    ranking: 10 / the number of rankable items (the catalogue minus the
    excluded history)."""
    _, _, users = evaluation_rows(split, index, "test")
    rates = []
    for user in users:
        excluded = len(set(index.encode(split.train[user] + [split.validation[user]])))
        rankable = max(1, len(index) - excluded)
        rates.append(min(K, rankable) / rankable)
    return np.asarray(rates, dtype=np.float64)


@dataclass(frozen=True)
class ColdStartDraw:
    """One draw of held-out items: per test user whose target was held out,
    whether it was in the top 10, and a random ranking's chance of that."""

    seed: int
    held_out_items: int
    hits: np.ndarray  # (U,) bool
    random_rates: np.ndarray  # (U,) float
    train_seconds: float
    epochs: int


def lift_interval(hits: np.ndarray, rates: np.ndarray, resamples: int = BOOTSTRAP,
                  seed: int = 0) -> tuple[float, float]:
    """A 95% interval of the lift (hit rate / random rate) from resampling the
    users with replacement (percentile bootstrap)."""
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(hits), size=(resamples, len(hits)))
    lifts = hits[picks].mean(axis=1) / rates[picks].mean(axis=1)
    low, high = np.percentile(lifts, [2.5, 97.5])
    return float(low), float(high)


def pooled_metrics(draws: list[ColdStartDraw]) -> dict[str, float]:
    """HR@10 and lift over the test users of every draw together, the lift's 95%
    interval, and the random ranking's expected hits (below a few, no lift can
    be told from luck)."""
    hits = np.concatenate([d.hits for d in draws]).astype(np.float64)
    rates = np.concatenate([d.random_rates for d in draws])
    out = {"cold_start_draws": len(draws), "cold_start_users": len(hits),
           "cold_start_held_out_items": int(np.mean([d.held_out_items for d in draws])),
           # its own training steps: how long, and how many epochs their budgets allowed
           "cold_start_train_seconds": float(sum(d.train_seconds for d in draws)),
           "cold_start_epochs": float(np.mean([d.epochs for d in draws]))}
    if not len(hits):
        return out
    hr, random = float(hits.mean()), float(rates.mean())
    low, high = lift_interval(hits, rates)
    return {**out, "cold_start_hr_at_10": hr, "cold_start_random_hr_at_10": random,
            "cold_start_lift": hr / random, "cold_start_lift_low": low,
            "cold_start_lift_high": high, "cold_start_hits": float(hits.sum()),
            "cold_start_random_hits": float(rates.sum())}


def cold_start_draw(histories: list[list[int]], users: list[str], split: Split,
                    index: ItemIndex, titles: list[str], text: np.ndarray,
                    model_config: EncoderConfig, train_config: TrainConfig,
                    fraction: float, seed: int) -> ColdStartDraw:
    """Train with ``fraction`` of the items (drawn with ``seed``) held out of the
    training interactions (early stopping on the validation events of the other
    items), give the held-out items their text-mapped vectors, and rank each
    test event of those items."""
    held_out = hold_out_items(index, fraction, seed)
    fit, measure = cold_split(split, held_out)
    histories, users = without_items(histories, users, set(index.encode(sorted(held_out))))
    result = train_encoder(histories, fit, index, titles, model_config, train_config,
                           users=users)
    cold_items_from_text(result.model, text, fit, index, train_config)
    ranks, _ = stage_ranks(model_scorer(result.model), measure, index, "test")
    return ColdStartDraw(seed=seed, held_out_items=len(held_out), hits=ranks < K,
                         random_rates=random_hit_rates(measure, index),
                         train_seconds=result.train_seconds, epochs=len(result.history))


def evaluate_cold_start(histories: list[list[int]], users: list[str], split: Split,
                        index: ItemIndex, titles: list[str], text: np.ndarray,
                        model_config: EncoderConfig, train_config: TrainConfig,
                        fraction: float, seeds: tuple[int, ...]) -> dict[str, float]:
    """``cold_start_draw`` for each of ``seeds``, pooled (``pooled_metrics``)."""
    return pooled_metrics([cold_start_draw(histories, users, split, index, titles, text,
                                           model_config, train_config, fraction, seed)
                           for seed in seeds])
