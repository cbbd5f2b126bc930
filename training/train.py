"""The training loop: seeded, full-softmax next-item loss, checkpoint chosen on
validation NDCG@10 (early stopping); test is computed once by the caller."""

from __future__ import annotations

import copy
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch

from training.evaluate import Scorer, evaluate
from training.model import BehaviourEncoder, EncoderConfig
from training.sequences import ItemIndex, Split, next_item_pairs, pad_left
from training.transitions import WEIGHTS, Transitions


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 30
    batch_size: int = 128
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    patience: int = 5
    seed: int = 42
    threads: int = 2
    # Wall-clock budget: no epoch starts that would end past it (0: no budget).
    max_seconds: float = 0.0
    # 0: full softmax over the catalogue; > 0: sampled softmax with this many
    # uniformly drawn negatives per batch (for catalogues too large to score whole).
    sampled_negatives: int = 0
    # > 0: validation and the checkpoint use an exponential moving average of the
    # weights (this decay per step) instead of the latest weights.
    ema_decay: float = 0.0
    # Share of each target's probability spread evenly over the catalogue.
    label_smoothing: float = 0.0
    # Learn a vector per distinct user of the training examples (``EncoderConfig.n_users``).
    user_vectors: bool = False
    # > 0: item transition counts at lags 1..this over the training examples,
    # blended into the scores with a weight chosen on validation (training.transitions).
    transition_lags: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class TrainResult:
    model: BehaviourEncoder
    history: list[dict[str, float]]  # per epoch: loss, validation metrics
    best_epoch: int
    validation: dict[str, float]
    train_seconds: float


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def ema_with_warm_up(decay: float) -> Callable:
    """An exponential moving average of the weights for ``AveragedModel``, whose
    decay after t updates is min(decay, (1 + t) / (10 + t)): a short run is not
    averaged back towards its first, untrained weights."""
    @torch.no_grad()
    def update(averaged: list[torch.Tensor], current: list[torch.Tensor],
               updates: torch.Tensor) -> None:
        t = float(updates)
        rate = 1 - min(decay, (1 + t) / (10 + t))
        if torch.is_floating_point(averaged[0]):
            torch._foreach_lerp_(averaged, current, rate)
        else:  # integer buffers are not averaged
            for old, new in zip(averaged, current, strict=True):
                old.copy_(new)
    return update


def model_scorer(model: BehaviourEncoder) -> Scorer:
    def score(histories: list[list[int]], users: list[str] | None = None) -> np.ndarray:
        model.eval()
        rows = None if users is None else model.user_rows(users)
        with torch.inference_mode():
            return model.score(pad_left(histories, model.config.max_len), rows).numpy()
    return score


def train_encoder(sequences: list[list[int]], split: Split, index: ItemIndex, titles: list[str],
                  model_config: EncoderConfig, config: TrainConfig,
                  on_epoch: Callable[[int, dict[str, float]], None] | None = None,
                  users: list[str] | None = None) -> TrainResult:
    """``sequences``: training examples as item indices (history + target);
    ``users``: each example's user id. With ``config.user_vectors`` the model
    learns a vector for each distinct user of ``users``: the trained model's
    ``config.n_users`` is their number, whatever ``model_config.n_users`` says."""
    seed_everything(config.seed)
    torch.set_num_threads(config.threads)
    if config.user_vectors and users is None:
        raise ValueError("user_vectors needs each training example's user (users=...)")
    user_ids = sorted(set(users)) if config.user_vectors else []
    model_config = replace(model_config, n_users=len(user_ids))
    model = BehaviourEncoder(model_config, index.item_ids, titles, user_ids)
    inputs, targets = next_item_pairs(sequences, model_config.max_len)
    example_users = model.user_rows(users) if user_ids else None
    optimiser = torch.optim.AdamW(model.parameters(), lr=config.learning_rate,
                                  weight_decay=config.weight_decay)
    averaged = torch.optim.swa_utils.AveragedModel(
        model, multi_avg_fn=ema_with_warm_up(config.ema_decay),
        use_buffers=True) if config.ema_decay > 0 else None
    generator = torch.Generator().manual_seed(config.seed)
    history: list[dict[str, float]] = []
    best, best_state, best_epoch, stale = -1.0, None, 0, 0
    started = time.perf_counter()
    for epoch in range(1, config.epochs + 1):
        model.train()
        order = torch.randperm(len(inputs), generator=generator)
        total, batches = 0.0, 0
        for start in range(0, len(order), config.batch_size):
            rows = order[start:start + config.batch_size]
            loss = model(inputs[rows], targets[rows], config.sampled_negatives,
                         config.label_smoothing,
                         None if example_users is None else example_users[rows])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            if averaged is not None:
                averaged.update_parameters(model)
            total += loss.item()
            batches += 1
        chosen = model if averaged is None else averaged.module
        metrics = evaluate(model_scorer(chosen), split, index, "validation")
        row = {"train_loss": total / max(1, batches),
               **{f"val_{k}": v for k, v in metrics.items()}}
        history.append(row)
        if on_epoch:
            on_epoch(epoch, row)
        if metrics["ndcg_at_10"] > best:
            best, best_epoch, stale = metrics["ndcg_at_10"], epoch, 0
            best_state = copy.deepcopy(chosen.state_dict())
        else:
            stale += 1
            if stale >= config.patience:
                break
        elapsed = time.perf_counter() - started
        if config.max_seconds and elapsed * (epoch + 1) / epoch > config.max_seconds:
            break  # the next epoch would end past the budget
    model.load_state_dict(best_state)
    model.eval()
    validation = history[best_epoch - 1]
    if config.transition_lags:
        validation = blend_transitions(model, Transitions.count(
            sequences, model_config.n_items, config.transition_lags), split, index, validation)
    return TrainResult(model=model, history=history, best_epoch=best_epoch,
                       validation=validation, train_seconds=time.perf_counter() - started)


def blend_transitions(model: BehaviourEncoder, transitions: Transitions, split: Split,
                      index: ItemIndex, validation: dict[str, float]) -> dict[str, float]:
    """Give the trained model ``transitions`` at the blend weight (of WEIGHTS; 0:
    none) with the best validation NDCG@10, the smaller on a tie; returns
    ``validation`` (the checkpoint's row) with the blended model's metrics."""
    best_weight, best = 0.0, validation
    for weight in WEIGHTS[1:]:
        model.transitions = transitions.weighted(weight)
        metrics = evaluate(model_scorer(model), split, index, "validation")
        if metrics["ndcg_at_10"] > best["val_ndcg_at_10"]:
            best_weight, best = weight, {**validation,
                                         **{f"val_{k}": v for k, v in metrics.items()}}
    model.transitions = transitions.weighted(best_weight)
    return best
