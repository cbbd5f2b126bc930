"""Behavioural tests of the behaviour encoder on generated data."""

import math

import numpy as np
import pandas as pd
import pytest
import torch

from orchestration.sources.generator import GeneratorConfig, generate
from training.model import BehaviourEncoder, EncoderConfig
from training.sequences import ItemIndex, leave_one_out, pad_left
from training.train import TrainConfig, train_encoder


def generated(users: int, items: int, events: int, seed: int, length: int):
    """Generated data, its leave-one-out split, the item index, and each user's
    last ``length`` training items as one sequence (history + target)."""
    data = generate(GeneratorConfig(users=users, items=items, events=events, seed=seed))
    split = leave_one_out(data.events.assign(
        event_timestamp=pd.to_datetime(data.events["timestamp"], unit="s", utc=True)))
    index = ItemIndex(data.items["item_id"].tolist())
    sequences = [index.encode(history)[-length:] for history in split.train.values()]
    return data, split, index, sequences


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
    from training.inference import quantized, traced_encoder

    torch.manual_seed(0)
    model = BehaviourEncoder(EncoderConfig(n_items=30, max_len=8, n_users=2),
                             [f"i{i}" for i in range(30)], [f"t{i}" for i in range(30)],
                             ["u1", "u2"]).eval()
    traced = traced_encoder(model)
    small = quantized(model)
    for history, user in (([5], "u1"), ([1, 2, 3, 4, 5, 6, 7, 8], "u2"),
                          (list(range(1, 21)), None), ([30, 29, 28], "stranger")):
        seq, rows = pad_left([history], 8), model.user_rows([user])
        with torch.inference_mode():
            vectors, projections = traced(seq, rows)
            assert torch.allclose(vectors, model.encode(seq, rows), atol=1e-5)
            assert torch.allclose(projections, model.encode_explained(seq, rows)[1], atol=1e-5)
            assert torch.allclose(small.encode(seq, rows), model.encode(seq, rows), atol=0.05)


def test_a_user_vector_is_added_for_known_users_only_and_dropped_in_training_only():
    torch.manual_seed(2)
    model = BehaviourEncoder(EncoderConfig(n_items=20, max_len=6, n_users=2, user_dropout=0.5),
                             [f"i{i}" for i in range(20)], [f"t{i}" for i in range(20)],
                             ["u1", "u2"]).eval()
    assert model.user_rows(["u2", "u1", "new", None]).tolist() == [2, 1, 0, 0]
    seq = pad_left([[3, 4, 5]] * 3, 6)
    with torch.inference_mode():
        plain = model.encode(seq)
        vectors = model.encode(seq, model.user_rows(["u1", "u2", "new"]))
    assert torch.equal(vectors[2], plain[2])  # no vector: the model without users
    assert not torch.allclose(vectors[0], plain[0]) and not torch.allclose(vectors[0], vectors[1])
    model.train()
    model.backbone.eval()  # only the user dropout is random now
    torch.manual_seed(5)
    rows = model.user_rows(["u1"] * 400)
    trained = model.encode(pad_left([[3, 4, 5]] * 400, 6), rows).detach()
    dropped = torch.isclose(trained, plain[0].expand_as(trained), atol=1e-6).all(dim=1)
    assert 150 < int(dropped.sum()) < 250  # about half the windows read no user vector
    assert torch.allclose(trained[~dropped], vectors[0].expand(int((~dropped).sum()), -1),
                          atol=1e-6)


def test_training_with_user_vectors_learns_one_per_distinct_user():
    data, split, index, sequences = generated(150, 60, 6_000, 13, 11)
    users = list(split.train)  # one sequence per user, in this order
    titles = data.items["title"].tolist()
    # n_users comes from the examples, not from the config it is given.
    config = EncoderConfig(n_items=len(index), max_len=10, hidden=16, n_users=3,
                           user_dropout=0.5)
    result = train_encoder(sequences, split, index, titles, config,
                           TrainConfig(epochs=2, patience=2, threads=1, user_vectors=True),
                           users=users)
    assert result.model.config.n_users == len(set(users)) == 150  # generated(150 users, ...)
    table = result.model.user_embedding.weight.detach()
    assert table.shape == (len(users) + 1, 16)
    assert torch.count_nonzero(table[0]) == 0  # "no user" stays the zero vector
    assert result.model.user_rows(sorted(users)).tolist() == list(range(1, len(users) + 1))
    without = train_encoder(sequences, split, index, titles, config,
                            TrainConfig(epochs=1, threads=1), users=users)
    assert without.model.config.n_users == 0 and without.model.user_embedding is None
    with pytest.raises(ValueError, match="each history's user"):
        train_encoder(sequences, split, index, titles, config,
                      TrainConfig(epochs=1, threads=1, user_vectors=True))


