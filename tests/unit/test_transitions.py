"""Item transition counts and their blend with the encoder's scores."""

import itertools
import math

import numpy as np
import pytest
import torch

from tests.unit.test_model import generated
from training.evaluate import evaluate
from training.model import BehaviourEncoder, EncoderConfig
from training.sequences import pad_left
from training.train import TrainConfig, model_scorer, train_encoder
from training.transitions import POPULARITY_WEIGHTS, WEIGHTS, Transitions


def test_counts_are_log1p_of_how_often_an_item_followed_another_at_each_lag():
    transitions = Transitions.count([[1, 2, 3], [1, 2], [2, 1]], n_items=4, lags=2)
    # A history's score sums its newest item's lag-1 row and the one before's lag-2 row.
    scores = transitions.scores(pad_left([[1], [3, 2], []], 5).numpy())
    assert scores.shape == (3, 5)
    # after item 1: item 2 twice (lag 1); nothing else
    assert scores[0].tolist() == pytest.approx([0, 0, math.log(3), 0, 0])
    # after 2 at lag 1: 3 once, 1 once; 3 at lag 2 is followed by nothing
    assert scores[1].tolist() == pytest.approx([0, math.log(2), 0, math.log(2), 0])
    assert scores[2].tolist() == [0] * 5  # no history, no transition
    # lag 2: 1 -> 3 once
    assert transitions.scores(pad_left([[1, 4]], 5).numpy())[0].tolist() == pytest.approx(
        [0, 0, 0, math.log(2), 0])


def test_the_blend_is_the_standardised_sum_and_weight_0_leaves_the_scores_alone():
    transitions = Transitions.count([[1, 3], [1, 3], [1, 2]], n_items=3, lags=1)
    encoder = torch.tensor([[-math.inf, 2.0, 1.0, 0.0]])
    seq = pad_left([[1]], 4)
    assert transitions.weighted(0.0).blend(encoder, seq) is encoder
    blended = transitions.weighted(0.5).blend(encoder, seq)
    follow = np.array([0.0, math.log(2), math.log(3)])  # items 1, 2, 3 after item 1

    def z(x):
        return (x - x.mean()) / x.std()
    expected = z(np.array([2.0, 1.0, 0.0])) + 0.5 * z(follow)
    assert blended[0, 1:].tolist() == pytest.approx(expected.tolist())
    assert blended[0, 0] == -math.inf
    # A history whose items were never followed by anything: the encoder's order.
    unseen = transitions.weighted(0.5).blend(encoder, pad_left([[3]], 4))
    assert unseen[0, 1:].argsort(descending=True).tolist() == [0, 1, 2]
    # Popularity, log(1 + occurrences): item 1 three times, 3 twice, 2 once.
    popular = np.log1p([3.0, 1.0, 2.0])
    assert transitions.popularity.tolist() == pytest.approx([0.0, *popular])
    both = transitions.weighted(0.5, popularity_weight=0.2).blend(encoder, seq)
    assert both[0, 1:].tolist() == pytest.approx((expected + 0.2 * z(popular)).tolist())
    only = transitions.weighted(0.0, popularity_weight=0.2).blend(encoder, seq)
    assert only[0, 1:].tolist() == pytest.approx(
        (z(np.array([2.0, 1.0, 0.0])) + 0.2 * z(popular)).tolist())


def test_the_model_scores_with_its_transitions_and_the_traced_path_agrees():
    from training.inference import traced_encoder

    torch.manual_seed(0)
    model = BehaviourEncoder(EncoderConfig(n_items=6, max_len=4, temperature=0.05),
                             list("abcdef"), list("ABCDEF")).eval()
    seq = pad_left([[1, 2]], 4)
    transitions = Transitions.count([[2, 6]] * 5 + [[1, 5, 3]], n_items=6, lags=2)
    with torch.inference_mode():
        alone = model.score(seq)
        model.transitions = transitions.weighted(0.0)
        assert torch.equal(model.score(seq), alone)
        model.transitions = transitions.weighted(10.0)
        blended = model.score(seq)
        # The service's path: the traced encoder, then the blend.
        user, _ = traced_encoder(model)(seq, model.user_rows([None]))
        served = model.blend_transitions(model.logits(user, model.item_table()), seq)
    # Item 6 always followed item 2 (the newest), item 3 came 2 after item 1: with a
    # large weight they lead, in that order.
    assert blended[0].argsort(descending=True)[:2].tolist() == [6, 3]
    assert torch.allclose(served[0, 1:], blended[0, 1:], atol=1e-4)


