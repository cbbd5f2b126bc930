"""Metric functions against hand-computed values, and the split never leaks."""

import math

import numpy as np
import pandas as pd
import pytest

from feature_repo.recent_items import feature_times
from training.evaluate import (
    LARGE_CATALOGUE,
    K,
    _rankable,
    ease_baseline,
    ease_scorer,
    evaluate,
    evaluated_users,
    metrics_from_ranks,
    popularity_scorer,
    rank_of_targets,
    target_ranks,
)
from training.registry import decide_promotion
from training.sequences import (
    ItemIndex,
    Split,
    evaluation_split,
    histories_from_training_set,
    join_windows,
    leave_one_out,
    next_item_pairs,
    tiles,
    training_targets,
)


def test_rank_and_metrics_hand_computed():
    # 2 users, items 1..4 (column 0 is padding).
    scores = np.array([[0, 0.9, 0.8, 0.7, 0.1],
                       [0, 0.1, 0.2, 0.3, 0.4]])
    ranks, top = rank_of_targets(scores, targets=np.array([3, 1]), exclude=[[1], []])
    # user 0: item 1 excluded, so ranking is 2, 3, 4: target 3 is rank 1 (0-based)
    # user 1: ranking 4, 3, 2, 1: target 1 is rank 3
    assert ranks.tolist() == [1, 3]
    assert top[0, :3].tolist() == [2, 3, 4] and top[0, 3:].tolist() == [0] * 7
    m = metrics_from_ranks(ranks, top, n_items=4)
    assert m["hr_at_10"] == 1.0
    assert m["ndcg_at_10"] == pytest.approx((1 / math.log2(3) + 1 / math.log2(5)) / 2)
    assert m["mrr"] == pytest.approx((1 / 2 + 1 / 4) / 2)
    assert m["coverage_at_10"] == 1.0  # items 1..4 all appear in some top-10


def test_ties_count_against_the_target():
    ranks, _ = rank_of_targets(np.array([[0, 1.0, 1.0, 1.0]]), np.array([2]), [[]])
    assert ranks.tolist() == [2]


def make_events():
    rows = []
    for k, item in enumerate(["a", "b", "c", "d", "e", "f"]):
        rows.append(("u1", item, 100 + k))
    rows += [("u2", "a", 100), ("u2", "b", 100), ("u2", "c", 100)]  # fewer than 5: train only
    # u3: three events in the same second: row order decides the split
    rows += [("u3", x, 50) for x in ["a", "b", "c", "d", "e"]]
    frame = pd.DataFrame(rows, columns=["user_id", "item_id", "ts"])
    frame["event_timestamp"] = pd.to_datetime(frame.pop("ts"), unit="s", utc=True)
    return frame.sort_values("event_timestamp", kind="stable").reset_index(drop=True)


def test_leave_one_out_by_time_with_stable_ties():
    split = leave_one_out(make_events())
    assert split.train["u1"] == ["a", "b", "c", "d"]
    assert (split.validation["u1"], split.test["u1"]) == ("e", "f")
    assert split.train["u2"] == ["a", "b", "c"] and "u2" not in split.validation
    assert (split.validation["u3"], split.test["u3"]) == ("d", "e")


def test_the_evaluation_split_is_a_fixed_sample_of_users_above_its_cap():
    events = make_events()
    whole = leave_one_out(events)
    assert evaluation_split(events, 20_000) == whole
    capped = evaluation_split(events, 1)
    assert len(capped.validation) == len(capped.test) == 1 and capped.train == whole.train
    (user,) = capped.validation
    assert (capped.validation[user], capped.test[user]) == (whole.validation[user],
                                                            whole.test[user])
    # the seed is fixed: the same events give the same users in every call
    assert evaluation_split(events.copy(), 1) == capped


def test_training_targets_never_include_validation_or_test_items():
    events = make_events()
    split = leave_one_out(events)
    targets = training_targets(events, feature_times(events), max_len=2)
    for user, group in targets.groupby("user_id"):
        held_out = {split.validation.get(user), split.test.get(user)} - {None}
        assert not held_out & set(group["target_item_id"])
    # u1 trains on a,b,c,d: windows of 2 counted back from d -> targets d and b.
    assert sorted(targets[targets.user_id == "u1"]["target_item_id"]) == ["b", "d"]


