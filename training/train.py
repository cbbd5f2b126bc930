"""The training loop: seeded, full-softmax next-item loss, checkpoint chosen on
validation NDCG@10 (early stopping); test is computed once by the caller."""

from __future__ import annotations

import copy
import itertools
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch

from training import parallel
from training.evaluate import (
    VALIDATION_CELLS,
    K,
    Scorer,
    evaluate,
    evaluation_batch,
    evaluation_rows,
    ndcg_at_k,
    users_within,
)
from training.model import BehaviourEncoder, EncoderConfig
from training.parallel import Group
from training.sequences import ItemIndex, Split, next_item_pairs, pad_left, tiles
from training.transitions import POPULARITY_WEIGHTS, WEIGHTS, Transitions, standardised


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 30
    batch_size: int = 128
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    patience: int = 5
    seed: int = 42
    threads: int = 2
    # Wall-clock budget: no epoch starts that would end past it, and an epoch
    # longer than the whole budget ends inside it (0: no budget).
    max_seconds: float = 0.0
    # 0: full softmax over the catalogue; > 0: sampled softmax with this many
    # uniformly drawn negatives per batch (for catalogues too large to score whole).
    sampled_negatives: int = 0
    # > 0: validation and the checkpoint use an exponential moving average of the
    # weights (this decay per step) instead of the latest weights.
    ema_decay: float = 0.0
    # Share of each target's probability spread evenly over the catalogue.
    label_smoothing: float = 0.0
    # Learn a vector per distinct user of the training histories (``EncoderConfig.n_users``).
    user_vectors: bool = False
    # > 0: item transition counts at lags 1..this over the training histories,
    # blended into the scores with a weight chosen on validation (training.transitions).
    transition_lags: int = 0
    # Each epoch, tile every history from a random offset (``sequences.tiles``)
    # instead of the same windows every epoch.
    random_tiling: bool = False
    # With sampled softmax and this many item + user table rows or more, the
    # tables are sparse (``optimisers``): at 400,000 rows the dense AdamW step and
    # weight average took most of each step; at 55,000 they cost little.
    sparse_min_rows: int = 200_000
    # > 0: the checkpoint and the blend weights are chosen on this many validation
    # users, drawn once with the seed, and the chosen model is then validated on
    # every user once (0: every user each epoch).
    validation_users: int = 0
    # > 1: this many processes train data-parallel (training.parallel), the global
    # batch and the learning rate unchanged; the tables are then dense.
    workers: int = 1
    # the other processes as tasks on the running Ray (else processes on this machine)
    workers_on_ray: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class TrainResult:
    model: BehaviourEncoder
    history: list[dict[str, float]]  # per epoch: loss, validation metrics
    best_epoch: int
    validation: dict[str, float]
    train_seconds: float
    # What ended the epochs: "epochs" (all ran), "patience" (validation stopped
    # improving) or "time budget" (the next epoch would have ended past it, or
    # this one did).
    stopped_by: str = "epochs"
    search_seconds: float = 0.0  # the blend weights' search on validation


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def ema_rate(decay: float, updates: int) -> float:
    """The weight of the current weights in an exponential moving average after
    ``updates`` earlier updates: its decay is min(decay, (1 + t) / (10 + t)), so a
    short run is not averaged back towards its first, untrained weights."""
    return 1 - min(decay, (1 + updates) / (10 + updates))


def ema_with_warm_up(decay: float) -> Callable:
    """``ema_rate``'s moving average of the weights for ``AveragedModel``."""
    @torch.no_grad()
    def update(averaged: list[torch.Tensor], current: list[torch.Tensor],
               updates: torch.Tensor) -> None:
        rate = ema_rate(decay, int(updates))
        if torch.is_floating_point(averaged[0]):
            torch._foreach_lerp_(averaged, current, rate)
        else:  # integer buffers are not averaged
            for old, new in zip(averaged, current, strict=True):
                old.copy_(new)
    return update


class DenseAverage:
    """``ema_rate``'s moving average of the dense parameters only, for training
    with sparse embedding tables: averaging a table of a million rows every step
    would cost more than the step. The averaged model is the current one with
    its dense parameters averaged."""

    def __init__(self, model: BehaviourEncoder, skip: list[torch.nn.Parameter], decay: float):
        self.model, self.decay, self.updates = model, decay, 0
        self.names = [name for name, p in model.named_parameters()
                      if all(p is not other for other in skip)]
        found = dict(model.named_parameters())
        self.current = [found[name] for name in self.names]
        self.shadow = [p.detach().clone() for p in self.current]

    @torch.no_grad()
    def update(self) -> None:
        current = [p.detach() for p in self.current]
        if self.updates == 0:
            torch._foreach_copy_(self.shadow, current)
        else:
            torch._foreach_lerp_(self.shadow, current, ema_rate(self.decay, self.updates))
        self.updates += 1

    def averaged(self) -> BehaviourEncoder:
        copied = copy.deepcopy(self.model)
        found = dict(copied.named_parameters())
        with torch.no_grad():
            for name, value in zip(self.names, self.shadow, strict=True):
                found[name].copy_(value)
        return copied


