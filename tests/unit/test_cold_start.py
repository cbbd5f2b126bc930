"""Cold-start items: a vector from text alone, and the held-out evaluation's parts."""

import numpy as np
import pytest
import torch

from training.cold_start import (
    LENDER_MIN_INTERACTIONS,
    NEIGHBOURS,
    ColdStartDraw,
    cold_split,
    fill_cold_items,
    hold_out_items,
    lenders,
    lift_interval,
    neighbour_vectors,
    pooled_metrics,
    random_hit_rates,
    text_neighbours,
    without_items,
)
from training.model import BehaviourEncoder, EncoderConfig
from training.sequences import ItemIndex, Split


def test_a_cold_vector_is_the_weighted_direction_of_its_text_neighbours():
    a, b = np.eye(2)
    warm_text = np.stack([a, a, b])
    warm_vectors = np.array([[2.0, 0.0], [0.0, 2.0], [0.0, 4.0]])
    got = neighbour_vectors(*text_neighbours(np.stack([a, b, -b]), warm_text, neighbours=2),
                            warm_vectors)
    mean_length = 8 / 3
    # text a: warm items 0 and 1, similarity 1 each: their unit vectors averaged.
    np.testing.assert_allclose(got[0], mean_length * np.array([1, 1]) / np.sqrt(2), rtol=1e-6)
    # text b: item 2 (similarity 1) and a neighbour of similarity 0, which weighs nothing.
    np.testing.assert_allclose(got[1], [0, mean_length], rtol=1e-6, atol=1e-6)
    # No neighbour with a positive similarity: its 2 nearest (0 and 1) count the same.
    np.testing.assert_allclose(got[2], got[0], rtol=1e-6)


def test_above_the_exact_size_the_text_neighbours_come_from_an_inverted_file(monkeypatch):
    """Clustered unit texts: the approximate neighbours are nearly the exact ones,
    and their shares are shares."""
    import training.cold_start as cold_start

    rng = np.random.default_rng(4)
    centres = rng.normal(size=(200, 32))
    warm = centres[rng.integers(0, 200, 20_000)] + 0.3 * rng.normal(size=(20_000, 32))
    cold = centres[rng.integers(0, 200, 300)] + 0.3 * rng.normal(size=(300, 32))
    warm, cold = (x / np.linalg.norm(x, axis=1, keepdims=True) for x in (warm, cold))
    exact, exact_shares = text_neighbours(cold, warm)
    monkeypatch.setattr(cold_start, "EXACT_PAIRS", 1000)
    found, shares = cold_start.text_neighbours(cold, warm)
    assert found.shape == exact.shape == (300, 20)
    recall = np.mean([len(set(a) & set(b)) / 20 for a, b in zip(found, exact, strict=True)])
    assert recall > 0.9
    np.testing.assert_allclose(shares.sum(axis=1), 1.0, rtol=1e-5)
    assert (shares >= 0).all() and not np.array_equal(found, exact)  # it did take the other path


def test_an_item_with_text_only_gets_a_vector_near_its_text_neighbours():
    """Items 1-4 are warm in two clusters (text direction a or b); item 5 has no
    interactions and text like cluster a: it lands next to cluster a's items."""
    model = BehaviourEncoder(EncoderConfig(n_items=6, hidden=4), list("abcdef"), list("ABCDEF"))
    a, b = np.eye(3)[0], np.eye(3)[1]
    text = np.stack([np.zeros(3), a, a, b, b, 0.9 * a + 0.1 * b, np.zeros(3)]).astype(np.float32)
    with torch.no_grad():
        model.item_embedding.weight[1:5] = torch.tensor(
            [[1, 0, 0, 0], [1, 0.1, 0, 0], [0, 0, 1, 0], [0, 0, 1, 0.1]])
        before = model.item_embedding.weight[6].clone()
    assert fill_cold_items(model, text, warm=np.array([1, 2, 3, 4])) == 1
    table = model.item_embedding.weight.detach().numpy()
    assert np.isfinite(table[5]).all()
    assert np.linalg.norm(table[5] - table[1]) < np.linalg.norm(table[5] - table[3])
    assert torch.equal(model.item_embedding.weight[6], before)  # no text: left alone


