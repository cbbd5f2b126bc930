"""The approximate nearest-neighbour index over a behaviour encoder's item table,
built when the version is registered and saved with its weights, so every replica
serves the same index and a swap or rollback of the model swaps its index too.

The index (faiss HNSW, inner product) holds the item vectors as the encoder
scores them (unit rows when it scores cosine similarities), cold-start items'
vectors from their text included; with it go the vectors' mean and second
moment, from which the two-stage path standardises the encoder's scores over
the whole catalogue (``serving.retrieval``), and a digest of the vectors, so a
model is never served with an index built from other weights.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import faiss
import numpy as np
import torch

from training.model import BehaviourEncoder

HNSW_LINKS = 32  # graph degree (faiss HNSW M)
EF_CONSTRUCTION = 80
EF_SEARCH = 128  # search breadth; >= the candidates asked for
INDEX_FILE, MOMENTS_FILE, PARAMS_FILE = "ann.faiss", "ann_moments.npz", "ann.json"


@dataclass(frozen=True)
class AnnParams:
    kind: str
    links: int
    ef_construction: int
    ef_search: int
    n_items: int
    dim: int
    build_seconds: float
    vectors_sha256: str  # of the scored item vectors the index was built from

    def logged(self) -> dict[str, str | int | float]:
        """As MLflow params (``ann_`` prefixed)."""
        return {f"ann_{name}": value for name, value in asdict(self).items()}


@dataclass(frozen=True)
class AnnIndex:
    index: faiss.Index
    mean: np.ndarray  # (D,) float64: the scored item vectors' mean
    second_moment: np.ndarray  # (D, D) float64: their mean outer product
    params: AnnParams


def scored_items(model: BehaviourEncoder, items: np.ndarray | None = None) -> np.ndarray:
    """(N, D) float32 item vectors whose dot products with the scaled user vector
    are the encoder's scores (unit rows when the model scores cosine similarities);
    with ``items`` (model indices 1..N), those rows only."""
    table = model.item_table().detach()
    items = (table[1:] if items is None else table[torch.from_numpy(items)]).float()
    if model.config.temperature > 0:
        items = torch.nn.functional.normalize(items, dim=-1)
    return np.ascontiguousarray(items.numpy(), dtype=np.float32)


def _digest(vectors: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(vectors).tobytes()).hexdigest()


def build(model: BehaviourEncoder) -> AnnIndex:
    """The index over ``model``'s item table as it is now (fill cold items first)."""
    started = time.perf_counter()
    vectors = scored_items(model)
    n_items, dim = vectors.shape
    index = faiss.IndexHNSWFlat(dim, HNSW_LINKS, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = EF_CONSTRUCTION
    # Every core for the build, whatever the caller limited torch to (faiss and
    # torch share one OpenMP runtime, and torch.set_num_threads(1) also caps
    # faiss's inserts to one thread); the caller's limit again afterwards.
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(len(os.sched_getaffinity(0)))
    try:
        index.add(vectors)
    finally:
        faiss.omp_set_num_threads(threads)
    index.hnsw.efSearch = EF_SEARCH
    wide = vectors.astype(np.float64)
    params = AnnParams(kind=f"HNSW{HNSW_LINKS},Flat,IP", links=HNSW_LINKS,
                       ef_construction=EF_CONSTRUCTION, ef_search=EF_SEARCH,
                       n_items=n_items, dim=dim,
                       build_seconds=round(time.perf_counter() - started, 3),
                       vectors_sha256=_digest(vectors))
    return AnnIndex(index=index, mean=wide.mean(axis=0),
                    second_moment=wide.T @ wide / n_items, params=params)


def fits(ann: AnnIndex, model: BehaviourEncoder) -> bool:
    """Whether ``ann`` was built from ``model``'s item vectors as they are."""
    return (ann.index.ntotal == model.config.n_items
            and ann.params.vectors_sha256 == _digest(scored_items(model)))


def save(ann: AnnIndex, directory: Path) -> None:
    faiss.write_index(ann.index, str(directory / INDEX_FILE))
    np.savez(directory / MOMENTS_FILE, mean=ann.mean, second_moment=ann.second_moment)
    (directory / PARAMS_FILE).write_text(json.dumps(asdict(ann.params)))


def load(directory: Path) -> AnnIndex | None:
    """The index ``save`` wrote into ``directory`` (None when there is none).
    faiss reads its own binary format and numpy arrays load without pickles:
    nothing in a model directory runs code."""
    if not (directory / INDEX_FILE).exists():
        return None
    index = faiss.read_index(str(directory / INDEX_FILE))
    with np.load(directory / MOMENTS_FILE, allow_pickle=False) as moments:
        mean, second = moments["mean"], moments["second_moment"]
    params = AnnParams(**json.loads((directory / PARAMS_FILE).read_text()))
    index.hnsw.efSearch = params.ef_search
    return AnnIndex(index=index, mean=mean, second_moment=second, params=params)
