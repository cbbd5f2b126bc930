"""Behavioural tests of the behaviour encoder on generated data."""

import numpy as np
import pandas as pd
import pytest
import torch

from orchestration.sources.generator import GeneratorConfig, generate
from training.model import BehaviourEncoder, EncoderConfig
from training.sequences import ItemIndex, leave_one_out, pad_left
from training.train import TrainConfig, train_encoder


@pytest.fixture(scope="module")
def trained():
    data = generate(GeneratorConfig(users=600, items=300, events=30_000, seed=11))
    events = data.events.assign(
        event_timestamp=pd.to_datetime(data.events["timestamp"], unit="s", utc=True))
    split = leave_one_out(events)
    index = ItemIndex(data.items["item_id"].tolist())
    sequences = []
    for items in split.train.values():
        encoded = index.encode(items)
        for end in range(len(encoded), 1, -20):
            sequences.append(encoded[max(0, end - 21):end])
    losses = []
    result = train_encoder(
        sequences, split, index, data.items["title"].tolist(),
        EncoderConfig(n_items=len(index), max_len=20, hidden=32, dropout=0.1),
        TrainConfig(epochs=12, patience=12, learning_rate=3e-3, threads=2),
        on_epoch=lambda epoch, row: losses.append(row["train_loss"]))
    return data, index, result, losses


def test_loss_falls_over_the_first_epochs(trained):
    _, _, _, losses = trained
    assert losses[2] < losses[0] * 0.97
    assert losses[-1] < losses[0]


def test_scores_are_finite_except_padding(trained):
    _, index, result, _ = trained
    with torch.inference_mode():
        scores = result.model.score(pad_left([[1, 2, 3], []], 20))
    assert scores.shape == (2, len(index) + 1)
    assert torch.isinf(scores[:, 0]).all()
    assert torch.isfinite(scores[:, 1:]).all()


def test_one_genre_history_gets_that_genre(trained):
    data, index, result, _ = trained
    genre_of = dict(zip(data.items["item_id"], data.items["genres"].str.split("|").str[0],
                        strict=True))
    title = dict(zip(data.items["item_id"], data.items["title"], strict=True))
    by_popularity = data.events["item_id"].value_counts().index
    hits = []
    for genre in sorted(set(genre_of.values())):
        # The genre's three most watched stand-alone items (no series to continue).
        history = [i for i in by_popularity if genre_of[i] == genre and "Part" not in title[i]][:3]
        with torch.inference_mode():
            scores = result.model.score(pad_left([index.encode(history)], 20))[0].numpy()
        scores[index.encode(history)] = -np.inf
        top = np.argsort(-scores)[:10]
        hits.append(np.mean([genre_of[index.item_ids[t - 1]] == genre for t in top]))
    assert len(hits) == 12
    assert np.mean(hits) > 0.5  # a genre is ~1/12 of the catalogue


def test_series_is_continued_in_order(trained):
    data, index, result, _ = trained
    continued = total = 0
    for ids in data.series.values():
        for k in range(1, len(ids) - 1):
            with torch.inference_mode():
                scores = result.model.score(pad_left([index.encode(ids[:k])], 20))[0].numpy()
            scores[index.encode(ids[:k])] = -np.inf
            continued += int(np.argmax(scores)) == index.index[ids[k]]
            total += 1
    assert total > 20
    assert continued / total > 0.5


def test_config_travels_with_the_model():
    model = BehaviourEncoder(EncoderConfig(n_items=2, max_len=5), ["a", "b"], ["A", "B"])
    assert model.config.to_dict()["max_len"] == 5
    with pytest.raises(ValueError):
        BehaviourEncoder(EncoderConfig(n_items=3), ["a"], ["A"])


def test_traced_and_quantised_encoders_match_the_model():
    from training.model import quantized, traced_encoder

    torch.manual_seed(0)
    model = BehaviourEncoder(EncoderConfig(n_items=30, max_len=8), [f"i{i}" for i in range(30)],
                             [f"t{i}" for i in range(30)]).eval()
    traced = traced_encoder(model)
    small = quantized(model)
    for history in ([5], [1, 2, 3, 4, 5, 6, 7, 8], list(range(1, 21)), [30, 29, 28]):
        seq = pad_left([history], 8)
        with torch.inference_mode():
            assert torch.allclose(traced(seq), model.encode(seq), atol=1e-5)
            assert torch.allclose(small.encode(seq), model.encode(seq), atol=0.05)


def test_a_time_budget_stops_before_an_epoch_that_would_overrun_it():
    data = generate(GeneratorConfig(users=100, items=50, events=3_000, seed=5))
    events = data.events.assign(
        event_timestamp=pd.to_datetime(data.events["timestamp"], unit="s", utc=True))
    split = leave_one_out(events)
    index = ItemIndex(data.items["item_id"].tolist())
    sequences = [index.encode(items)[-11:] for items in split.train.values()]
    config = EncoderConfig(n_items=len(index), max_len=10, hidden=16)
    budget = train_encoder(sequences, split, index, data.items["title"].tolist(), config,
                           TrainConfig(epochs=4, patience=4, max_seconds=1e-6, threads=1))
    assert len(budget.history) == 1 and budget.best_epoch == 1
    free = train_encoder(sequences, split, index, data.items["title"].tolist(), config,
                         TrainConfig(epochs=4, patience=4, threads=1))
    assert len(free.history) == 4