def test_a_cold_item_borrows_its_text_neighbours_transitions():
    """Item 1 was always followed by item 2; item 5 has no interactions and text
    like item 2 (and less like items 1, 3 and 4, which never followed item 1): it
    gets the largest of their transition scores, item 2's, not a mix diluted by
    the neighbours that never followed item 1."""
    from training.sequences import pad_left
    from training.transitions import Transitions

    model = BehaviourEncoder(EncoderConfig(n_items=5, hidden=4), list("abcde"), list("ABCDE"))
    model.transitions = Transitions.count([[1, 2]] * 3 + [[4, 3]], n_items=5, lags=1)
    a, b = np.eye(2)
    text = np.stack([np.zeros(2), b, a, b, b, 0.8 * a + 0.6 * b]).astype(np.float32)
    assert fill_cold_items(model, text, warm=np.array([1, 2, 3, 4])) == 1
    after_1 = model.transitions.scores(pad_left([[1]], 3).numpy())[0]
    # Neighbours of item 5 (text 0.8a + 0.6b): item 2 (0.8) and items 1, 3, 4 (0.6
    # each); of those only item 2 followed item 1 (log 4).
    shares = np.array([0.8, 0.6, 0.6, 0.6]) / 2.6
    assert after_1[5] == pytest.approx(np.log(4), rel=1e-5)
    assert after_1[2] == pytest.approx(np.log(4)) and after_1[3] == 0
    assert model.transitions.borrowers.tolist() == [5]
    # Its popularity is borrowed the same way: items 1 and 2 occur 3 times, 3 and
    # 4 once (log 4, log 4, log 2, log 2).
    assert model.transitions.popularity[5] == pytest.approx(
        (shares[0] + shares[1]) * np.log(4) + (shares[2] + shares[3]) * np.log(2), rel=1e-5)


def test_the_share_of_the_borrowed_transition_score_is_chosen_on_validation():
    """Item 1 was always followed by item 2, and cold item 5 borrows item 2's
    score (its text is item 2's). Every item's vector is 0, so the encoder
    scores every item exactly 0 and the blend is the transitions'. When the
    validation users who read item 1 went on to item 2, item 5's whole borrowed
    score ties item 2 and costs it the first place: half of it is the first
    weight that does not. When they went on to item 5, only no borrowed score at
    all loses it its place: the whole score is kept."""
    from training.cold_start import BORROWED_WEIGHTS, choose_borrowed_weight
    from training.sequences import pad_left
    from training.transitions import Transitions

    index = ItemIndex(list("abcde"))
    a, b = np.eye(2)
    text = np.stack([np.zeros(2), a, b, a, a, b]).astype(np.float32)
    chosen = {}
    for went_on_to in ("b", "e"):
        model = BehaviourEncoder(EncoderConfig(n_items=5, hidden=4), list("abcde"),
                                 list("ABCDE"))
        with torch.no_grad():
            model.item_embedding.weight.zero_()
        model.transitions = Transitions.count([[1, 2]] * 3 + [[4, 3]], n_items=5,
                                              lags=1).weighted(1.0)
        assert fill_cold_items(model, text, warm=np.array([1, 2, 3, 4])) == 1
        assert model.transitions.borrowed_weight == 1.0
        assert not model.item_embedding.weight.any()  # the mix of zero vectors
        split = Split(train={f"u{k}": ["a"] for k in range(4)},
                      validation={f"u{k}": went_on_to for k in range(4)},
                      test={f"u{k}": "c" for k in range(4)})
        chosen[went_on_to] = choose_borrowed_weight(model, split, index)
        assert model.transitions.borrowed_weight == chosen[went_on_to]
        after_1 = model.transitions.scores(pad_left([[1]], 3).numpy())[0]
        assert after_1[5] == pytest.approx(chosen[went_on_to] * np.log(4), rel=1e-5)
    assert chosen == {"b": 0.5, "e": 1.0}
    assert BORROWED_WEIGHTS[:2] == (1.0, 0.5)


def test_held_out_items_leave_training_but_stay_in_the_catalogue():
    index = ItemIndex([f"i{k}" for k in range(20)])
    held = hold_out_items(index, 0.1, seed=3)
    assert len(held) == 2 and held == hold_out_items(index, 0.1, seed=3)
    held_rows = set(index.encode(sorted(held)))
    warm = [f"i{k}" for k in range(20) if f"i{k}" not in held]
    a, b, c, d = index.encode(warm[:4])
    kept = without_items([[a, *held_rows, b, c], [*held_rows, d], [d, c]], ["u", "v", "w"],
                         held_rows)
    assert kept == ([[a, b, c], [d, c]], ["u", "w"])  # users stay with their sequences
    split = Split(train={"u": [warm[0], *sorted(held), warm[1]], "v": warm[2:4]},
                  validation={"u": warm[4], "v": sorted(held)[0]},
                  test={"u": sorted(held)[1], "v": warm[5]})
    fit, measure = cold_split(split, held)
    assert fit.train["u"] == warm[:2] and "v" not in fit.validation
    assert measure.test == {"u": sorted(held)[1]}
    assert measure.train["u"] == split.train["u"]  # the protocol's history, as in the test
    # 20 items, u's history (4 items + validation) excluded: 10 of 15 rankable.
    assert random_hit_rates(measure, index).tolist() == [10 / 15]


