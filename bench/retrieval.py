"""Retrieval benchmark, in process: the exact path (every item scored) against
two-stage retrieval (``serving.retrieval``: HNSW candidates + exact re-ranking)
on models of ``BENCH_RETRIEVAL_SIZES`` items (default 10,000, 100,000 and
1,000,000; 64-d, one torch thread, the service's scoring functions), in the same
run: the index build, p50/p99 of one ``recommend`` call each way over the same
histories, and recall@10 of two-stage against exact. The models have random
encoder weights and item vectors around cluster centres (the structure trained
tables have), with transitions and popularity in the blend.
"""

import os
import time

import numpy as np
import torch

from bench.features import percentiles
from bench.report import table
from feature_repo.event_rules import EventRules
from serving.scoring import recommend, serve
from training import ann
from training.model import BehaviourEncoder, EncoderConfig
from training.transitions import Transitions

HIDDEN = 64
HISTORIES = 300


def structured_model(n_items: int, clusters: int, hidden: int = 32, sequences: int = 0,
                     seed: int = 0, users: list[str] = (), popularity_exponent: float = 0.0,
                     ) -> BehaviourEncoder:
    """Random encoder weights; item vectors around ``clusters`` centres; transitions
    counted over ``sequences`` (default 4 per item) of 8 items that stay within a
    cluster, blended (0.15) with popularity (0.05). ``users``: ids given a learned
    vector each. ``popularity_exponent`` > 0: items are picked within their
    cluster by a Zipf weight of a random rank (popular items' transition rows
    grow long, as in real data); 0: uniformly."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    ids = [f"i{i}" for i in range(n_items)]
    model = BehaviourEncoder(EncoderConfig(n_items=n_items, max_len=20, hidden=hidden,
                                           temperature=0.05, n_users=len(users)),
                             ids, ids, list(users)).eval()
    home, vectors = clustered_items(n_items, clusters, hidden, rng)
    with torch.no_grad():
        model.item_embedding.weight[1:] = torch.from_numpy(vectors).float()
        if users:
            model.user_embedding.weight[1:] = 0.1 * torch.randn(len(users), hidden)
    picker = ClusterPicker(home, clusters, popularity_exponent, seed)
    picks = picker.sequences(sequences or 4 * n_items, 8, rng)
    model.transitions = Transitions.count((picks + 1).tolist(), n_items,
                                          lags=2).weighted(0.15, 0.05)
    return model


def clustered_items(n_items: int, clusters: int, hidden: int, rng: np.random.Generator,
                    ) -> tuple[np.ndarray, np.ndarray]:
    """(N,) each item's cluster and (N, hidden) its vector (its centre plus noise)."""
    centre = rng.normal(size=(clusters, hidden))
    home = rng.integers(0, clusters, n_items)
    return home, centre[home] + 0.5 * rng.normal(size=(n_items, hidden))


class ClusterPicker:
    """Draws sequences of items (indices 0..N-1) that stay within one cluster,
    each item by its weight among its cluster's members: ``exponent`` > 0, a Zipf
    weight of a rank drawn from ``seed`` (the same seed, the same popular items)."""

    def __init__(self, home: np.ndarray, clusters: int, exponent: float, seed: int):
        rank = np.random.default_rng(seed).permutation(len(home)) + 1.0
        weight = rank ** -exponent if exponent else np.ones(len(home))
        self.order = np.argsort(home, kind="stable")  # items grouped by cluster
        self.cumulative = np.concatenate([[0.0], np.cumsum(weight[self.order])])
        starts = np.searchsorted(home[self.order], np.arange(clusters + 1))
        self.low, self.high = self.cumulative[starts[:-1]], self.cumulative[starts[1:]]
        self.members = np.flatnonzero(starts[1:] > starts[:-1])  # clusters with members

    def sequences(self, count: int, length: int, rng: np.random.Generator) -> np.ndarray:
        """(count, length) item indices."""
        drawn = self.members[rng.integers(0, len(self.members), count)]
        at = self.low[drawn, None] + rng.random((count, length)) * (
            self.high[drawn] - self.low[drawn])[:, None]
        where = np.searchsorted(self.cumulative, at, side="right") - 1
        return self.order[np.clip(where, 0, len(self.order) - 1)]


def histories(n_items: int, count: int, seed: int = 2) -> list[list[str]]:
    rng = np.random.default_rng(seed)
    return [[f"i{i}" for i in rng.integers(0, n_items, rng.integers(1, 30))]
            for _ in range(count)]


def popularity(n_items: int) -> dict[str, int]:
    return {f"i{i}": int(c) for i, c in enumerate(np.random.default_rng(1).zipf(1.5, n_items))}


def timed(served, users) -> tuple[list[float], list[set[str]]]:
    seconds, answers = [], []
    for history in users:
        started = time.perf_counter()
        ranked = recommend(served, history, 10, True)
        seconds.append(time.perf_counter() - started)
        answers.append({i for i, *_ in ranked.items})
    return seconds, answers


def benchmark() -> dict:
    torch.set_num_threads(1)
    sizes = [int(s) for s in os.environ.get(
        "BENCH_RETRIEVAL_SIZES", "10000,100000,1000000").split(",")]
    rules = EventRules(rating_range=(0.0, 5.0))
    out = {}
    for n in sizes:
        model = structured_model(n, max(10, n // 100), hidden=HIDDEN, sequences=min(4 * n, 400_000))
        counts = popularity(n)
        exact = serve(model, "1", rules, counts, {})
        started = time.perf_counter()
        model.ann = ann.build(model)  # as registration builds it (training.ann)
        build_s = time.perf_counter() - started
        two_stage = serve(model, "1", rules, counts, {}, ann_min_items=0)
        users = histories(n, HISTORIES)
        timed(exact, users[:20])  # warm up both (the traced encoder's first calls)
        timed(two_stage, users[:20])
        exact_s, want = timed(exact, users)
        two_s, got = timed(two_stage, users)
        recall = float(np.mean([len(w & g) / 10 for w, g in zip(want, got, strict=True)]))
        out[str(n)] = {"items": n, "index_build_s": round(build_s, 1),
                       "exact": percentiles(exact_s), "two_stage": percentiles(two_s),
                       "recall_at_10": round(recall, 4)}
        print(f"{n:,} items: build {build_s:.1f} s, exact p50 {out[str(n)]['exact']['p50_ms']} "
              f"ms, two-stage p50 {out[str(n)]['two_stage']['p50_ms']} ms, recall@10 "
              f"{recall:.3f}", flush=True)
        del exact, two_stage, model
    return out


def tables(results: dict) -> list[dict]:
    return [table("One /recommend scoring call (k=10, in process): exact against two-stage",
                  ["items", "index build s", "exact p50 ms", "exact p99 ms",
                   "two-stage p50 ms", "two-stage p99 ms", "recall@10"],
                  [[r["items"], r["index_build_s"], r["exact"]["p50_ms"], r["exact"]["p99_ms"],
                    r["two_stage"]["p50_ms"], r["two_stage"]["p99_ms"], r["recall_at_10"]]
                   for r in results.values()])]