def test_a_user_vector_carries_the_users_taste_beyond_the_input_window():
    """Each user draws 70% of 60 events from five favourite items: a 3-item window
    shows only some of them; the user's learned vector brings back the rest.
    (Trained directly: the protocol's validation excludes seen items, which
    here are the favourites.)"""
    from training.sequences import next_item_pairs

    rng = np.random.default_rng(3)
    n_items, length = 40, 3
    favourites = {f"u{u}": rng.choice(n_items, 5, replace=False) + 1 for u in range(60)}
    sequences, users = [], []
    for user, liked in favourites.items():
        items = [int(rng.choice(liked)) if rng.random() < 0.7 else int(rng.integers(1, n_items + 1))
                 for _ in range(60)]
        for end in range(60, 1, -length):
            sequences.append(items[max(0, end - length - 1):end])
            users.append(user)
    torch.manual_seed(0)
    model = BehaviourEncoder(EncoderConfig(n_items=n_items, max_len=length, hidden=16,
                                           dropout=0.1, n_users=60, user_dropout=0.5),
                             [f"i{i}" for i in range(n_items)], [""] * n_items, list(favourites))
    inputs, targets = next_item_pairs(sequences, length)
    rows = model.user_rows(users)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(150):
        loss = model(inputs, targets, users=rows)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    model.eval()
    last = pad_left([seq[1:] for seq in sequences[::20]], length)  # each user's newest window
    with torch.inference_mode():
        scores = {"with": model.score(last, model.user_rows(list(favourites))),
                  "without": model.score(last)}
    share = {name: np.mean([len(set(top.tolist()) & set(favourites[u].tolist())) / 5
                            for top, u in zip(s.topk(5).indices, favourites, strict=True)])
             for name, s in scores.items()}
    assert share["with"] > 0.7
    assert share["with"] > share["without"] + 0.25


def test_the_attention_rollout_is_that_of_the_models_own_attention_weights():
    """``attention_rollout`` recomputes each layer's attention from the query/key
    projections ``encode_explained`` records; it must equal the rollout of the
    probabilities Hugging Face's eager attention reports: per layer the mean
    over heads, mixed half and half with the identity, multiplied down from the
    last position."""
    import copy

    from training.inference import attention_rollout

    torch.manual_seed(1)
    model = BehaviourEncoder(EncoderConfig(n_items=30, max_len=8, heads=2),
                             [f"i{i}" for i in range(30)], [f"t{i}" for i in range(30)]).eval()
    seq = pad_left([[3, 4, 5], [1, 2, 3, 4, 5, 6, 7, 8, 9], [7]], 8)
    eager = copy.deepcopy(model)
    eager.backbone.set_attn_implementation("eager")
    real = (seq != 0).long()
    with torch.inference_mode():
        users, projections = model.encode_explained(seq)
        rollout = torch.from_numpy(attention_rollout(projections.numpy(), real.bool().numpy(), 2))
        reported = eager.backbone(
            inputs_embeds=eager.item_embedding(seq) * math.sqrt(model.config.hidden),
            attention_mask=real, position_ids=(real.cumsum(1) - 1).clamp(min=0),
            output_attentions=True).attentions
    mixed = [0.5 * layer.mean(dim=1) + 0.5 * torch.eye(8) for layer in reported]
    expected = (mixed[1][:, -1:, :] @ mixed[0])[:, 0, :]
    assert torch.allclose(rollout, expected, atol=1e-5)
    assert torch.allclose(users, model.encode(seq), atol=1e-6)
    assert torch.allclose(rollout.sum(dim=1), torch.ones(3))
    assert (rollout[real == 0] == 0).all() and (rollout[real == 1] > 0).all()
    assert rollout[2, -1] == 1.0  # one item: all of it


