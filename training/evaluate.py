"""Evaluation under DESIGN.md's protocol: rank ALL items, exclude the user's
history before the target, report NDCG@10, HR@10, MRR and coverage@10, with the
popularity baseline on the same split."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import numpy as np
import torch
from scipy import sparse

from training.sequences import ItemIndex, Split

K = 10


def _rankable(scores: np.ndarray, exclude: list[list[int]]) -> np.ndarray:
    """A float64 copy of (U, N + 1) ``scores`` with padding and each user's
    ``exclude`` at -inf."""
    scores = scores.astype(np.float64, copy=True)
    scores[:, 0] = -np.inf
    for row, items in enumerate(exclude):
        scores[row, items] = -np.inf
    return scores


def _ranks(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    target_scores = scores[np.arange(len(targets)), targets]
    # Pessimistic on ties: an item with an equal score counts as ranked above.
    return (scores > target_scores[:, None]).sum(axis=1) + (
        (scores == target_scores[:, None]).sum(axis=1) - 1)


def target_ranks(scores: np.ndarray, targets: np.ndarray, exclude: list[list[int]],
                 ) -> np.ndarray:
    """The ranks of ``rank_of_targets`` without the top-K lists, counted on the
    scores as they are: the items at least as high, less the excluded ones among
    them, so no copy of a batch is made with its exclusions at -inf (evaluations
    that rank several blends of one batch pay that per blend)."""
    values = torch.from_numpy(scores)
    rows = torch.arange(len(targets))
    target = values[rows, torch.as_tensor(targets)]
    ranks = (values[:, 1:] >= target[:, None]).sum(dim=1).numpy() - 1  # the target counts itself
    width = scores.shape[1]
    for row, items in enumerate(exclude):
        if targets[row] in items or not np.isfinite(target[row].item()):
            # as at -inf: every column ties with it
            ranks[row] = width - 1
        elif items:
            seen = torch.as_tensor(np.unique(items))
            ranks[row] -= int((values[row, seen] >= target[row]).sum())
    return ranks


def rank_of_targets(scores: np.ndarray, targets: np.ndarray,
                    exclude: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    """scores: (U, N + 1) with column 0 padding; targets: (U,) indices.
    Returns the 0-based rank of each target among the non-excluded items, and
    the top-K indices per user (U, K; 0 where fewer than K items are rankable)."""
    scores = _rankable(scores, exclude)
    ranks = _ranks(scores, targets)
    width = min(K, scores.shape[1])
    if scores.shape[1] > LARGE_CATALOGUE:
        # numpy's argpartition of a million-item row costs tens of milliseconds,
        # torch's topk a fraction (items tied at the K-th score may be chosen
        # otherwise, which only coverage can notice)
        top = torch.topk(torch.from_numpy(scores), width, dim=1).indices.numpy()
    else:
        top = np.argpartition(-scores, width - 1, axis=1)[:, :width]
        order = np.take_along_axis(-scores, top, axis=1).argsort(axis=1, kind="stable")
        top = np.take_along_axis(top, order, axis=1)
    top = np.pad(top, ((0, 0), (0, K - width)))  # tiny catalogues: pad with 0 (padding)
    # A user who has seen nearly everything has fewer than K rankable items.
    top[~np.isfinite(np.take_along_axis(scores, top, axis=1))] = 0
    return ranks, top


def ndcg_at_k(ranks: np.ndarray) -> np.ndarray:
    """Each 0-based rank's NDCG@K (one relevant item)."""
    return np.where(ranks < K, 1.0 / np.log2(ranks + 2.0), 0.0)


def metrics_from_ranks(ranks: np.ndarray, top: np.ndarray, n_items: int) -> dict[str, float]:
    hit = ranks < K
    return {
        "ndcg_at_10": float(np.mean(ndcg_at_k(ranks))),
        "hr_at_10": float(np.mean(hit)),
        "mrr": float(np.mean(1.0 / (ranks + 1.0))),
        "coverage_at_10": float(len(np.setdiff1d(np.unique(top), [0])) / n_items),
    }