def test_only_items_seen_often_enough_lend_their_vectors_unless_too_few_are():
    warm = np.arange(1, 101)
    counts = np.zeros(101)
    counts[1:] = np.arange(1, 101)  # item i seen i times
    kept = lenders(warm, counts)
    assert kept.tolist() == list(range(LENDER_MIN_INTERACTIONS, 101))
    few = np.where(np.arange(101) >= 95, counts, 1.0)  # 6 items qualify: fewer than NEIGHBOURS
    assert 6 < NEIGHBOURS and lenders(warm, few).tolist() == warm.tolist()
    assert lenders(warm, None) is warm


def test_a_lent_vector_comes_from_well_seen_neighbours_not_the_nearest_rarely_seen_ones():
    """25 items seen once, nearest in text, point one way; 25 seen often, a little
    further in text, the other: the cold item takes the well-seen direction, and
    without counts (every warm item lends) the rarely-seen one."""
    n = 51  # items 1..25 rarely seen, 26..50 often, 51 cold
    text = np.zeros((n + 1, 3), dtype=np.float32)
    text[1:26] = [1.0, 0.1, 0.0]
    text[26:51] = [1.0, 0.0, 0.4]
    text[51] = [1.0, 0.0, 0.0]
    text[1:] /= np.linalg.norm(text[1:], axis=1, keepdims=True)
    counts = np.zeros(n + 1)
    counts[1:26], counts[26:51] = 1, 2 * LENDER_MIN_INTERACTIONS
    config = EncoderConfig(n_items=n, max_len=4, hidden=2, layers=1, heads=1)
    ids = [f"i{j}" for j in range(1, n + 1)]
    directions = {}
    for name, given in (("lenders", counts), ("every warm item", None)):
        model = BehaviourEncoder(config, ids, ids)
        with torch.no_grad():
            model.item_embedding.weight[1:26] = torch.tensor([-1.0, 0.0])
            model.item_embedding.weight[26:51] = torch.tensor([0.0, 1.0])
        assert fill_cold_items(model, text, np.arange(1, 51), given) == 1
        vector = model.item_embedding.weight[51].detach().numpy()
        directions[name] = vector / np.linalg.norm(vector)
    np.testing.assert_allclose(directions["lenders"], [0.0, 1.0], atol=1e-5)
    np.testing.assert_allclose(directions["every warm item"], [-1.0, 0.0], atol=1e-5)


def test_the_pooled_lift_and_its_interval():
    rng = np.random.default_rng(0)
    draws = [ColdStartDraw(seed=s, held_out_items=10, hits=rng.random(400) < 0.05,
                           random_rates=np.full(400, 0.005), train_seconds=1.0, epochs=2)
             for s in (1, 2)]
    m = pooled_metrics(draws)
    hits = np.concatenate([d.hits for d in draws])
    assert m["cold_start_users"] == 800 and m["cold_start_draws"] == 2
    assert m["cold_start_hits"] == hits.sum() and m["cold_start_random_hits"] == pytest.approx(4)
    assert m["cold_start_lift"] == pytest.approx(hits.mean() / 0.005)
    assert m["cold_start_lift_low"] < m["cold_start_lift"] < m["cold_start_lift_high"]
    assert 5 < m["cold_start_lift_low"] and m["cold_start_lift_high"] < 15
    one = pooled_metrics(draws[:1])
    assert (one["cold_start_lift_high"] - one["cold_start_lift_low"]
            > m["cold_start_lift_high"] - m["cold_start_lift_low"])  # more users, narrower
    low, high = lift_interval(np.zeros(50), np.full(50, 0.01))
    assert low == high == 0.0


@pytest.mark.parametrize("batch_rows", [65_536, 2])
def test_the_text_table_puts_each_items_vector_at_its_model_index(tmp_path, monkeypatch,
                                                                   batch_rows):
    """Rows by model index; padding, and a catalogue item with no content row,
    zero; a content row for an item the model does not know, left out; the same
    when the file is read in several batches."""
    from types import SimpleNamespace

    import pandas as pd

    from feature_repo.data_sources import ITEM_CONTENT_FILE
    from orchestration.assets import training

    monkeypatch.setattr(training, "TEXT_BATCH_ROWS", batch_rows)
    pd.DataFrame({"item_id": ["c", "x", "a"],
                  "text_embedding": [[0.5, 1.5, 2.5], [9.0, 9.0, 9.0], [-1.0, 0.0, 1.0]]}
                 ).to_parquet(tmp_path / ITEM_CONTENT_FILE)
    table = training.item_text_table(SimpleNamespace(offline_dir=tmp_path),
                                     ItemIndex(["a", "b", "c"]))
    assert table.dtype == np.float32
    assert table.tolist() == [[0, 0, 0], [-1, 0, 1], [0, 0, 0], [0.5, 1.5, 2.5]]