def optimisers(model: BehaviourEncoder, config: TrainConfig,
               ) -> tuple[list[torch.optim.Optimizer], list[torch.nn.Parameter]]:
    """AdamW over every parameter; with sampled softmax and at least
    ``sparse_min_rows`` item and user rows, the two tables are sparse instead,
    updated by SparseAdam in the rows a batch touched only: a dense update of a
    million-row table every step costs more than everything else in the step.
    Returns the optimisers and the sparse tables."""
    tables = []
    rows = model.config.n_items + model.config.n_users
    # (the forward pass falls back to the full softmax when the draws would cover
    # the catalogue, and that scores the whole table)
    if (0 < config.sampled_negatives < model.config.n_items and rows >= config.sparse_min_rows
            and config.workers == 1):  # the processes average dense gradients only
        for embedding in (model.item_embedding, model.user_embedding):
            if embedding is not None:
                embedding.sparse = True
                tables.append(embedding.weight)
    if not tables:
        return [torch.optim.AdamW(model.parameters(), lr=config.learning_rate,
                                  weight_decay=config.weight_decay)], []
    dense = [p for p in model.parameters() if all(p is not t for t in tables)]
    return [torch.optim.SparseAdam(tables, lr=config.learning_rate),
            torch.optim.AdamW(dense, lr=config.learning_rate,
                              weight_decay=config.weight_decay)], tables


def model_scorer(model: BehaviourEncoder) -> Scorer:
    def score(histories: list[list[int]], users: list[str] | None = None) -> np.ndarray:
        model.eval()
        rows = None if users is None else model.user_rows(users)
        with torch.inference_mode():
            return model.score(pad_left(histories, model.config.max_len), rows).numpy()
    return score


def training_windows(histories: list[list[int]], users: list[int], max_len: int,
                     offsets: np.random.Generator | None = None,
                     ) -> tuple[list[list[int]], list[int]]:
    """Every history cut into windows (``sequences.tiles``), with each window's
    entry of ``users``; ``offsets``: draw each history's tiling offset from it
    (else offset 0: the same windows every time)."""
    windows, rows = [], []
    for history, user in zip(histories, users, strict=True):
        offset = 0 if offsets is None else int(offsets.integers(max_len))
        cut = tiles(history, max_len, offset)
        windows.extend(cut)
        rows.extend([user] * len(cut))
    return windows, rows


