"""What follows what: item-to-item transition counts of the training sequences,
and how often each item occurs at all, blended with the encoder's scores.

For each lag 1..``lags``, how often item j came ``lag`` positions after item i
in the training histories, as log(1 + count). A history's transition score for
item j sums, over the lags, the row of its lag-th newest item. The encoder
reads the order of one history; these counts add what the whole training data
says about what comes after each of its last few items (on MovieLens-100K the
order of a history carries most of the signal: docs/models.md). The blend,
both standardised per user over the catalogue, is
``z(encoder) + weight * z(transitions)``, with the weight chosen on validation.
Popularity, log(1 + the item's count), can join the blend with a weight of its
own (``z(popularity)``): the encoder scores by cosine similarity, so an item's
vector cannot carry how popular it is.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from functools import cached_property

import numpy as np
import torch

from training.model import PAD

# Successors kept per item and lag: the most frequent ones. A request reads the
# rows of its newest items, and on a Zipf-popular catalogue the rows of popular
# items grow with it (tens of thousands of distinct successors at a million
# items), so an unbounded row makes the served request's cost grow with the
# catalogue. The longest row of ML-100K is about a quarter of this: on catalogues
# of that size nothing is cut (docs/experiments.md).
ROW_LIMIT = 1_000

# The blend weights tried on validation (0: the encoder alone), for the
# transitions and for popularity.
WEIGHTS = (0.0, 0.025, 0.05, 0.075, 0.1, 0.125, 0.15, 0.175, 0.2, 0.25)
POPULARITY_WEIGHTS = (0.0, 0.025, 0.05, 0.1, 0.15, 0.2, 0.3)


@dataclass(frozen=True)
class Lag:
    """One lag's counts as compressed rows: row i's columns are
    ``indices[indptr[i]:indptr[i + 1]]``, with ``values`` log(1 + count)."""

    indptr: np.ndarray  # (N + 2,) int64
    indices: np.ndarray  # (nnz,) int32
    values: np.ndarray  # (nnz,) float32


@dataclass(frozen=True)
class SparseScores:
    """One history's transition scores: ``values`` of ``items`` (ascending model
    indices), every other item of the ``n_items`` catalogue 0."""

    items: np.ndarray  # (S,) int64
    values: np.ndarray  # (S,) float64
    n_items: int

    def mean_and_spread(self) -> tuple[float, float]:
        """The mean and standard deviation over the whole catalogue (zeros too)."""
        mean = float(self.values.sum()) / self.n_items
        square = float((self.values ** 2).sum()) / self.n_items
        return mean, float(np.sqrt(max(square - mean * mean, 0.0)))

    def at(self, items: np.ndarray) -> np.ndarray:
        """The scores of ``items`` (any model indices)."""
        out = np.zeros(len(items))
        if len(self.items):
            where = np.searchsorted(self.items, items).clip(max=len(self.items) - 1)
            found = self.items[where] == items
            out[found] = self.values[where[found]]
        return out


@dataclass(frozen=True)
class Transitions:
    n_items: int
    lags: tuple[Lag, ...]
    weight: float = 0.0
    # (N + 1,) log(1 + how often each item occurs in the sequences), and its weight.
    popularity: np.ndarray | None = None
    popularity_weight: float = 0.0
    # Items without training interactions (C,) take their transition scores from
    # the items in ``lenders`` (C, K), their text neighbours (training.cold_start):
    # ``borrowed_weight`` times the largest of the lenders' scores, and their
    # popularity in the given ``shares`` (C, K). A mix would spread a lender's
    # score over all of its text neighbours' so thinly that, next to the peaks
    # of warm items, a new item never reached a top 10; the full largest score
    # lets a catalogue with many cold items fill the top 10 with them, so the
    # weight is chosen on validation (docs/experiments.md, Cold-start item
    # vectors).
    borrowers: np.ndarray | None = None
    lenders: np.ndarray | None = None
    shares: np.ndarray | None = None
    borrowed_weight: float = 1.0

    @classmethod
    def count(cls, sequences: list[list[int]], n_items: int, lags: int,
              row_limit: int = ROW_LIMIT) -> Transitions:
        """Counts over ``sequences`` (item indices 1..n_items, oldest first), each
        row cut to its ``row_limit`` largest counts (ties: the lower item index)."""
        size = n_items + 1
        occurrences = np.bincount(np.concatenate([np.asarray(seq, dtype=np.int64)
                                                  for seq in sequences] or [np.empty(0, int)]),
                                  minlength=size)[:size]
        tables = []
        for lag in range(1, lags + 1):
            pairs = [np.asarray(seq[:-lag], dtype=np.int64) * size + np.asarray(seq[lag:])
                     for seq in sequences if len(seq) > lag]
            codes, counts = np.unique(np.concatenate(pairs) if pairs else np.empty(0, np.int64),
                                      return_counts=True)
            rows, cols = np.divmod(codes, size)
            rows, cols, counts = _largest_per_row(rows, cols, counts, row_limit)
            indptr = np.zeros(size + 1, dtype=np.int64)
            np.add.at(indptr, rows + 1, 1)
            tables.append(Lag(indptr=np.cumsum(indptr), indices=cols.astype(np.int32),
                              values=np.log1p(counts).astype(np.float32)))
        return cls(n_items=n_items, lags=tuple(tables),
                   popularity=np.log1p(occurrences).astype(np.float32))

    def weighted(self, weight: float, popularity_weight: float = 0.0) -> Transitions:
        return replace(self, weight=weight, popularity_weight=popularity_weight)

    @property
    def blending(self) -> bool:
        """Whether ``blend`` changes the encoder's scores (either weight is set)."""
        return bool(self.weight or self.popularity_weight)

    def borrowing(self, borrowers: np.ndarray, lenders: np.ndarray, shares: np.ndarray,
                  ) -> Transitions:
        """Items ``borrowers`` (C,) take their transition scores from ``lenders``
        (C, K) (``borrowed_weight`` times the largest) and their popularity from
        them in ``shares`` (C, K)."""
        popularity = self.popularity
        if popularity is not None:
            popularity = popularity.copy()
            popularity[borrowers] = (popularity[lenders] * shares).sum(axis=1)
        return replace(self, borrowers=borrowers, lenders=lenders, shares=shares,
                       popularity=popularity)

    def _rows(self, history: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(columns, values) of the row of each lag's item of one (T,) left-padded
        history: what came ``lag`` positions after its ``lag``-th newest item."""
        for lag, table in enumerate(self.lags, start=1):
            if lag > len(history):
                break
            item = int(history[-lag])
            if item == PAD or item > self.n_items:
                continue
            begin, end = table.indptr[item], table.indptr[item + 1]
            yield table.indices[begin:end], table.values[begin:end]

    def lending(self, borrowed_weight: float) -> Transitions:
        return replace(self, borrowed_weight=borrowed_weight)

    def scores(self, seq: np.ndarray) -> np.ndarray:
        """(B, T) left-padded item indices -> (B, N + 1) transition scores."""
        own = self.own_scores(seq)
        return own if self.borrowers is None else self.lent_scores(own)

    def own_scores(self, seq: np.ndarray) -> np.ndarray:
        """``scores`` before the borrowers take their lenders' (their own: 0)."""
        out = np.zeros((len(seq), self.n_items + 1), dtype=np.float32)
        for row, history in enumerate(seq):
            for columns, values in self._rows(history):
                out[row, columns] += values
        return out

    def lent_scores(self, own: np.ndarray, largest: np.ndarray | None = None) -> np.ndarray:
        """``own_scores`` -> ``scores``: a copy with the borrowers' columns set
        from their lenders' (``largest``: ``largest_lent(own)`` when already
        worked out)."""
        out = own.copy()
        if self.borrowers is None:
            return out
        if not self.borrowed_weight:
            out[:, self.borrowers] = 0.0
        else:
            out[:, self.borrowers] = self.borrowed_weight * (
                self.largest_lent(own) if largest is None else largest)
        return out

    def largest_lent(self, own: np.ndarray) -> np.ndarray:
        """(B, C) the largest of each borrower's lenders' ``own_scores``."""
        # gathered from the transpose, whose rows (items) are contiguous
        return np.ascontiguousarray(own.T)[self.lenders].max(axis=1).T

    def sparse_scores(self, history: np.ndarray) -> SparseScores:
        """The transition scores of one (T,) left-padded history, as ``scores``
        gives them, holding only the items with a score: the work grows with the
        rows read, not with the catalogue (for two-stage serving)."""
        rows = list(self._rows(history))
        columns, values = [c for c, _ in rows], [v for _, v in rows]
        if not columns:
            return SparseScores(np.empty(0, np.int64), np.empty(0, np.float64), self.n_items)
        items, where = np.unique(np.concatenate(columns), return_inverse=True)
        summed = np.bincount(where, weights=np.concatenate(values).astype(np.float64))
        if self.borrowers is not None:
            items, summed = self._lent(items.astype(np.int64), summed)
        keep = summed != 0
        return SparseScores(items[keep].astype(np.int64), summed[keep], self.n_items)

    def _lent(self, items: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The borrowers' scores (``borrowed_weight`` times the largest of their
        lenders') in place of their own, as ``scores`` sets them, for the sparse
        ``items``' (positive) ``values``."""
        indptr, borrowers, is_borrower = self.lent
        own = ~is_borrower[items]
        items, values = items[own], values[own]
        begin, end = indptr[items], indptr[items + 1]
        if not self.borrowed_weight or not (end > begin).any():
            return items, values
        # every lender's range of borrowers, gathered by index (no loop over items)
        lengths = end - begin
        starts = np.cumsum(lengths) - lengths
        picks = np.arange(lengths.sum()) + np.repeat(begin - starts, lengths)
        merged, where = np.unique(np.concatenate([items, borrowers[picks]]),
                                  return_inverse=True)
        largest = np.zeros(len(merged))  # every value is positive
        np.maximum.at(largest, where, np.concatenate(
            [values, self.borrowed_weight * np.repeat(values, lengths)]))
        return merged, largest

    @cached_property
    def lent(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``borrowers``/``lenders`` inverted: per lender item, its borrowers, as
        compressed rows (indptr (N + 2,), borrowers), and (N + 1,) whether each
        item is a borrower."""
        is_borrower = np.zeros(self.n_items + 1, dtype=bool)
        is_borrower[self.borrowers] = True
        lenders = self.lenders.reshape(-1)
        borrowers = np.repeat(self.borrowers, self.lenders.shape[1])
        order = np.argsort(lenders, kind="stable")
        indptr = np.zeros(self.n_items + 2, dtype=np.int64)
        np.add.at(indptr, lenders + 1, 1)
        return np.cumsum(indptr), borrowers[order].astype(np.int64), is_borrower

    def blend(self, scores: torch.Tensor, seq: torch.Tensor) -> torch.Tensor:
        """The encoder's (B, N + 1) ``scores`` for the (B, T) histories ``seq``,
        blended: z(scores) + weight * z(transition scores) + popularity_weight *
        z(popularity) over the catalogue (column 0, padding, is kept as it was).
        The encoder's scores as they are when both weights are 0."""
        if not self.blending:
            return scores
        out = scores.clone()
        out[:, 1:] = standardised(scores[:, 1:])
        return self.blend_standardised(out, seq)

    def blend_standardised(self, out: torch.Tensor, seq: torch.Tensor,
                           follow: np.ndarray | None = None) -> torch.Tensor:
        """``blend`` of encoder scores already standardised (``out``, changed in
        place and returned), for trying several blends of one encoder pass;
        ``follow``: the transition scores when already worked out (``scores(seq)``)."""
        if self.weight:
            extra = torch.from_numpy(self.scores(seq.numpy()) if follow is None else follow)
            out[:, 1:] += self.weight * standardised(extra[:, 1:])
        if self.popularity_weight:
            out[:, 1:] += self.popularity_weight * self.standardised_popularity
        return out

    @cached_property
    def standardised_popularity(self) -> torch.Tensor:
        """(1, N) z(popularity) over the catalogue: the same for every history, so
        worked out once per model, not per request."""
        return standardised(torch.from_numpy(self.popularity[None, 1:]))


def _largest_per_row(rows: np.ndarray, cols: np.ndarray, counts: np.ndarray, limit: int,
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Of entries sorted by (row, col), each row's ``limit`` largest counts (ties:
    the lower col), still sorted by (row, col)."""
    if not len(rows) or np.bincount(rows).max() <= limit:
        return rows, cols, counts
    order = np.lexsort((cols, -counts, rows))  # per row: largest count first
    rank = np.arange(len(order)) - np.searchsorted(rows, rows[order])
    keep = np.sort(order[rank < limit])  # back to (row, col) order
    return rows[keep], cols[keep], counts[keep]


def standardised(scores: torch.Tensor) -> torch.Tensor:
    """Per row: (x - mean) / std; a constant row is all 0."""
    spread = scores.std(dim=1, keepdim=True, correction=0)
    return (scores - scores.mean(dim=1, keepdim=True)) / torch.where(spread > 0, spread, 1.0)