def test_the_training_windows_join_back_into_each_users_training_history():
    events = make_events()
    split = leave_one_out(events)
    index = ItemIndex(["a", "b", "c", "d", "e", "f"])
    targets = training_targets(events, feature_times(events), max_len=2)
    # What the point-in-time read gives: the max_len items before each target.
    rows = []
    for row in targets.itertuples():
        history = split.train[row.user_id]
        position = max(i for i, item in enumerate(history) if item == row.target_item_id)
        rows.append((row.user_id, row.event_timestamp, history[max(0, position - 2):position],
                     row.target_item_id))
    frame = pd.DataFrame(rows[::-1], columns=["user_id", "event_timestamp", "recent_item_ids",
                                              "target_item_id"])
    histories, users = histories_from_training_set(frame, index)
    assert dict(zip(users, histories, strict=True)) == {
        user: index.encode(items) for user, items in split.train.items()}
    # u1's windows, oldest first: [a, b] and [b, c, d] (b: the first's target).
    assert join_windows([[1, 2], [2, 3, 4]]) == [1, 2, 3, 4]
    assert join_windows([[1, 2], [5, 3, 4]]) == [1, 2, 5, 3, 4]  # not a tile: kept whole


def test_tiles_cover_the_history_from_its_end_and_shift_with_the_offset():
    history = [1, 2, 3, 4, 5, 6, 7]
    # offset 0: the newest window ends at 7, the older ones every max_len back
    assert tiles(history, 2) == [[5, 6, 7], [3, 4, 5], [1, 2, 3]]
    # offset 1: the newest is kept, the older ones end one item further back (so
    # 5 is no target this time, and 2 is one)
    assert tiles(history, 2, offset=1) == [[5, 6, 7], [2, 3, 4], [1, 2]]
    assert tiles([1, 2], 5, offset=3) == [[1, 2]]
    assert tiles([1], 5) == []


def test_next_item_pairs_shift_by_one():
    inputs, targets = next_item_pairs([[1, 2, 3], [4, 5]], max_len=3)
    assert inputs.tolist() == [[0, 1, 2], [0, 0, 4]]
    assert targets.tolist() == [[0, 2, 3], [0, 0, 5]]


def test_popularity_baseline_on_the_split():
    events = make_events()
    split = leave_one_out(events)
    index = ItemIndex(["a", "b", "c", "d", "e", "f"])
    m = evaluate(popularity_scorer(split, index), split, index, "test")
    # Training counts: a3 b3 c3 d2; u1's test item f has count 0 and ties with e
    # (both unseen by u1 after excluding a..e): rank 0 among {f}; u3 test e: {e, f} tie -> 1
    assert m["hr_at_10"] == 1.0
    assert m["mrr"] == pytest.approx((1 / 1 + 1 / 2) / 2)


@pytest.mark.parametrize("challenger,score,champion,champion_score,margin,promote", [
    ("2", 0.30, None, None, 0.0, True),
    ("2", 0.30, "1", 0.25, 0.0, True),
    ("2", 0.30, "1", 0.25, 0.1, False),   # not by the margin
    ("2", 0.20, "1", 0.25, 0.0, False),   # worse
    ("2", 0.25, "1", 0.25, 0.0, False),   # equal is not better
    ("1", 0.25, "1", 0.25, 0.0, False),   # already champion
])
def test_promotion_gate(challenger, score, champion, champion_score, margin, promote):
    decision = decide_promotion(challenger, score, champion, champion_score, margin)
    assert decision.promote is promote


def test_ease_scores_co_occurring_items_and_never_the_item_itself():
    from training.sequences import Split

    split = Split(train={"u1": ["a", "b"], "u2": ["a", "b"], "u3": ["c", "d"], "u4": ["a", "b"]},
                  validation={}, test={})
    index = ItemIndex(["a", "b", "c", "d"])
    scores = ease_scorer(split, index, lam=1.0)([[1]])[0]  # history: item a
    assert scores[2] > 0.5 > abs(scores[3])  # b always seen with a; c never
    assert scores[1] == 0.0  # diag(B) = 0