def train_encoder(histories: list[list[int]], split: Split, index: ItemIndex, titles: list[str],
                  model_config: EncoderConfig, config: TrainConfig,
                  on_epoch: Callable[[int, dict[str, float]], None] | None = None,
                  users: list[str] | None = None, group: Group | None = None,
                  ) -> TrainResult | None:
    """``histories``: training histories as item indices, oldest first, cut into
    windows of ``model_config.max_len`` inputs (``sequences.tiles``); ``users``:
    each history's user id. With ``config.user_vectors`` the model learns a vector
    for each distinct user of ``users``: the trained model's ``config.n_users`` is
    their number, whatever ``model_config.n_users`` says. With ``config.workers``
    > 1 the other processes are started here (``training.parallel``); ``group``
    is set in those only, and they return None."""
    if group is None and config.workers > 1:
        group, helpers = parallel.launch(config.workers, train_encoder, (
            histories, split, index, titles, model_config, config, None, users),
            on_ray=config.workers_on_ray, threads=config.threads)
        try:
            result = train_encoder(histories, split, index, titles, model_config, config,
                                   on_epoch, users, group)
        except BaseException:
            parallel.finish(group, helpers, failed=True)
            raise
        parallel.finish(group, helpers)
        return result
    group = group or Group()
    seed_everything(config.seed)
    torch.set_num_threads(config.threads)
    if config.user_vectors and users is None:
        raise ValueError("user_vectors needs each history's user (users=...)")
    user_ids = sorted(set(users)) if config.user_vectors else []
    model_config = replace(model_config, n_users=len(user_ids))
    model = BehaviourEncoder(model_config, index.item_ids, titles, user_ids)
    history_users = model.user_rows(users).tolist() if user_ids else [0] * len(histories)
    offsets = np.random.default_rng(config.seed) if config.random_tiling else None

    def epoch_windows() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        windows, rows = training_windows(histories, history_users, model_config.max_len,
                                         offsets)
        return *next_item_pairs(windows, model_config.max_len), torch.tensor(rows)

    steppers, tables = optimisers(model, config)
    averaged, dense_average = None, None
    if config.ema_decay > 0 and tables:
        dense_average = DenseAverage(model, tables, config.ema_decay)
    elif config.ema_decay > 0 and group.rank == 0:  # the others do not validate
        averaged = torch.optim.swa_utils.AveragedModel(
            model, multi_avg_fn=ema_with_warm_up(config.ema_decay), use_buffers=True)
    generator = torch.Generator().manual_seed(config.seed)
    watched = validation_sample(split, len(index), config)
    history: list[dict[str, float]] = []
    best, best_state, best_epoch, stale = -1.0, None, 0, 0
    stopped_by = "epochs"
    started = time.perf_counter()
    inputs, targets, example_users = epoch_windows()
    for epoch in range(1, config.epochs + 1):
        model.train()
        if config.random_tiling and epoch > 1:
            inputs, targets, example_users = epoch_windows()
        order = torch.randperm(len(inputs), generator=generator)
        total, batches, cut = 0.0, 0, False
        for start in range(0, len(order), config.batch_size):
            if group.any(config.max_seconds
                         and time.perf_counter() - started > config.max_seconds):
                cut = True  # an epoch longer than the budget ends inside it
                break
            rows = group.shard(order[start:start + config.batch_size])
            for stepper in steppers:
                stepper.zero_grad()
            if len(rows):  # (a last batch smaller than the processes leaves some none)
                loss = model(inputs[rows], targets[rows], config.sampled_negatives,
                             config.label_smoothing,
                             example_users[rows] if user_ids else None)
                loss.backward()
            group.average_gradients(model.parameters())
            for stepper in steppers:
                stepper.step()
            if averaged is not None:
                averaged.update_parameters(model)
            if dense_average is not None:
                dense_average.update()
            if len(rows):
                total += loss.item()
                batches += 1
        stop = None
        if group.rank == 0:
            chosen = (averaged.module if averaged is not None
                      else dense_average.averaged() if dense_average is not None else model)
            metrics = evaluate(model_scorer(chosen), watched, index, "validation")
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
                    stop = "patience"
            elapsed = time.perf_counter() - started
            if stop is None and (cut or (config.max_seconds and epoch < config.epochs
                                         and elapsed * (epoch + 1) / epoch > config.max_seconds)):
                stop = "time budget"  # this epoch or the next ends past it
        stop = group.decision(stop)
        if stop is not None:
            stopped_by = stop
            break
    if group.rank:
        return None
    for table in tables:  # sparse only for the optimiser: the model is served dense
        for embedding in (model.item_embedding, model.user_embedding):
            if embedding is not None and embedding.weight is table:
                embedding.sparse = False
    model.load_state_dict(best_state)
    model.eval()
    validation = history[best_epoch - 1]
    train_seconds = time.perf_counter() - started
    if config.transition_lags:
        blend_transitions(model, Transitions.count(
            histories, model_config.n_items, config.transition_lags), watched, index,
            validation["val_ndcg_at_10"])
    if config.transition_lags or watched is not split:
        # The chosen model's validation figures, on every user, once.
        metrics = evaluate(model_scorer(model), split, index, "validation")
        validation = {**validation, **{f"val_{k}": v for k, v in metrics.items()}}
    return TrainResult(model=model, history=history, best_epoch=best_epoch,
                       validation=validation, train_seconds=train_seconds,
                       stopped_by=stopped_by,
                       search_seconds=time.perf_counter() - started - train_seconds)


def validation_sample(split: Split, n_items: int, config: TrainConfig) -> Split:
    """The users a model is validated on while it trains and its blend is chosen:
    a fixed sample (``TrainConfig.validation_users``, fewer on a catalogue too
    large to score for that many)."""
    return split.sample(users_within(config.validation_users, n_items, VALIDATION_CELLS),
                        config.seed)