def test_a_time_budget_stops_before_an_epoch_that_would_overrun_it():
    data, split, index, sequences = generated(100, 50, 3_000, 5, 11)
    config = EncoderConfig(n_items=len(index), max_len=10, hidden=16)
    budget = train_encoder(sequences, split, index, data.items["title"].tolist(), config,
                           TrainConfig(epochs=4, patience=4, max_seconds=1e-6, threads=1))
    assert len(budget.history) == 1 and budget.best_epoch == 1
    assert budget.stopped_by == "time budget"
    free = train_encoder(sequences, split, index, data.items["title"].tolist(), config,
                         TrainConfig(epochs=4, patience=4, threads=1))
    assert len(free.history) == 4 and free.stopped_by == "epochs"
    impatient = train_encoder(sequences, split, index, data.items["title"].tolist(), config,
                              TrainConfig(epochs=30, patience=1, learning_rate=0.3,
                                          threads=1))
    assert impatient.stopped_by == "patience" and len(impatient.history) < 30


def test_validation_on_a_user_sample_chooses_and_the_chosen_model_is_validated_on_all():
    from training.evaluate import evaluate
    from training.train import model_scorer

    data, split, index, sequences = generated(200, 80, 8_000, 9, 11)
    sample = split.sample(50, seed=42)
    assert len(sample.validation) == len(sample.test) == 50
    assert set(sample.validation) < set(split.validation) and sample.train is split.train
    assert sample.validation == split.sample(50, seed=42).validation  # drawn once, seeded
    assert split.sample(0, 42) is split and split.sample(10_000, 42) is split
    config = EncoderConfig(n_items=len(index), max_len=10, hidden=16)
    result = train_encoder(sequences, split, index, data.items["title"].tolist(), config,
                           TrainConfig(epochs=3, patience=3, threads=1, validation_users=50,
                                       transition_lags=2))
    every = evaluate(model_scorer(result.model), split, index, "validation")
    watched = evaluate(model_scorer(result.model), sample, index, "validation")
    assert result.validation["val_ndcg_at_10"] == pytest.approx(every["ndcg_at_10"])
    assert result.validation["val_ndcg_at_10"] != pytest.approx(watched["ndcg_at_10"])


def test_random_tiling_shows_other_windows_of_the_same_histories_each_epoch():
    from training.train import training_windows

    history = list(range(1, 48))  # 47 items: targets 2..47
    fixed, users = training_windows([history], [7], max_len=10)
    assert users == [7] * len(fixed) == [7] * 5
    assert fixed == training_windows([history], [7], max_len=10)[0]
    rng = np.random.default_rng(0)
    draws = [training_windows([history], [7], 10, rng)[0] for _ in range(20)]
    assert len({tuple(map(tuple, d)) for d in draws}) > 5  # the offsets vary
    for windows in draws:
        assert windows[0] == history[-11:]  # the newest window never moves
        targets = set()
        for window in windows:
            start = history.index(window[0])
            assert window == history[start:start + len(window)] and len(window) <= 11
            targets.update(window[1:])
        # at most max_len - 1 targets skipped in an epoch (between the newest
        # window and the shifted older ones)
        assert len(targets) >= 46 - 9
    # The training itself: reproducible for a seed, and not the fixed tiling.
    data, split, index, sequences = generated(150, 60, 9_000, 4, 60)
    config = EncoderConfig(n_items=len(index), max_len=10, hidden=16)
    runs = [train_encoder(sequences, split, index, data.items["title"].tolist(), config,
                          TrainConfig(epochs=2, patience=2, threads=1, random_tiling=tiling))
            for tiling in (True, True, False)]
    assert runs[0].history == runs[1].history
    assert runs[0].history[0]["train_loss"] != runs[2].history[0]["train_loss"]


