"""Data-parallel training (``TrainConfig.workers``): real processes, gloo."""

import pytest
import torch

from tests.unit.test_model import generated
from training.model import EncoderConfig
from training.train import TrainConfig, train_encoder


def training_data():
    data, split, index, sequences = generated(users=300, items=150, events=12_000, seed=3,
                                              length=21)
    full = [s for s in sequences if len(s) == 21]  # no padding: every row has 20 targets
    return split, index, data.items["title"].tolist(), full


@pytest.fixture(scope="module")
def data():
    return training_data()


def run(data, workers: int, **config):
    split, index, titles, sequences = data
    losses = []
    result = train_encoder(
        sequences, split, index, titles,
        EncoderConfig(n_items=len(index), max_len=20, hidden=32, dropout=config.pop("dropout")),
        TrainConfig(learning_rate=3e-3, threads=1, batch_size=64, workers=workers, **config),
        on_epoch=lambda epoch, row: losses.append(row["train_loss"]))
    return result, losses


def test_two_processes_take_the_steps_of_one_on_the_global_batch(data):
    """Without dropout and with equal shares of every batch, the averaged gradient
    is the global batch's: two processes end at one process's weights."""
    one, _ = run(data, 1, epochs=1, dropout=0.0)
    two, _ = run(data, 2, epochs=1, dropout=0.0)
    for (name, a), b in zip(one.model.state_dict().items(), two.model.state_dict().values(),
                            strict=True):
        if torch.is_floating_point(a):
            assert torch.allclose(a, b, atol=1e-4), name
    assert one.validation["val_ndcg_at_10"] == pytest.approx(two.validation["val_ndcg_at_10"],
                                                             abs=1e-3)


def test_two_processes_learn_as_well_as_one(data):
    one, _ = run(data, 1, epochs=12, patience=12, dropout=0.1)
    two, losses = run(data, 2, epochs=12, patience=12, dropout=0.1)
    assert losses[-1] < losses[0] * 0.9
    # NDCG@10 over 300 users has a standard error near 0.015: well within 2.5 of them
    assert abs(two.validation["val_ndcg_at_10"] - one.validation["val_ndcg_at_10"]) < 0.04
    assert two.validation["val_ndcg_at_10"] > 0.2  # far above chance (10 of 150 items)