def blend_transitions(model: BehaviourEncoder, transitions: Transitions, split: Split,
                      index: ItemIndex, unblended: float) -> tuple[float, float]:
    """Give the trained model ``transitions`` at the blend weights (of WEIGHTS for
    the transitions, POPULARITY_WEIGHTS for popularity; 0: none) with the best
    validation NDCG@10 on ``split``, the earlier in that order on a tie, and
    above ``unblended`` (the encoder's own); returns the weights.

    Each validation batch's three standardised components (encoder, transitions,
    popularity) are worked out once. A target's rank under a weight pair counts
    the items scoring at least as high; bounds over all the pairs' weights show
    which items outrank the target under every pair, which under none, and only
    the rest are scored per pair, with ``Transitions.blend``'s arithmetic, so the
    ranks (ties included) are those a full pass per pair gives."""
    pairs = [w for w in itertools.product(WEIGHTS, POPULARITY_WEIGHTS) if w != (0.0, 0.0)]
    histories, targets, users = evaluation_rows(split, index, "validation")
    gains = np.zeros(len(pairs))
    batch = evaluation_batch(len(index))
    popularity = transitions.standardised_popularity
    for start in range(0, len(histories), batch):
        chunk = histories[start:start + batch]
        seq = pad_left(chunk, model.config.max_len)
        with torch.inference_mode():
            encoder = standardised(model.encoder_scores(
                seq, model.user_rows(users[start:start + batch]))[:, 1:])
            follow = standardised(torch.from_numpy(transitions.scores(seq.numpy()))[:, 1:])
        ranks = _blended_ranks(encoder, follow, popularity,
                               torch.as_tensor(targets[start:start + batch]) - 1, chunk, pairs)
        gains += ndcg_at_k(ranks).sum(axis=1)
    ndcg = gains / max(1, len(histories))
    best = int(np.argmax(ndcg)) if pairs else 0
    weights = pairs[best] if pairs and ndcg[best] > unblended else (0.0, 0.0)
    model.transitions = transitions.weighted(*weights)
    return weights


SEARCH_MARGIN = 1e-3  # bounds this close to 0 are scored exactly, not decided by the bound


def _blended_ranks(encoder: torch.Tensor, follow: torch.Tensor, popularity: torch.Tensor,
                   targets: torch.Tensor, exclude: list[list[int]],
                   pairs: list[tuple[float, float]]) -> np.ndarray:
    """(P, B) ranks of ``targets`` (column indices) under each weight pair of
    ``encoder + w * follow + p * popularity`` ((B, N), (B, N), (1, N)), the items of
    ``exclude`` (model indices) left out, ties counted against the target (as
    ``evaluate.rank_of_targets``); ranks of K and more are reported as K."""
    encoder = encoder.clone()
    for row, items in enumerate(exclude):
        encoder[row, torch.as_tensor(items, dtype=torch.long) - 1] = float("-inf")
    rows = torch.arange(len(targets))
    top_w = max(w for w, _ in pairs)
    top_p = max(p for _, p in pairs)
    d_encoder = encoder - encoder[rows, targets][:, None]
    d_follow = follow - follow[rows, targets][:, None]
    d_popular = (popularity - popularity[0, targets][:, None]).expand_as(d_encoder)
    upper = d_encoder + top_w * d_follow.clamp(min=0) + top_p * d_popular.clamp(min=0)
    lower = d_encoder + top_w * d_follow.clamp(max=0) + top_p * d_popular.clamp(max=0)
    lost = ~torch.isfinite(encoder[rows, targets])  # the target itself left out
    always = (lower > SEARCH_MARGIN).sum(dim=1)  # outrank the target under every pair
    open_rows = ~lost & (always < K)
    unsure = (upper >= -SEARCH_MARGIN) & (lower <= SEARCH_MARGIN) & open_rows[:, None]
    at_row, at_item = unsure.nonzero(as_tuple=True)
    ranks = np.full((len(pairs), len(targets)), K, dtype=np.int64)
    parts = (encoder, follow, popularity)
    for j, pair in enumerate(pairs):
        target_scores = _blend_at(parts, pair, rows, targets)
        # >=: ties count against the target, which counts itself (hence the - 1)
        above = _blend_at(parts, pair, at_row, at_item) >= target_scores[at_row]
        counted = always + torch.zeros(len(targets), dtype=torch.long).index_add_(
            0, at_row, above.long()) - 1
        ranks[j, open_rows.numpy()] = counted[open_rows].clamp(max=K).numpy()
    return ranks


def _blend_at(parts: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
              pair: tuple[float, float], row: torch.Tensor, item: torch.Tensor,
              ) -> torch.Tensor:
    """The blended scores of (row, item) cells, summed as ``Transitions.blend`` sums."""
    encoder, follow, popularity = parts
    weight, popularity_weight = pair
    scores = encoder[row, item].clone()
    if weight:
        scores += weight * follow[row, item]
    if popularity_weight:
        scores += popularity_weight * popularity[0, item]
    return scores