@pytest.mark.parametrize("temperature", [0.0, 0.1])
def test_sampled_softmax_is_the_softmax_over_the_target_and_the_drawn_items(temperature):
    torch.manual_seed(3)
    n = 40
    model = BehaviourEncoder(EncoderConfig(n_items=n, max_len=6, temperature=temperature),
                             [f"i{i}" for i in range(n)], [f"t{i}" for i in range(n)]).eval()
    seq = pad_left([[1, 2, 3, 4, 5, 6], [7, 8, 9]], 6)
    targets = pad_left([[2, 3, 4, 5, 6, 7], [8, 9, 10]], 6)
    torch.manual_seed(11)
    loss = model(seq, targets, negatives=15)
    torch.manual_seed(11)
    drawn = torch.randint(1, n + 1, (15,)).tolist()  # the same draws
    with torch.no_grad():
        full = model.logits(model.hidden_states(seq), model.item_table())  # (B, T, N + 1)
    expected, smoothed_expected = [], []
    for row in range(2):
        for position in range(6):
            target = int(targets[row, position])
            if target == 0:
                continue
            logits = full[row, position]
            others = torch.stack([logits[d] for d in drawn if d != target])
            classes = torch.cat([logits[target:target + 1], others])
            total = torch.logsumexp(classes, 0)
            expected.append(total - logits[target])
            # label smoothing 0.2 over the row's classes (the masked draws are none)
            smoothed_expected.append(0.8 * (total - logits[target])
                                     + 0.2 * (total - classes).mean())
    assert any(int(t) in drawn for t in targets[targets != 0])  # the masking is exercised
    assert loss.item() == pytest.approx(torch.stack(expected).mean().item(), rel=1e-5)
    full_loss = model(seq, targets)
    assert loss.item() < full_loss.item()  # fewer negatives: a smaller loss
    assert model(seq, targets, negatives=n).item() == pytest.approx(full_loss.item())
    # With label smoothing the masked draws get no share: finite, and as the full
    # softmax smooths when every other item is drawn.
    torch.manual_seed(11)
    smoothed = model(seq, targets, negatives=15, label_smoothing=0.2)
    assert math.isfinite(smoothed.item())
    assert smoothed.item() == pytest.approx(torch.stack(smoothed_expected).mean().item(),
                                            rel=1e-5)
    assert model(seq, targets, negatives=n, label_smoothing=0.2).item() == pytest.approx(
        model(seq, targets, label_smoothing=0.2).item(), rel=1e-5)


def test_sampled_softmax_training_learns_the_sequences():
    data, split, index, sequences = generated(300, 120, 12_000, 7, 21)
    losses = []
    result = train_encoder(
        sequences, split, index, data.items["title"].tolist(),
        EncoderConfig(n_items=len(index), max_len=20, hidden=32, dropout=0.1),
        TrainConfig(epochs=8, patience=8, learning_rate=3e-3, threads=1, sampled_negatives=30),
        on_epoch=lambda epoch, row: losses.append(row["train_loss"]))
    assert losses[-1] < losses[0] * 0.9
    # 10 of 120 items (fewer after excluding seen ones): random HR@10 is ~0.1.
    assert result.validation["val_hr_at_10"] > 0.2


def test_with_a_weight_average_the_checkpoint_is_the_averaged_model_that_was_validated():
    from training.evaluate import evaluate
    from training.train import model_scorer

    data, split, index, sequences = generated(200, 80, 8_000, 9, 11)
    config = EncoderConfig(n_items=len(index), max_len=10, hidden=16)
    results = {decay: train_encoder(sequences, split, index, data.items["title"].tolist(),
                                    config, TrainConfig(epochs=3, patience=3, threads=1,
                                                        learning_rate=3e-3, ema_decay=decay))
               for decay in (0.0, 0.9)}
    for result in results.values():
        again = evaluate(model_scorer(result.model), split, index, "validation")
        assert again["ndcg_at_10"] == pytest.approx(result.validation["val_ndcg_at_10"])
    # Same seed and batches: only the averaging differs.
    assert results[0.0].history[0]["train_loss"] == pytest.approx(
        results[0.9].history[0]["train_loss"])
    plain, averaged = (results[d].model.item_table() for d in (0.0, 0.9))
    assert not torch.allclose(plain, averaged)


def test_label_smoothing_spreads_its_share_over_the_items_never_over_padding():
    torch.manual_seed(4)
    n = 12
    model = BehaviourEncoder(EncoderConfig(n_items=n, max_len=4, temperature=0.1),
                             [f"i{i}" for i in range(n)], [f"t{i}" for i in range(n)]).eval()
    seq, targets = pad_left([[1, 2, 3]], 4), pad_left([[2, 3, 4]], 4)
    with torch.no_grad():
        log_p = torch.log_softmax(
            model.logits(model.hidden_states(seq), model.item_table())[0, 1:, 1:], dim=-1)
        wanted = targets[0, 1:] - 1
        nll = -log_p[torch.arange(3), wanted].mean()
        uniform = -log_p.mean()  # over the n items, padding excluded
        assert model(seq, targets).item() == pytest.approx(nll.item(), rel=1e-5)
        assert model(seq, targets, label_smoothing=0.2).item() == pytest.approx(
            (0.8 * nll + 0.2 * uniform).item(), rel=1e-5)


