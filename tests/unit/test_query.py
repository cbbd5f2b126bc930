"""Queries: what counts as one, the evaluation's genre queries, the relevance
arithmetic (exact from candidates' rows alone), and the weight search, which on
data where the query and the history each know something the other does not
must choose a blend that beats both."""

import numpy as np
import pytest

from training.query import (
    QUERY_MAX_CHARS,
    QUERY_WEIGHTS,
    TextMoments,
    behaviour_base,
    clean_query,
    evaluate_query,
    genre_query,
    relevance,
)
from training.sequences import ItemIndex, Split


def test_a_query_is_collapsed_and_bad_ones_are_refused():
    assert clean_query("") is None and clean_query(None) is None
    assert clean_query("  comedy \t  romance\n") == "comedy romance"
    assert clean_query("x" * QUERY_MAX_CHARS) == "x" * QUERY_MAX_CHARS
    with pytest.raises(ValueError, match="at most 200"):
        clean_query("x" * (QUERY_MAX_CHARS + 1))
    with pytest.raises(ValueError, match="blank"):
        clean_query(" \t\n ")


def test_genre_queries_leave_out_labels_that_say_nothing():
    assert genre_query("Comedy|Romance") == "comedy romance"
    assert genre_query("unknown") == genre_query("(no genres listed)") == ""
    assert genre_query(None) == genre_query("") == ""
    assert genre_query("Sci-Fi|unknown") == "sci-fi"


def test_relevance_is_standardised_and_exact_from_the_candidates_rows():
    rng = np.random.default_rng(0)
    content = rng.normal(size=(51, 8)).astype(np.float32)
    content /= np.linalg.norm(content, axis=1, keepdims=True)
    content[0] = 0.0
    content[7] = 0.0  # an item without text
    query = rng.normal(size=8)
    query /= np.linalg.norm(query)
    full = relevance(content, query[None])[0]
    assert full[0] == 0.0
    np.testing.assert_allclose([full[1:].mean(), full[1:].std()], [0.0, 1.0], atol=1e-9)
    items = np.array([3, 7, 50])
    np.testing.assert_allclose(TextMoments.of(content).relevance_at(content, query, items),
                               full[items], atol=1e-5)
    raw = rng.normal(size=(2, 51))
    assert np.array_equal(behaviour_base(raw, blended=True), raw)
    np.testing.assert_allclose(behaviour_base(raw, blended=False)[:, 1:].std(axis=1), 1.0)


def _genre_world(seed: int = 0):
    """Items in 8 genres, each with an appeal; users like two genres, and their
    targets are drawn within them by appeal. The behaviour scorer knows the
    genres a user likes and every item's appeal (not which of the two genres the
    next item is in); a genre query knows the target's genre, not its appeal."""
    rng = np.random.default_rng(seed)
    n_items, genres = 240, 8
    genre = np.arange(n_items) % genres
    appeal = rng.normal(size=n_items)
    basis = np.eye(16)[:genres]
    content = np.zeros((n_items + 1, 16), dtype=np.float32)
    content[1:] = basis[genre] + 0.05 * rng.normal(size=(n_items, 16))
    content[1:] /= np.linalg.norm(content[1:], axis=1, keepdims=True)
    ids = [f"i{j}" for j in range(n_items)]
    index = ItemIndex(ids)
    train, validation, test, liked = {}, {}, {}, {}
    for u in range(400):
        pair = rng.choice(genres, size=2, replace=False)
        pool = np.flatnonzero(np.isin(genre, pair))
        p = np.exp(1.5 * appeal[pool])
        drawn = rng.choice(pool, size=12, replace=False, p=p / p.sum())
        user = f"u{u}"
        train[user] = [ids[j] for j in drawn[:10]]
        validation[user], test[user] = ids[drawn[10]], ids[drawn[11]]
        liked[user] = pair

    def scorer(histories, users):
        scores = np.zeros((len(histories), n_items + 1))
        for row, user in enumerate(users):
            scores[row, 1:] = 2.0 * np.isin(genre, liked[user]) + appeal
        return scores

    def embed(texts):
        return np.stack([basis[int(t.removeprefix("genre"))] for t in texts])

    queries = {ids[j]: f"genre{genre[j]}" for j in range(n_items)}
    popularity = np.concatenate([[0.0], rng.integers(1, 50, size=n_items)])
    return (scorer, Split(train=train, validation=validation, test=test), index, content,
            embed, queries, popularity)