def test_training_chooses_the_blend_weight_on_validation():
    data, split, index, sequences = generated(200, 80, 8_000, 9, 11)
    titles = data.items["title"].tolist()
    config = EncoderConfig(n_items=len(index), max_len=10, hidden=16, temperature=0.05)
    result = train_encoder(sequences, split, index, titles, config,
                           TrainConfig(epochs=2, patience=2, threads=1, transition_lags=3))
    model = result.model
    assert model.transitions.weight in WEIGHTS
    assert model.transitions.popularity_weight in POPULARITY_WEIGHTS
    assert len(model.transitions.lags) == 3
    # The reported validation metrics are the blended model's, and no pair of
    # weights beats it.
    chosen = evaluate(model_scorer(model), split, index, "validation")
    assert chosen["ndcg_at_10"] == pytest.approx(result.validation["val_ndcg_at_10"])
    transitions = model.transitions
    for weight in WEIGHTS:
        for popularity_weight in POPULARITY_WEIGHTS:
            model.transitions = transitions.weighted(weight, popularity_weight)
            other = evaluate(model_scorer(model), split, index, "validation")["ndcg_at_10"]
            assert other <= chosen["ndcg_at_10"] + 1e-9
    # The encoder's checkpoint row is kept (same epoch, same training loss).
    assert result.validation["train_loss"] == result.history[result.best_epoch - 1]["train_loss"]
    without = train_encoder(sequences, split, index, titles, config,
                            TrainConfig(epochs=2, patience=2, threads=1))
    assert without.model.transitions is None


def test_sparse_scores_equal_the_dense_ones_with_borrowers_and_their_moments():
    rng = np.random.default_rng(3)
    n_items = 60
    sequences = [rng.integers(1, 41, size=int(rng.integers(2, 15))).tolist()
                 for _ in range(200)]  # items 41..60: no interactions
    borrowers = np.arange(41, 61)
    lenders = rng.integers(1, 41, size=(20, 4))
    shares = rng.dirichlet(np.ones(4), size=20).astype(np.float32)
    borrowing = Transitions.count(sequences, n_items, lags=3).borrowing(
        borrowers, lenders, shares)
    for transitions in (Transitions.count(sequences, n_items, lags=3), borrowing,
                        borrowing.lending(0.5), borrowing.lending(0.0)):
        for history in ([], [5], [7, 3, 9], rng.integers(1, 61, size=8).tolist()):
            seq = pad_left([history], 10).numpy()
            dense = transitions.scores(seq)[0, 1:].astype(np.float64)
            sparse = transitions.sparse_scores(seq[0])
            assert np.all(sparse.values != 0) and np.all(np.diff(sparse.items) > 0)
            rebuilt = np.zeros(n_items)
            rebuilt[sparse.items - 1] = sparse.values
            assert rebuilt == pytest.approx(dense, abs=1e-5)
            mean, spread = sparse.mean_and_spread()
            assert (mean, spread) == pytest.approx((dense.mean(), dense.std()), abs=1e-5)
            picked = np.array([1, 5, 41, 60])
            assert sparse.at(picked) == pytest.approx(dense[picked - 1], abs=1e-5)
    # The borrowed path was exercised: cold items got scores from their lenders,
    # the weight's share of them, and none at weight 0.
    seq = pad_left([rng.integers(1, 41, size=8).tolist()], 10).numpy()
    whole = borrowing.sparse_scores(seq[0])
    assert np.isin(whole.items, borrowers).sum() >= 5
    half = borrowing.lending(0.5).sparse_scores(seq[0])
    assert half.at(borrowers) == pytest.approx(0.5 * whole.at(borrowers))
    assert half.at(np.arange(1, 41)) == pytest.approx(whole.at(np.arange(1, 41)))
    assert not np.isin(borrowing.lending(0.0).sparse_scores(seq[0]).items, borrowers).any()