def test_the_weight_average_warms_up_then_decays_at_the_configured_rate():
    from training.train import ema_with_warm_up

    update = ema_with_warm_up(0.998)
    for updates, expected in ((1, 1 - 2 / 11), (90, 1 - 91 / 100), (100_000, 0.002)):
        averaged, current = [torch.zeros(3)], [torch.ones(3)]
        update(averaged, current, torch.tensor(updates))
        assert torch.allclose(averaged[0], torch.full((3,), expected))


def test_with_sampled_softmax_the_tables_are_sparse_and_only_touched_rows_move():
    from training.train import optimisers

    torch.manual_seed(0)
    n = 500
    model = BehaviourEncoder(EncoderConfig(n_items=n, max_len=6, hidden=8, n_users=40),
                             [f"i{i}" for i in range(n)], [f"t{i}" for i in range(n)],
                             [f"u{i}" for i in range(40)])
    assert optimisers(model, TrainConfig(sampled_negatives=20))[1] == []  # 540 rows: dense
    steppers, tables = optimisers(model, TrainConfig(sampled_negatives=20, learning_rate=0.1,
                                                     sparse_min_rows=500))
    assert tables == [model.item_embedding.weight, model.user_embedding.weight]
    assert [type(s).__name__ for s in steppers] == ["SparseAdam", "AdamW"]
    before = model.item_embedding.weight.detach().clone()
    seq = pad_left([[1, 2, 3, 4], [7, 8, 9]], 6)
    targets = pad_left([[2, 3, 4, 5], [8, 9, 10]], 6)
    loss = model(seq, targets, negatives=20, users=torch.tensor([1, 2]))
    loss.backward()
    grad = model.item_embedding.weight.grad
    assert grad.is_sparse and model.user_embedding.weight.grad.is_sparse
    touched = set(grad.coalesce().indices()[0].tolist())
    for stepper in steppers:
        stepper.step()
    moved = set(torch.nonzero((model.item_embedding.weight != before).any(dim=1))[:, 0].tolist())
    assert moved and moved <= touched and len(touched) <= 10 + 20
    # a catalogue the draws would cover trains with the full softmax: dense
    small = BehaviourEncoder(EncoderConfig(n_items=15, max_len=6, hidden=8),
                             list("abcdefghijklmno"), list("ABCDEFGHIJKLMNO"))
    assert optimisers(small, TrainConfig(sampled_negatives=20, sparse_min_rows=0))[1] == []


def test_the_dense_average_is_the_weight_average_of_the_dense_parameters():
    from training.train import DenseAverage, ema_with_warm_up

    torch.manual_seed(1)
    model = BehaviourEncoder(EncoderConfig(n_items=30, max_len=6, hidden=8), list(range(30)),
                             list(range(30)))
    table = model.item_embedding.weight
    full = torch.optim.swa_utils.AveragedModel(model, multi_avg_fn=ema_with_warm_up(0.9),
                                               use_buffers=True)
    dense = DenseAverage(model, [table], 0.9)
    for _ in range(6):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        full.update_parameters(model)
        dense.update()
    averaged = dict(dense.averaged().named_parameters())
    for name, value in full.module.named_parameters():
        if name == "item_embedding.weight":  # not averaged: the current table
            assert torch.equal(averaged[name], table)
            assert not torch.allclose(value, table)
        else:
            assert torch.allclose(averaged[name], value, atol=1e-6), name


def test_an_epoch_longer_than_the_budget_ends_inside_it():
    data, split, index, sequences = generated(300, 120, 12_000, 7, 21)
    result = train_encoder(
        sequences * 20, split, index, data.items["title"].tolist(),
        EncoderConfig(n_items=len(index), max_len=20, hidden=16),
        TrainConfig(epochs=5, batch_size=2, threads=1, max_seconds=1.0))
    assert result.stopped_by == "time budget" and len(result.history) == 1
    assert result.train_seconds < 10  # one second of batches, then one validation
