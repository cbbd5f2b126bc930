"""Two-stage retrieval (faiss HNSW candidates + exact re-ranking) against the exact
path over the whole catalogue, on models whose item vectors have structure
(clusters, as trained tables do) and whose blend has transitions and popularity
(``bench.retrieval.structured_model``)."""

from dataclasses import replace

import numpy as np
import torch

from bench.retrieval import ClusterPicker, histories, popularity, structured_model
from feature_repo.event_rules import EventRules
from serving.retrieval import TwoStage
from serving.scoring import recommend, score_items, serve
from training import ann
from training.checkpoint import load_model, save_model
from training.model import BehaviourEncoder

RULES = EventRules(rating_range=(0.0, 5.0))


def served_pair(model: BehaviourEncoder):
    counts = popularity(model.config.n_items)
    exact = serve(model, "1", RULES, counts, {})
    two_stage = serve(model, "1", RULES, counts, {}, ann_min_items=0)
    assert exact.retrieval is None and isinstance(two_stage.retrieval, TwoStage)
    return exact, two_stage


def test_two_stage_equals_exact_when_the_candidates_cover_the_catalogue():
    model = structured_model(300, 12)
    exact, two_stage = served_pair(model)
    assert exact.answers_quickly and two_stage.answers_quickly
    two_stage = replace(two_stage, retrieval=TwoStage(model, ann.build(model),
                                                      ann_candidates=300))
    for history in histories(300, 30):
        want = recommend(exact, history, 10, True, user_id=None)
        got = recommend(two_stage, history, 10, True, user_id=None)
        assert [i for i, *_ in got.items] == [i for i, *_ in want.items]
        assert np.allclose([s for _, s, *_ in got.items], [s for _, s, *_ in want.items],
                           atol=1e-4)
        assert [w for *_, w in got.items] == [w for *_, w in want.items]  # reasons too
        assert set(history).isdisjoint(i for i, *_ in got.items)
        want_scores, _ = score_items(exact, history, ["i3", "i7", "nope", "i299"])
        got_scores, _ = score_items(two_stage, history, ["i3", "i7", "nope", "i299"])
        assert want_scores[2] is None and got_scores[2] is None
        assert np.allclose([got_scores[j] for j in (0, 1, 3)],
                           [want_scores[j] for j in (0, 1, 3)], atol=1e-4)


def _with_query_path(served, content: np.ndarray, queries):
    from serving.scoring import with_content, with_queries
    from training.query import QueryBlend

    ids = served.index.item_ids
    served = with_content(served, {item: content[j] for j, item in enumerate(ids)})
    return with_queries(served, queries, QueryBlend(weight=2.0, popularity_weight=0.25))


def test_with_a_query_two_stage_equals_exact_and_finds_what_only_the_query_asks_for():
    """The query's relevance on the candidates is exact (from the text moments),
    and an item that only the query points at reaches a two-stage answer through
    the query's own candidates."""
    from serving.query import QueryEncoder
    from training.text_encoder import default_model_dir

    model = structured_model(300, 12)
    exact, two_stage = served_pair(model)
    assert exact.answers_quickly and two_stage.answers_quickly
    queries = QueryEncoder(default_model_dir(), cache_size=8)
    asked = "haunted house at night"
    vector = queries.vector(asked)
    rng = np.random.default_rng(3)
    content = rng.normal(size=(300, queries.dim)).astype(np.float32)
    content /= np.linalg.norm(content, axis=1, keepdims=True)
    content[123] = vector  # i123 is exactly what the query asks for
    exact = _with_query_path(exact, content, queries)
    wide = _with_query_path(replace(two_stage, retrieval=TwoStage(
        model, ann.build(model), ann_candidates=300)), content, queries)
    narrow = _with_query_path(replace(two_stage, retrieval=TwoStage(
        model, ann.build(model), ann_candidates=5, transition_candidates=0,
        popular_candidates=0)), content, queries)
    for history in histories(300, 20):
        if "i123" in history:
            continue
        want = recommend(exact, history, 10, True, query=asked)
        got = recommend(wide, history, 10, True, query=asked)
        assert want.query == got.query == asked
        assert [i for i, *_ in got.items] == [i for i, *_ in want.items]
        assert np.allclose([s for _, s, *_ in got.items], [s for _, s, *_ in want.items],
                           atol=1e-4)
        assert "i123" in [i for i, *_ in want.items]
        assert "i123" in [i for i, *_ in recommend(narrow, history, 10, True, query=asked).items]
        assert "i123" not in [i for i, *_ in recommend(narrow, history, 10, True).items]
    assert queries.hits >= 40 and queries.misses == 1  # one embedding, then the cache


def test_recall_at_10_of_two_stage_on_a_50k_item_model():
    model = structured_model(50_000, 500)
    exact, two_stage = served_pair(model)
    assert two_stage.retrieval.index.ntotal == 50_000
    # exact over more than QUICK_EXACT_ITEMS items is slow: the service computes
    # it off its event loop (test_service.py)
    assert not exact.answers_quickly and two_stage.answers_quickly
    recalls = []
    for history in histories(50_000, 200):
        want = {i for i, *_ in recommend(exact, history, 10, True).items}
        got = {i for i, *_ in recommend(two_stage, history, 10, True).items}
        recalls.append(len(want & got) / 10)
    recall = float(np.mean(recalls))
    print(f"two-stage recall@10 against exact on 50,000 items: {recall:.3f}")
    assert recall >= 0.95


