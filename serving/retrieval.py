"""Two-stage retrieval for large catalogues: candidates from an approximate
nearest-neighbour index (faiss HNSW, inner product) over the model's item vectors,
united with what the blend adds that a vector index cannot find (the items the
newest history items lead to, the most popular items), then the exact blended
score over those candidates only.

Exact means equal to the full path's score for the same item: the full blend
standardises the encoder's scores over the whole catalogue (``z(u . v_i)``), and
the catalogue's mean and variance of ``u . v_i`` follow from the item vectors'
mean and second moment, ``u . m`` and ``u' S u - (u . m)^2``, kept with the index
(``training.ann``, an artifact of the model version):
O(D^2) per request instead of O(N D). The transition scores are the full
path's (one sparse row per lag), summed sparsely and standardised with the
catalogue's moments of that sparse vector, so no step of a request grows with the
catalogue; popularity's z-scores are the model's. Only the candidate set is
approximate.
"""

from __future__ import annotations

from dataclasses import dataclass

import faiss
import numpy as np
import torch

from training.ann import AnnIndex, scored_items
from training.model import BehaviourEncoder

ANN_CANDIDATES = 100  # nearest items by the encoder's score
TRANSITION_CANDIDATES = 100  # items with the largest transition scores
POPULAR_CANDIDATES = 50  # the most popular items (the blend's popularity term)

@dataclass(frozen=True)
class CandidateScores:
    """Exact blended scores for some items (indices 1..N), not the whole catalogue."""

    items: np.ndarray  # (C,) int64
    values: np.ndarray  # (C,) float64

class TwoStage:
    """``ann``: the model version's index (``training.ann``), built from its item
    table."""

    def __init__(self, model: BehaviourEncoder, ann: AnnIndex,
                 ann_candidates: int = ANN_CANDIDATES,
                 transition_candidates: int = TRANSITION_CANDIDATES,
                 popular_candidates: int = POPULAR_CANDIDATES):
        self.model = model
        self.ann = ann
        self.ann_candidates = ann_candidates
        self.transition_candidates = transition_candidates
        self.index = ann.index
        self.n_items = ann.index.ntotal
        # per search, not set on the index: the version's index may be shared
        self.search_params = faiss.SearchParametersHNSW(
            efSearch=max(ann.params.ef_search, ann_candidates))
        self.mean, self.second_moment = ann.mean, ann.second_moment
        transitions = model.transitions
        self.transitions = transitions
        self.popularity_z = None
        if transitions is not None and transitions.popularity_weight:
            self.popularity_z = transitions.standardised_popularity[0].numpy().astype(np.float64)
        popularity = (transitions.popularity[1:] if transitions is not None
                      and transitions.popularity is not None else np.zeros(self.n_items))
        count = min(popular_candidates, self.n_items)
        self.popular = np.argpartition(-popularity, count - 1)[:count] + 1

    def _user(self, user: torch.Tensor) -> np.ndarray:
        """The (D,) user vector scaled as ``BehaviourEncoder.logits`` scales it."""
        u = user.detach().float().reshape(-1)
        temperature = self.model.config.temperature
        if temperature > 0:
            u = torch.nn.functional.normalize(u, dim=-1) / temperature
        return u.numpy().astype(np.float64)

    def scores(self, user: torch.Tensor, seq: torch.Tensor,
               items: np.ndarray | None = None, standardise: bool = False,
               extra: np.ndarray | None = None) -> CandidateScores:
        """The exact blended scores of ``items`` (default: the candidates, with
        ``extra`` items among them) for the encoder's ``user`` vector (1, D) of the
        (1, T) history ``seq``; ``standardise``: the encoder's term standardised
        even when the model blends nothing (as a query blend needs it)."""
        u = self._user(user)
        transitions = self.transitions
        blended = standardise or (transitions is not None and transitions.blending)
        follow = None
        if transitions is not None and transitions.weight:
            follow = transitions.sparse_scores(seq[0].numpy())
        if items is None:
            _, found = self.index.search(u[None].astype(np.float32), self.ann_candidates,
                                         params=self.search_params)
            parts = [found[0][found[0] >= 0] + 1, self.popular]
            if extra is not None:
                parts.append(np.asarray(extra, dtype=np.int64))
            if follow is not None and len(follow.items):
                count = min(self.transition_candidates, len(follow.items))
                top = np.argpartition(-follow.values, count - 1)[:count]
                parts.append(follow.items[top[follow.values[top] > 0]])
            items = np.unique(np.concatenate(parts))
        items = np.asarray(items, dtype=np.int64)
        # the model's own rows, not the index's: its storage may be compressed
        values = scored_items(self.model, items).astype(np.float64) @ u
        if not blended:
            return CandidateScores(items, values)
        mean = float(u @ self.mean)
        spread = float(np.sqrt(max(u @ self.second_moment @ u - mean * mean, 0.0)))
        values = (values - mean) / (spread if spread > 0 else 1.0)
        if follow is not None:
            mean, spread = follow.mean_and_spread()
            values += transitions.weight * (follow.at(items) - mean) / (
                spread if spread > 0 else 1.0)
        if self.popularity_z is not None:
            values += transitions.popularity_weight * self.popularity_z[items - 1]
        return CandidateScores(items, values)