# (histories, their users' ids or None) -> (U, N + 1) scores
Scorer = Callable[[list[list[int]], list[str] | None], np.ndarray]


# Scores held at once while evaluating (users x catalogue): a batch of users is at
# most this many cells, so memory stays bounded on any catalogue.
EVAL_CELLS = 32_000_000
EVAL_BATCH = 512
LARGE_CATALOGUE = 100_000  # items from which the top K come from torch.topk
# Users x items scored by a validation during training, and by each evaluation
# of a model after it: a sample of at most as many users as fit (never fewer
# than MIN_EVALUATED_USERS), so that a million-item catalogue is evaluated in
# minutes; MovieLens-size data is far below both.
VALIDATION_CELLS = 1_000_000_000
EVALUATION_CELLS = 4_000_000_000
MIN_EVALUATED_USERS = 1000


def users_within(users: int, n_items: int, cells: int) -> int:
    """At most ``users`` (0: no limit) and no more than ``cells`` user x item
    scores over ``n_items`` items allow, but MIN_EVALUATED_USERS at least."""
    budget = max(MIN_EVALUATED_USERS, cells // (n_items + 1))
    return budget if users <= 0 else min(users, budget)


def evaluated_users(cap: int, n_items: int) -> int:
    """How many users a model of ``n_items`` items is validated and tested on:
    ``cap`` (``RECSYS_EVALUATION_USERS``), fewer on catalogues too large to rank
    for that many (EVALUATION_CELLS)."""
    return users_within(cap, n_items, EVALUATION_CELLS)


def evaluation_batch(n_items: int) -> int:
    """Users scored at once for a catalogue of ``n_items``."""
    return max(1, min(EVAL_BATCH, EVAL_CELLS // (n_items + 1)))


def evaluation_rows(split: Split, index: ItemIndex, stage: str,
                    ) -> tuple[list[list[int]], list[int], list[str]]:
    """The protocol's input histories, targets and users of ``stage``:
    'validation': input and exclusion = training items; 'test': training items +
    the validation item. Users whose target is not in the catalogue are left out."""
    histories, targets, evaluated = [], [], []
    for user in sorted(split.validation):
        history = split.train[user] + ([split.validation[user]] if stage == "test" else [])
        target = (split.test if stage == "test" else split.validation)[user]
        if target not in index.index:
            continue
        histories.append(index.encode(history))
        targets.append(index.index[target])
        evaluated.append(user)
    return histories, targets, evaluated


def stage_ranks(scorer: Scorer, split: Split, index: ItemIndex, stage: str,
                batch: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Each evaluated user's target rank and top K of ``stage``
    (``evaluation_rows``, in its order), ``batch`` users scored at once
    (default: ``evaluation_batch``)."""
    histories, targets, evaluated = evaluation_rows(split, index, stage)
    batch = batch or evaluation_batch(len(index))
    ranks, tops = [np.empty(0, np.int64)], [np.empty((0, K), np.int64)]
    for start in range(0, len(histories), batch):
        chunk = histories[start:start + batch]
        scores = scorer(chunk, evaluated[start:start + batch])
        r, t = rank_of_targets(scores, np.asarray(targets[start:start + batch]), chunk)
        ranks.append(r)
        tops.append(t)
    return np.concatenate(ranks), np.concatenate(tops)


def evaluate(scorer: Scorer, split: Split, index: ItemIndex, stage: str,
             batch: int | None = None) -> dict[str, float]:
    """The protocol's metrics of ``stage`` (``stage_ranks``)."""
    return metrics_from_ranks(*stage_ranks(scorer, split, index, stage, batch), len(index))


def interaction_counts(split: Split, index: ItemIndex) -> np.ndarray:
    """(N + 1,) training interactions per model index (0 for padding)."""
    counts = Counter(i for items in split.train.values() for i in items)
    row = np.zeros(len(index) + 1)
    for item, count in counts.items():
        if item in index.index:
            row[index.index[item]] = count
    return row


def popularity_scorer(split: Split, index: ItemIndex) -> Scorer:
    """Training interaction counts as scores, the same for every user."""
    row = interaction_counts(split, index)
    return lambda histories, users=None: np.tile(row, (len(histories), 1))


EASE_MAX_ITEMS = 20_000  # an (N x N) inverse over the items with training interactions
EASE_LAMBDAS = (10.0, 50.0, 200.0, 500.0, 1000.0)


def warm_items(split: Split, index: ItemIndex) -> np.ndarray:
    """Model indices of the items with training interactions, ascending."""
    return np.unique(np.fromiter((i for items in split.train.values()
                                  for i in index.encode(items)), dtype=np.int64))


def ease_scorer(split: Split, index: ItemIndex, lam: float) -> Scorer:
    """EASE (Steck, 2019) fitted on the training interactions: B = I - P / diag(P)
    with P = (X^T X + lam I)^-1, diag(B) = 0; a user's scores are x_u B. An item
    without training interactions has an empty column of X, so its row and
    column of B are 0: the inverse is taken over the other items only, the same
    scores at a fraction of the cost on sparse catalogues."""
    warm = warm_items(split, index)
    column = np.full(len(index) + 1, -1)
    column[warm] = np.arange(len(warm))
    x = _rows([column[index.encode(items)] for items in split.train.values()], len(warm))
    gram = (x.T @ x).toarray()
    gram[np.diag_indices(len(warm))] += lam
    # X^T X + lam I is symmetric positive definite: a float32 Cholesky inverse is
    # several times faster than a float64 LU one and ranks the same.
    factor = torch.linalg.cholesky(torch.from_numpy(gram.astype(np.float32)))
    # (LAPACK hands back column-major memory: row order, for the sparse product)
    inverse = np.ascontiguousarray(torch.cholesky_inverse(factor).double().numpy())
    weights = -inverse / np.diag(inverse)
    weights[np.diag_indices(len(warm))] = 0.0

    def score(histories: list[list[int]], users: list[str] | None = None) -> np.ndarray:
        # x_u is a handful of ones: summing B's rows of the history's items costs
        # (history length x items) per user, a dense product (items x items).
        scores = np.zeros((len(histories), len(index) + 1))
        scores[:, warm] = _rows([column[items] for items in histories], len(warm)) @ weights
        return scores
    return score


def _rows(columns: list[np.ndarray], width: int) -> sparse.csr_matrix:
    """One 0/1 row per entry of ``columns`` (its non-negative columns, repeats once)."""
    kept = [np.unique(c[c >= 0]) for c in columns]
    return sparse.csr_matrix(
        (np.ones(sum(map(len, kept))), np.concatenate(kept or [np.empty(0, np.int64)]),
         np.concatenate([[0], np.cumsum([len(k) for k in kept], dtype=np.int64)])),
        shape=(len(columns), width))


def ease_baseline(split: Split, index: ItemIndex) -> dict[str, float]:
    """EASE with lambda chosen on validation, then test once; {} when more than
    EASE_MAX_ITEMS items have training interactions."""
    if len(warm_items(split, index)) > EASE_MAX_ITEMS:
        return {}
    best_lam, best, best_scorer = None, -1.0, None
    for lam in EASE_LAMBDAS:
        scorer = ease_scorer(split, index, lam)
        ndcg = evaluate(scorer, split, index, "validation")["ndcg_at_10"]
        if ndcg > best:
            best_lam, best, best_scorer = lam, ndcg, scorer
    test = evaluate(best_scorer, split, index, "test")
    return {**{f"baseline_ease_{k}": v for k, v in test.items()},
            "baseline_ease_lambda": best_lam, "val_baseline_ease_ndcg_at_10": best}