def test_the_blend_chosen_on_validation_beats_behaviour_and_query_alone_on_test():
    scorer, split, index, content, embed, queries, popularity = _genre_world()
    blend, metrics = evaluate_query(scorer, False, split, index, content, embed, queries,
                                    popularity)
    assert blend.weight in QUERY_WEIGHTS and metrics["query_weight"] == blend.weight
    assert metrics["query_events"] == metrics["val_query_events"] == 400
    assert metrics["query_blend_ndcg_at_10"] > 1.3 * max(metrics["query_behaviour_ndcg_at_10"],
                                                         metrics["query_only_ndcg_at_10"])
    assert metrics["query_blend_hr_at_10"] > metrics["query_behaviour_hr_at_10"]
    # the query alone narrows the target to its genre's 30 items (random: 10 of ~230)
    assert 0.2 < metrics["query_only_hr_at_10"] < 0.6


def test_events_whose_target_has_no_query_are_left_out():
    scorer, split, index, content, embed, queries, popularity = _genre_world()
    without = {item: ("" if int(item[1:]) % 2 else q) for item, q in queries.items()}
    _, metrics = evaluate_query(scorer, False, split, index, content, embed, without, popularity)
    evaluated = sum(int(item[1:]) % 2 == 0 for item in split.test.values())
    assert metrics["query_events"] == evaluated < 400
    _, none = evaluate_query(scorer, False, split, index, content, embed,
                             dict.fromkeys(queries, ""), popularity)
    assert none == {"query_events": 0}


def test_the_evaluation_ranks_as_a_full_pass_per_weight_does():
    from training.evaluate import K, ndcg_at_k, target_ranks
    from training.query import POPULARITY_WEIGHTS, _query_rows, _stage_gains, popularity_relevance

    scorer, split, index, content, embed, queries, popularity = _genre_world(seed=3)

    def coarse(histories, users):  # rounded scores: many ties
        return np.round(scorer(histories, users))

    histories, targets, users, texts = _query_rows(split, index, "validation", queries)
    base = behaviour_base(coarse(histories, users), blended=False)
    relevant = relevance(content, embed(texts))
    popular = popularity_relevance(popularity)[None]

    def full_pass(scores):
        ranks = target_ranks(scores, np.asarray(targets), histories)
        return [ndcg_at_k(ranks).sum(), (ranks < K).sum()]

    for weights, popularity_weights in ((QUERY_WEIGHTS, POPULARITY_WEIGHTS), ((2.0,), (0.5,))):
        events, sums = _stage_gains(coarse, False, split, index, content, embed, queries,
                                    popularity, "validation", weights, popularity_weights)
        assert events == len(targets) == 400
        expected = {"behaviour": [full_pass(base)],
                    "blend": [full_pass(base + w * relevant) for w in weights],
                    "only": [full_pass(relevant + p * popular) for p in popularity_weights]}
        for name, columns in expected.items():
            np.testing.assert_allclose(sums[name], np.array(columns).T, rtol=1e-12)
        assert sums["blend"][1].max() > sums["behaviour"][1, 0] > 0  # the weights matter


def test_the_weights_are_chosen_on_the_validation_users_given_and_tested_on_all():
    scorer, split, index, content, embed, queries, popularity = _genre_world()
    sample = split.sample(100, seed=1)
    blend, metrics = evaluate_query(scorer, False, split, index, content, embed, queries,
                                    popularity, validation=sample)
    assert metrics["val_query_events"] == 100 and metrics["query_events"] == 400
    # the validation figures are the sample's own
    on_sample, sample_metrics = evaluate_query(scorer, False, sample, index, content, embed,
                                               queries, popularity)
    assert blend == on_sample
    for name in ("behaviour", "only", "blend"):
        key = f"val_query_{name}_ndcg_at_10"
        assert metrics[key] == pytest.approx(sample_metrics[key])
    assert sample_metrics["query_events"] == 100
