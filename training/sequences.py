"""Item sequences: the evaluation protocol's leave-one-out split and tensors.

Events are ordered stably by (timestamp, original row order); per user the last
interaction is test, the one before validation, the rest training. Users with
fewer than ``MIN_INTERACTIONS`` interactions are kept in training only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from training.model import PAD

MIN_INTERACTIONS = 5


@dataclass(frozen=True)
class Split:
    train: dict[str, list[str]]  # user -> training items in order
    validation: dict[str, str]  # user -> validation item
    test: dict[str, str]  # user -> test item

    def sample(self, users: int, seed: int) -> Split:
        """The same split evaluated on ``users`` of its evaluated users, drawn with
        ``seed`` (training histories unchanged); itself when ``users`` is 0 or
        covers them all."""
        if users <= 0 or users >= len(self.validation):
            return self
        chosen = np.random.default_rng(seed).choice(sorted(self.validation), size=users,
                                                    replace=False)
        return Split(train=self.train,
                     validation={u: self.validation[u] for u in sorted(chosen)},
                     test={u: self.test[u] for u in sorted(chosen)})


def leave_one_out(events: pd.DataFrame) -> Split:
    """``events`` in stable time order (``validated_events`` is)."""
    train, validation, test = {}, {}, {}
    ordered = events[["user_id", "item_id", "event_timestamp"]].sort_values(
        "event_timestamp", kind="stable")  # only what it reads: tens of millions of rows
    for user_id, items in ordered.groupby("user_id", sort=False)["item_id"]:
        items = items.tolist()
        if len(items) < MIN_INTERACTIONS:
            train[user_id] = items
            continue
        train[user_id], validation[user_id], test[user_id] = items[:-2], items[-2], items[-1]
    return Split(train=train, validation=validation, test=test)


EVALUATION_SEED = 0


def evaluation_split(events: pd.DataFrame, users: int) -> Split:
    """``leave_one_out`` evaluated on at most ``users`` of its users (0: all),
    drawn with a fixed seed: every step of a run (checkpoint, test, baselines,
    the promotion check) and every model on the same events sees the same users."""
    return leave_one_out(events).sample(users, EVALUATION_SEED)


class ItemIndex:
    """item id <-> model index (1..N; 0 is padding)."""

    def __init__(self, item_ids: list[str]):
        self.item_ids = list(item_ids)
        self.index = {item: i + 1 for i, item in enumerate(self.item_ids)}

    def __len__(self) -> int:
        return len(self.item_ids)

    def encode(self, items: list[str]) -> list[int]:
        return [self.index[i] for i in items if i in self.index]


def pad_left(sequences: list[list[int]], length: int) -> torch.Tensor:
    """Keep the last ``length`` entries of each sequence, left-pad with PAD: (B, length)."""
    out = np.full((len(sequences), length), PAD, dtype=np.int64)
    for row, seq in enumerate(sequences):
        seq = seq[-length:]
        if seq:
            out[row, length - len(seq):] = seq
    return torch.from_numpy(out)


def next_item_pairs(sequences: list[list[int]], max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each sequence (history + target, at most max_len + 1 long) -> inputs and
    next-item targets at every position: (B, max_len) each."""
    inputs = pad_left([s[:-1] for s in sequences], max_len)
    targets = pad_left([s[1:] for s in sequences], max_len)
    return inputs, targets


def training_targets(events: pd.DataFrame, feature_time: pd.Series, max_len: int) -> pd.DataFrame:
    """Entity rows for a point-in-time training set: per user, targets in the
    training part of the split, one every ``max_len`` positions counted back
    from the last training item, so the windows (history + target) tile the
    whole training history without overlap. ``event_timestamp`` is one
    microsecond before the target's feature time: features strictly before it."""
    ordered = events.assign(feature_time=feature_time).sort_values("event_timestamp",
                                                                     kind="stable")
    rows = []
    for user_id, group in ordered.groupby("user_id", sort=False):
        n = len(group)
        n_train = n if n < MIN_INTERACTIONS else n - 2
        items = group["item_id"].to_numpy()
        times = group["feature_time"].to_numpy()
        for position in range(n_train - 1, 0, -max_len):
            rows.append((user_id, times[position], items[position]))
    frame = pd.DataFrame(rows, columns=["user_id", "feature_time", "target_item_id"])
    frame["event_timestamp"] = pd.to_datetime(frame["feature_time"], utc=True) - pd.Timedelta(
        microseconds=1)
    return frame[["user_id", "event_timestamp", "target_item_id"]]


def join_windows(windows: list[list[int]]) -> list[int]:
    """Consecutive windows of one user (each history + target, oldest window
    first) -> the history they cover. A window that tiles on from the previous
    one starts with that window's target (``training_targets``), which is then
    not repeated; any other window is appended whole."""
    history: list[int] = []
    for window in windows:
        overlap = 1 if history and window and window[0] == history[-1] else 0
        history.extend(window[overlap:])
    return history


def tiles(history: list[int], max_len: int, offset: int = 0) -> list[list[int]]:
    """Training windows (history + target, at most ``max_len + 1`` items) over a
    user's whole ``history``: the newest ends at its last item; the others tile
    the older part without overlap, ending ``offset`` (0..max_len - 1) positions
    further back, so that a random offset each epoch shows the model other
    contexts for the same targets. ``offset`` 0 is ``training_targets``' tiling."""
    last = len(history) - 1
    ends = [last, *range(last - max_len - offset, 0, -max_len)] if last > 0 else []
    return [history[max(0, end - max_len):end + 1] for end in ends]


def histories_from_training_set(frame: pd.DataFrame, index: ItemIndex,
                                ) -> tuple[list[list[int]], list[str]]:
    """Training-set rows (``user_id``, ``event_timestamp``, ``recent_item_ids`` as
    of just before the target, and ``target_item_id``) -> each user's training
    history as item indices (the user's windows joined, oldest first) and its
    user; a history shorter than 2 items is left out."""
    ordered = frame.sort_values(["user_id", "event_timestamp"], kind="stable")
    histories, users = [], []
    for user, group in ordered.groupby("user_id", sort=False):
        history = join_windows([
            index.encode(([] if recent is None else list(recent)) + [target])
            for recent, target in zip(group["recent_item_ids"], group["target_item_id"],
                                      strict=True)])
        if len(history) >= 2:
            histories.append(history)
            users.append(user)
    return histories, users
