"""The served model and top-K scoring, as plain functions (no HTTP, no Redis)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from training import registry
from training.model import BehaviourEncoder
from training.sequences import ItemIndex, pad_left


@dataclass(frozen=True)
class ServedModel:
    version: str
    model: BehaviourEncoder
    index: ItemIndex
    popularity: np.ndarray  # (N + 1,) interaction counts, index 0 unused


def load_served_model(tracking_uri: str, alias: str = registry.CHAMPION) -> ServedModel:
    version = registry.alias_version(tracking_uri, alias)
    if version is None:
        raise LookupError(f"no {registry.MODEL_NAME} version has alias {alias!r}; "
                          "run the pipeline first (make demo or dagster asset materialize)")
    model = registry.load_version(tracking_uri, version)
    index = ItemIndex(model.item_ids)
    counts = registry.load_document(tracking_uri, version, registry.POPULARITY_DOCUMENT)
    popularity = np.zeros(len(index) + 1)
    for item, count in counts.items():
        if item in index.index:
            popularity[index.index[item]] = count
    return ServedModel(version=version, model=model, index=index, popularity=popularity)


def _top(scores: np.ndarray, k: int, exclude: list[int]) -> list[tuple[int, float]]:
    scores = scores.astype(np.float64, copy=True)
    scores[0] = -np.inf
    scores[exclude] = -np.inf
    k = min(k, int(np.isfinite(scores).sum()))
    top = np.argpartition(-scores, k - 1)[:k] if k else np.array([], dtype=int)
    top = top[np.argsort(-scores[top], kind="stable")]
    return [(int(i), float(scores[i])) for i in top]


def recommend(served: ServedModel, history: list[str], k: int, exclude_seen: bool,
              ) -> tuple[list[tuple[str, float, str]], bool]:
    """Top-k (item_id, score, title) for a history of item ids (oldest first).

    Returns (items, from_model): an empty or unknown history falls back to popularity.
    """
    encoded = served.index.encode(history)
    exclude = encoded if exclude_seen else []
    if encoded:
        with torch.inference_mode():
            scores = served.model.score(pad_left([encoded], served.model.config.max_len))[0]
        ranked, from_model = _top(scores.numpy(), k, exclude), True
    else:
        ranked, from_model = _top(served.popularity, k, exclude), False
    titles = served.model.titles
    return [(served.index.item_ids[i - 1], s, titles[i - 1]) for i, s in ranked], from_model


def score_items(served: ServedModel, history: list[str], item_ids: list[str]) -> list[float | None]:
    """Model scores for given candidates (None for items not in the catalogue)."""
    encoded = served.index.encode(history)
    if encoded:
        with torch.inference_mode():
            scores = served.model.score(pad_left([encoded], served.model.config.max_len))[0]
        scores = scores.numpy()
    else:
        scores = served.popularity
    return [float(scores[served.index.index[i]]) if i in served.index.index else None
            for i in item_ids]