def test_ease_baseline_reports_test_metrics_with_lambda_chosen_on_validation():
    events = make_events()
    split = leave_one_out(events)
    m = ease_baseline(split, ItemIndex(["a", "b", "c", "d", "e", "f"]))
    assert m["baseline_ease_lambda"] in (10.0, 50.0, 200.0, 500.0, 1000.0)
    assert set(m) >= {"baseline_ease_hr_at_10", "baseline_ease_mrr", "val_baseline_ease_ndcg_at_10"}


def test_ease_over_the_warm_items_equals_ease_over_the_whole_catalogue():
    """Items nobody interacted with in training add only lambda on the diagonal:
    their scores are 0 and every other score is unchanged."""
    rng = np.random.default_rng(4)
    items = [f"i{j}" for j in range(40)]
    index = ItemIndex(items)
    train = {f"u{u}": list(rng.choice(items[:25], size=6, replace=False)) for u in range(30)}
    split = Split(train=train, validation={}, test={})
    n = len(index) + 1
    gram = np.zeros((n, n))
    for history in train.values():
        encoded = np.unique(index.encode(history))
        gram[np.ix_(encoded, encoded)] += 1.0
    gram[np.diag_indices(n)] += 50.0
    inverse = np.linalg.inv(gram)
    weights = -inverse / np.diag(inverse)
    weights[np.diag_indices(n)] = 0.0
    histories = [index.encode(h) for h in list(train.values())[:5]] + [[30, 3]]
    x = np.zeros((len(histories), n))
    for row, encoded in enumerate(histories):
        x[row, encoded] = 1.0
    got = ease_scorer(split, index, 50.0)(histories)
    assert np.allclose(got, x @ weights, rtol=1e-4, atol=1e-6)
    assert np.all(got[:, 26:] == 0) and np.abs(got[:, 1:26]).max() > 0.01


def test_evaluation_samples_fewer_users_only_where_the_catalogue_is_large():
    from training.evaluate import EVALUATION_CELLS, MIN_EVALUATED_USERS, users_within

    assert evaluated_users(20_000, 1_682) == 20_000  # MovieLens-size: the cap
    assert evaluated_users(20_000, 1_000_000) == EVALUATION_CELLS // 1_000_001
    assert evaluated_users(20_000, 10**9) == MIN_EVALUATED_USERS
    assert users_within(0, 24_000, 10**9) == 10**9 // 24_001  # 0: no cap but the cells


def test_large_catalogues_rank_the_same_top_k_through_torch():
    rng = np.random.default_rng(2)
    n = LARGE_CATALOGUE + 50
    scores = rng.normal(size=(4, n + 1))  # no ties
    targets = rng.integers(1, n, 4)
    exclude = [list(rng.integers(1, n, 30)) for _ in range(4)]
    ranks, top = rank_of_targets(scores, targets, exclude)
    rankable = _rankable(scores, exclude)
    expected = np.argsort(-rankable, axis=1, kind="stable")[:, :K]
    np.testing.assert_array_equal(top, expected)
    assert (ranks == (rankable > rankable[np.arange(4), targets][:, None]).sum(axis=1)).all()


def test_target_ranks_count_as_ranking_with_the_exclusions_at_minus_infinity():
    from training.evaluate import _ranks

    rng = np.random.default_rng(11)
    users, n_items = 40, 60
    for dtype in (np.float32, np.float64):
        scores = np.round(rng.normal(size=(users, n_items + 1)), 1).astype(dtype)  # many ties
        targets = rng.integers(1, n_items + 1, users)
        exclude = [rng.integers(1, n_items + 1, int(rng.integers(0, 12))).tolist()
                   for _ in range(users)]  # repeats included
        exclude[0].append(int(targets[0]))  # a target that is itself excluded
        scores[1, targets[1]] = -np.inf  # one the model cannot score
        scores[2, 0] = 99.0  # the padding column never counts
        fast = target_ranks(scores, targets, exclude)
        assert fast.tolist() == _ranks(_rankable(scores, exclude), targets).tolist()
        assert fast[0] == fast[1] == n_items and 0 < np.median(fast) < n_items
