"""``make bench SECTIONS=text``: what item text carries, on three sets: the
built-in generated data, MovieLens-100K, and a generated catalogue of 10,000
items with sparse histories (20,000 users, ~10 events each).

For each set the pipeline runs with its defaults up to the registered model (in
``BENCH_HOME``/<set> when set, where a champion is reused; else a temporary
home). Then:

1. Queries: the training asset evaluates the query path under the protocol
   (``training.query``: a genre query per validation and test event, the blend
   weights chosen on validation) and logs it with the run, read back here:
   NDCG@10 and HR@10 on test of behaviour alone, the query alone and the blend.
2. Cold start: the recipe the run logged, trained again for each of
   ``COLD_START_DRAWS`` draws of 10% of the items held out of training, with a
   training budget of ``BENCH_COLD_START_SECONDS`` (default 60) each; HR@10 on
   the test events of the held-out items, pooled over the draws, against a
   random ranking, with the lift's 95% bootstrap interval.
"""

import os
import tempfile
from pathlib import Path

from bench.report import table
from bench.serving import ML100K
from infra import redis_server
from infra.settings import Settings
from training import registry

# (state directory, source, generator sizes) per set
SETS = {"built-in": ("built-in", None, {}), "ML-100K": ("ml-100k", ML100K, {}),
        "generated, 10,000 items, sparse": ("generated-10k", None, {
            "generator_users": 20_000, "generator_items": 10_000, "generator_events": 200_000})}
SKIPPED = ("cold_start_evaluation",)  # measured below, over several draws
COLD_START_DRAWS = (7, 8, 9)
HELD_OUT = 0.1


def _home(slug: str) -> Path:
    root = os.environ.get("BENCH_HOME")
    if root:
        return Path(root) / slug
    return Path(tempfile.mkdtemp(prefix=f"recsys_bench_{slug}_"))


def _pipeline(settings: Settings, knobs: dict) -> None:
    if registry.alias_version(settings.tracking_uri(), registry.CHAMPION):
        return
    from dagster import AssetSelection, materialize

    from orchestration.definitions import ASSETS, CHECKS
    from orchestration.resources import resources_from_settings

    selection = AssetSelection.all() - AssetSelection.assets(*SKIPPED)
    result = materialize([*ASSETS, *CHECKS], resources=resources_from_settings(settings, **knobs),
                         selection=selection)
    assert result.success


def benchmark() -> dict:
    from orchestration.assets.training import cold_start_of_recipe

    seconds = float(os.environ.get("BENCH_COLD_START_SECONDS", "60"))
    results = {"cold_start_seconds": seconds, "sets": {}}
    for name, (slug, source, knobs) in SETS.items():
        settings = Settings(home=_home(slug), source=source)
        print(f"{name}: state in {settings.home}", flush=True)
        _pipeline(settings, knobs)
        uri = settings.tracking_uri()
        run = registry.version_run(uri, registry.alias_version(uri, registry.CHAMPION))
        metrics = run.data.metrics
        row = {key: value for key, value in metrics.items()
               if key.startswith(("query_", "val_query_"))}
        row["items"] = int(run.data.params["n_items"])
        row["cold_start"] = cold_start_of_recipe(settings, run.data.params, HELD_OUT,
                                                 COLD_START_DRAWS, max_train_seconds=seconds)
        print(f"{name}: {row}", flush=True)
        results["sets"][name] = row
        if not os.environ.get("BENCH_HOME"):
            redis_server.stop(settings)
    return results


def tables(results: dict) -> list[dict]:
    sets = results["sets"]
    rows = []
    for name, m in sets.items():
        if not m.get("query_events"):
            continue
        for label, key in (("behaviour alone", "behaviour"), ("query alone", "only"),
                           ("blend", "blend")):
            rows.append([name, label, round(m[f"query_{key}_ndcg_at_10"], 4),
                         round(m[f"query_{key}_hr_at_10"], 4),
                         round(m[f"val_query_{key}_ndcg_at_10"], 4)])
    weights = [[name, int(m["query_events"]), m["query_weight"], m["query_popularity_weight"]]
               for name, m in sets.items() if m.get("query_events")]
    cold = []
    for name, m in sets.items():
        c = m["cold_start"]
        if c.get("cold_start_users"):
            cold.append([name, m["items"], c["cold_start_users"], int(c["cold_start_hits"]),
                         round(c["cold_start_random_hits"], 2), round(c["cold_start_hr_at_10"], 4),
                         round(c["cold_start_lift"], 1),
                         f"{c['cold_start_lift_low']:.1f}-{c['cold_start_lift_high']:.1f}"])
    draws = ", ".join(map(str, COLD_START_DRAWS))
    return [
        table("Genre queries of the targets: test (and validation) under the protocol",
              ["set", "ranking", "NDCG@10", "HR@10", "val NDCG@10"], rows),
        table("Query blend weights chosen on validation",
              ["set", "test events", "query weight", "popularity weight (no history)"],
              weights),
        table(f"Cold start: 10% of the items held out, draws {draws} pooled, "
              f"{results['cold_start_seconds']:g} s of training each",
              ["set", "items", "test users", "hits", "random's expected hits", "HR@10",
               "lift", "lift 95% interval"], cold),
    ]
