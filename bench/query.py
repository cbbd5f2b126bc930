"""``make bench SECTIONS=query``: what a typed query adds, on the built-in
generated data and on MovieLens-100K.

For each set the pipeline runs with its defaults up to the registered model (in
``BENCH_HOME``/<set> when set, where a champion is reused; else a temporary
home); the training asset evaluates the query path under the protocol
(``training.query``: a genre query per validation and test event, the blend
weights chosen on validation) and logs it with the run, which is read back here:
NDCG@10 and HR@10 on test of behaviour alone, the query alone and the blend.
"""

import os
import tempfile
from pathlib import Path

from bench.report import table
from bench.serving import ML100K
from infra import redis_server
from infra.settings import Settings
from training import registry

SETS = {"built-in": None, "ML-100K": ML100K}
SKIPPED = ("cold_start_evaluation",)  # retrains the recipe; not what this section measures


def _home(name: str) -> Path:
    root = os.environ.get("BENCH_HOME")
    if root:
        return Path(root) / name.lower()
    return Path(tempfile.mkdtemp(prefix=f"recsys_bench_{name.lower()}_"))


def _pipeline(settings: Settings) -> None:
    if registry.alias_version(settings.tracking_uri(), registry.CHAMPION):
        return
    from dagster import AssetSelection, materialize

    from orchestration.definitions import ASSETS, CHECKS
    from orchestration.resources import resources_from_settings

    selection = AssetSelection.all() - AssetSelection.assets(*SKIPPED)
    result = materialize([*ASSETS, *CHECKS], resources=resources_from_settings(settings),
                         selection=selection)
    assert result.success


def benchmark() -> dict:
    results = {}
    for name, source in SETS.items():
        settings = Settings(home=_home(name), source=source)
        print(f"{name}: state in {settings.home}", flush=True)
        _pipeline(settings)
        uri = settings.tracking_uri()
        run = registry.version_run(uri, registry.alias_version(uri, registry.CHAMPION))
        metrics = run.data.metrics
        results[name] = {key: value for key, value in metrics.items()
                         if key.startswith(("query_", "val_query_"))}
        results[name]["epochs"] = metrics.get("best_epoch")
        results[name]["stopped_by"] = run.data.params.get("stopped_by")
        if not os.environ.get("BENCH_HOME"):
            redis_server.stop(settings)
    return results


def tables(results: dict) -> list[dict]:
    rows = []
    for name, m in results.items():
        if not m.get("query_events"):
            continue
        for label, key in (("behaviour alone", "behaviour"), ("query alone", "only"),
                           ("blend", "blend")):
            rows.append([name, label, round(m[f"query_{key}_ndcg_at_10"], 4),
                         round(m[f"query_{key}_hr_at_10"], 4),
                         round(m[f"val_query_{key}_ndcg_at_10"], 4)])
    weights = [[name, int(m["query_events"]), m["query_weight"], m["query_popularity_weight"]]
               for name, m in results.items() if m.get("query_events")]
    return [
        table("Genre queries of the targets: test (and validation) under the protocol",
              ["set", "ranking", "NDCG@10", "HR@10", "val NDCG@10"], rows),
        table("Query blend weights chosen on validation",
              ["set", "test events", "query weight", "popularity weight (no history)"],
              weights),
    ]
