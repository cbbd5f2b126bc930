"""``make bench SECTIONS=models``: model quality on MovieLens-100K under the
protocol of DESIGN.md, on this machine.

The pipeline's state for ``../shared/data/ml-100k`` (``BENCH_HOME`` reuses one;
otherwise the pipeline runs first in a temporary home), then on the same split:
popularity, EASE (lambda chosen on validation), and the behaviour encoder with
the pipeline's default hyper-parameters for ``BENCH_MODEL_SEEDS`` seeds (default
3), each followed by its int8 variant; after the first, the cold-start evaluation
(10% of the items held out of training) with its recipe, on three draws of
held-out items. Test is computed once per trained model, after the checkpoint
was chosen on validation.
"""

import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from bench.report import table
from bench.serving import ML100K, prepare
from infra.settings import Settings
from orchestration.assets.training import EncoderTraining, item_text_table
from orchestration.offline import read_validated_events
from training.cold_start import cold_items_from_text, cold_start_draw, pooled_metrics
from training.evaluate import (
    ease_baseline,
    evaluate,
    popularity_scorer,
)
from training.inference import quantized
from training.sequences import ItemIndex, histories_from_training_set, leave_one_out
from training.train import model_scorer, train_encoder

SEEDS = (42, 43, 44)
# Draws of held-out items for the cold-start evaluation: with ~100 test users per
# draw, one draw's lift is noisy (docs/experiments.md, Cold-start item vectors).
COLD_START_DRAWS = (7, 8, 9)
METRICS = ("ndcg_at_10", "hr_at_10", "mrr", "coverage_at_10")


def benchmark() -> dict:
    home = Path(os.environ.get("BENCH_HOME") or tempfile.mkdtemp(prefix="recsys_bench_"))
    settings = Settings(home=home, source=ML100K)
    print(f"state: {home}")
    prepare(settings)
    events = read_validated_events(settings)
    items = pd.read_parquet(settings.items_path)
    index = ItemIndex(items["item_id"].tolist())
    titles = items["title"].tolist()
    split = leave_one_out(events)
    histories, users = histories_from_training_set(
        pd.read_parquet(settings.training_set_path), index)
    text = item_text_table(settings, index)
    rows: dict[str, dict] = {}
    started = time.perf_counter()
    rows["popularity"] = evaluate(popularity_scorer(split, index), split, index, "test")
    rows["popularity"]["train_seconds"] = 0.0
    ease = ease_baseline(split, index)
    rows["EASE"] = {m: ease[f"baseline_ease_{m}"] for m in METRICS}
    rows["EASE"]["train_seconds"] = time.perf_counter() - started
    seeds = SEEDS[:int(os.environ.get("BENCH_MODEL_SEEDS", len(SEEDS)))]
    cold = {}
    for seed in seeds:
        model_config, train_config = EncoderTraining(seed=seed).configs(
            len(index), settings.recent_items)
        result = train_encoder(histories, split, index, titles, model_config, train_config,
                               users=users)
        cold_items_from_text(result.model, text, split, index, train_config)
        rows[f"encoder seed {seed}"] = {
            **evaluate(model_scorer(result.model), split, index, "test"),
            "train_seconds": result.train_seconds, "best_epoch": result.best_epoch,
            "transition_weight": result.model.transitions.weight,
            "popularity_weight": result.model.transitions.popularity_weight}
        rows[f"encoder int8 seed {seed}"] = evaluate(
            model_scorer(quantized(result.model)), split, index, "test")
        print(f"seed {seed}: {rows[f'encoder seed {seed}']}", flush=True)
        if not cold:  # the first seed's recipe, on several draws of held-out items
            draws = [cold_start_draw(histories, users, split, index, titles, text,
                                     model_config, train_config, fraction=0.1, seed=draw)
                     for draw in COLD_START_DRAWS]
            cold = {**{d.seed: pooled_metrics([d]) for d in draws},
                    "pooled": pooled_metrics(draws)}
            print(f"cold start: {cold}", flush=True)
    summary = {}
    for name in ("encoder", "encoder int8"):
        runs = [rows[f"{name} seed {s}"] for s in seeds]
        summary[name] = {m: (float(np.mean([r[m] for r in runs])),
                             float(np.std([r[m] for r in runs])))
                         for m in (*METRICS, *(("train_seconds",) if name == "encoder" else ()))}
    print(f"\n{'model':<22} {'NDCG@10':>8} {'HR@10':>8} {'MRR':>8} {'cov@10':>8} {'train s':>8}")
    for name, row in rows.items():
        print(f"{name:<22} " + " ".join(f"{row[m]:>8.4f}" for m in METRICS)
              + f" {row.get('train_seconds', float('nan')):>8.1f}")
    for name, stats in summary.items():
        print(f"{name + ' (mean)':<22} " + " ".join(
            f"{stats[m][0]:>8.4f}" for m in METRICS) + (
            f" {stats['train_seconds'][0]:>8.1f}" if "train_seconds" in stats else ""))
        print(f"{'  spread (std)':<22} " + " ".join(f"{stats[m][1]:>8.4f}" for m in METRICS))
    int8, full = summary["encoder int8"], summary["encoder"]
    print(f"int8 vs float NDCG@10: {int8['ndcg_at_10'][0] / full['ndcg_at_10'][0] - 1:+.2%}")
    for draw, row in cold.items():
        if row.get("cold_start_users"):
            print(f"cold start, draw {draw} (10% of items held out, {row['cold_start_users']} "
                  f"test users): HR@10 {row['cold_start_hr_at_10']:.4f} vs random "
                  f"{row['cold_start_random_hr_at_10']:.4f} ({row['cold_start_lift']:.1f}x)")
    return {"rows": rows, "summary": summary, "cold_start": cold, "seeds": list(seeds)}


def tables(results: dict) -> list[dict]:
    rows = [[name, *(r[m] for m in METRICS), r.get("train_seconds"),
             f"{r['transition_weight']} / {r['popularity_weight']}"
             if "transition_weight" in r else ""]
            for name, r in results["rows"].items()]
    rows += [[f"{name}, mean (std)", *(f"{mean:.4f} ({std:.4f})" for mean, std in
                                       (stats[m] for m in METRICS)),
              stats["train_seconds"][0] if "train_seconds" in stats else None, ""]
             for name, stats in results["summary"].items()]
    cold = [[draw, r.get("cold_start_users"), r.get("cold_start_hr_at_10"),
             r.get("cold_start_random_hr_at_10"), r.get("cold_start_lift"),
             _interval(r)] for draw, r in results["cold_start"].items()]
    return [
        table("MovieLens-100K, test split (seeds " + ", ".join(map(str, results["seeds"])) + ")",
              ["model", "NDCG@10", "HR@10", "MRR", "coverage@10", "train s",
               "weights w / p"], rows),
        table("Cold start: 10% of the items held out of training (HR@10 on their test events)",
              ["draw", "test users", "HR@10", "random HR@10", "lift", "lift 95% interval"],
              cold),
    ]


def _interval(row: dict) -> str:
    """The lift's bootstrap interval (runs from before it was measured have none)."""
    if "cold_start_lift_low" not in row:
        return ""
    return f"{row['cold_start_lift_low']:.1f}-{row['cold_start_lift_high']:.1f}"