def test_the_re_ranking_score_is_the_full_blend_for_every_item():
    """The encoder's z-score over the catalogue comes from the item vectors' mean
    and second moment; with the transition and popularity terms it equals the full
    path's blended score item for item."""
    from training.sequences import pad_left

    model = structured_model(1_000, 10)
    retrieval = TwoStage(model, ann.build(model))
    seq = pad_left([[5, 17, 17, 400]], 20)
    user = torch.randn(1, 32)
    with torch.inference_mode():
        full = model.blend_transitions(model.logits(user, model.item_table()), seq)[0, 1:]
    every = retrieval.scores(user, seq, np.arange(1, 1_001))
    assert np.allclose(every.values, full.numpy(), atol=1e-4)
    assert full.std() > 0.5  # a real spread of scores, not a constant


def test_the_index_travels_with_the_saved_version_and_never_serves_other_weights(
        tmp_path, caplog):
    """Saved with the model's files, the index is the one served (not rebuilt);
    one built from other item vectors is refused and rebuilt at load."""
    model = structured_model(2_000, 20)
    model.ann = ann.build(model)
    loaded = load_model(save_model(model, tmp_path / "v1"))
    assert loaded.ann.params == model.ann.params and ann.fits(loaded.ann, loaded)
    served = serve(loaded, "1", RULES, popularity(2_000), {}, ann_min_items=1_000)
    assert served.retrieval.ann is loaded.ann  # the registered index, not a rebuilt one
    query = ann.scored_items(loaded)[:5]
    assert np.array_equal(loaded.ann.index.search(query, 10)[1],
                          model.ann.index.search(query, 10)[1])
    # Other weights under the same files: the index no longer fits and is rebuilt.
    with torch.no_grad():
        loaded.item_embedding.weight[1:] = loaded.item_embedding.weight[1:].flip(0)
    assert not ann.fits(loaded.ann, loaded)
    with caplog.at_level("WARNING", logger="recsys.serving"):
        rebuilt = serve(loaded, "2", RULES, popularity(2_000), {}, ann_min_items=1_000)
    assert rebuilt.retrieval.ann is not loaded.ann and ann.fits(rebuilt.retrieval.ann, loaded)
    assert "an index of other item vectors" in caplog.text
    # Below the threshold the exact path serves and no index is needed.
    assert serve(loaded, "3", RULES, popularity(2_000), {}, ann_min_items=5_000).retrieval is None


def test_a_no_history_answer_reads_the_ranked_popular_items_and_equals_the_full_ranking():
    from serving.scoring import POPULAR_RANKED, _popular_top, _top

    model = structured_model(5_000, 20)
    served = serve(model, "1", RULES, popularity(5_000), {"i7": 3, "i9": 1})
    ranked = served.popular.items
    assert len(ranked) == POPULAR_RANKED and np.all(np.diff(served.popular.values) <= 0)
    # no exclusions, a few, and too many for the ranked few (then the full ranking)
    for exclude in ([], [int(ranked[0]), int(ranked[3])], ranked[:995].tolist()):
        assert _popular_top(served, 10, exclude) == _top(served.popularity, 10, exclude)
    answer = recommend(served, [], 10, True)
    assert answer.reason == "no history for this user: popularity"
    assert [i for i, *_ in answer.items][:2] == ["i7", "i9"]  # the recent counts lead


def test_generated_sequences_stay_in_their_cluster_and_zipf_weights_favour_the_same_items():
    """``bench.scale_serving`` draws its users' histories with the picker of the
    model's own sequences: one seed, one set of popular items."""
    home = np.random.default_rng(3).integers(0, 5, 2_000)
    heaviest = np.random.default_rng(4).permutation(2_000) < 20  # ranks 1..20 of seed 4

    def drawn(exponent: float, seed: int) -> np.ndarray:
        return ClusterPicker(home, 5, exponent, seed).sequences(3_000, 8,
                                                                np.random.default_rng(5))

    shares = {}
    for exponent in (0.9, 0.0):
        sequences = drawn(exponent, 4)
        assert sequences.shape == (3_000, 8)
        assert (home[sequences] == home[sequences[:, :1]]).all()  # one cluster a sequence
        counts = np.bincount(sequences.ravel(), minlength=2_000)
        shares[exponent] = counts[heaviest].sum() / counts.sum()
    assert shares[0.9] > 0.15 and shares[0.0] < 0.03  # of the draws, to 1% of the items
    assert (drawn(0.9, 4) == drawn(0.9, 4)).all() and not (drawn(0.9, 6) == drawn(0.9, 4)).all()


def test_the_build_leaves_the_callers_thread_limit_as_it_was():
    """The index builds on every core (faiss and torch share one OpenMP runtime, so
    a caller that limited torch to one thread also limits faiss) and gives the
    caller back its own limit, with an index that finds each item's own vector."""
    import faiss

    model = structured_model(3_000, 30)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        built = ann.build(model)
        assert faiss.omp_get_max_threads() == 1 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    vectors = ann.scored_items(model)
    _, found = built.index.search(vectors[:200], 1)
    assert (found[:, 0] == np.arange(200)).mean() >= 0.99


def test_a_swapped_out_model_is_freed_once_the_collector_was_settled():
    """Tracing the encoder leaves garbage cycles that reach the model: frozen
    uncollected (``gc.freeze`` alone), a swapped-out model would stay in the worker
    for good; ``settle_collector`` collects them first, so the old model is freed
    as soon as the last reference to it goes."""
    import gc
    import weakref

    from infra.collector import settle_collector

    def served_and_ref():
        model = structured_model(500, 5)
        return serve(model, "1", RULES, popularity(500), {}), weakref.ref(model)

    try:
        served, kept = served_and_ref()
        gc.freeze()
        del served
        assert kept() is not None  # held by the trace's frozen cycles
        gc.unfreeze()
        gc.collect()
        assert kept() is None
        served, freed = served_and_ref()
        settle_collector()
        del served  # the swap: the last reference goes
        assert freed() is None
    finally:
        gc.unfreeze()