def test_the_weight_search_ranks_equal_a_full_pass_per_pair_ties_and_exclusions_included():
    from training.evaluate import K, target_ranks
    from training.train import _blended_ranks

    rng = np.random.default_rng(5)
    users, n_items = 64, 300
    # Coarse values make ties common; sparse transitions as the real ones are.
    encoder = torch.from_numpy(np.round(rng.normal(size=(users, n_items)), 1).astype(np.float32))
    follow = torch.from_numpy((rng.random((users, n_items)) < 0.03).astype(np.float32)
                              * rng.integers(1, 4, (users, n_items)).astype(np.float32))
    popularity = torch.from_numpy(np.round(rng.normal(size=(1, n_items)), 1).astype(np.float32))
    # Targets near the top, where the weights decide whether they make the top K.
    order = torch.argsort(encoder, dim=1, descending=True)
    targets = order[torch.arange(users), torch.from_numpy(rng.integers(0, 25, users))]
    exclude = [rng.choice(np.arange(1, n_items + 1), size=int(rng.integers(0, 30)),
                          replace=False).tolist() for _ in range(users)]
    exclude[0].append(int(targets[0]) + 1)  # a target that is itself excluded
    pairs = [w for w in itertools.product(WEIGHTS, POPULARITY_WEIGHTS) if w != (0.0, 0.0)]
    fast = _blended_ranks(encoder, follow, popularity, targets, exclude, pairs)
    for j, (weight, popularity_weight) in enumerate(pairs):
        scores = torch.full((users, n_items + 1), float("-inf"))
        scores[:, 1:] = encoder
        scores[:, 1:] += weight * follow
        if popularity_weight:
            scores[:, 1:] += popularity_weight * popularity
        full = target_ranks(scores.numpy(), targets.numpy() + 1, exclude)
        assert fast[j].tolist() == np.minimum(full, K).tolist()
    assert (fast < K).mean() > 0.1 and len(set(map(tuple, fast))) > 5  # ranks vary by pair


def test_each_row_keeps_its_most_frequent_successors_up_to_the_limit():
    # item 1 is followed by 2 (3 times), 3 (twice), 4 and 5 (once each)
    sequences = [[1, 2]] * 3 + [[1, 3]] * 2 + [[1, 4], [1, 5], [6, 2]]
    cut = Transitions.count(sequences, n_items=6, lags=1, row_limit=3)
    whole = Transitions.count(sequences, n_items=6, lags=1, row_limit=10)
    lag, full = cut.lags[0], whole.lags[0]
    row = slice(lag.indptr[1], lag.indptr[2])
    # the three largest of item 1's row; of the tied 4 and 5, the lower index
    assert lag.indices[row].tolist() == [2, 3, 4]
    assert np.allclose(lag.values[row], np.log1p([3, 2, 1]))
    assert full.indices[full.indptr[1]:full.indptr[2]].tolist() == [2, 3, 4, 5]
    # rows within the limit are untouched; the served scores read the cut rows
    assert lag.indices[lag.indptr[6]:lag.indptr[7]].tolist() == [2]
    seq = np.array([0, 0, 1])
    assert cut.scores(seq[None])[0, 5] == 0 and whole.scores(seq[None])[0, 5] > 0
    sparse = cut.sparse_scores(seq)
    assert sparse.items.tolist() == [2, 3, 4]
    assert np.array_equal(whole.popularity, cut.popularity)  # occurrences are not cut
