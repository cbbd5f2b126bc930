"""Data benchmark: ingest + validate through the real Dagster assets into a fresh
RECSYS_HOME, one source per process (so peak RSS is that run's alone), for
MovieLens-100K and a generated canonical file of ``BENCH_DATA_EVENTS`` events
(default 10 million, 0.1% deliberately broken rows).

    python -m bench.data SOURCE_DIR HOME_DIR   # one source, prints one JSON line
"""

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.report import table

ML100K = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ml-100k"


def run(source: Path, home: Path) -> dict:
    from dagster import materialize

    from infra.settings import Settings
    from orchestration.assets.ingest import item_catalogue, raw_events, validate_raw_events
    from orchestration.checks import no_rows_lost
    from orchestration.resources import RecsysState

    started = time.perf_counter()
    result = materialize([item_catalogue, raw_events, validate_raw_events, no_rows_lost],
                         resources={"state": RecsysState.of(Settings(home=home, source=source))})
    seconds = time.perf_counter() - started
    meta = {}
    for event in result.get_asset_materialization_events():
        materialization = event.step_materialization_data.materialization
        meta[materialization.asset_key.to_user_string()] = {
            k: v.value for k, v in materialization.metadata.items()}
    (check,) = result.get_asset_check_evaluations()
    rows = meta["raw_events"]["row_count"]
    return {
        "source": str(source), "rows": rows,
        "validated": meta["validated_events"]["row_count"],
        "quarantined": meta["quarantined_events"]["row_count"],
        "reasons": meta["quarantined_events"]["reasons"],
        "no_rows_lost": check.passed,
        "seconds": round(seconds, 1), "rows_per_s": round(rows / seconds),
        "validation_seconds": meta["validated_events"]["validation_seconds"],
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }


def measure(source: Path, home: Path) -> dict:
    done = subprocess.run([sys.executable, "-m", "bench.data", str(source), str(home)],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"data benchmark on {source} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def benchmark() -> dict[str, dict]:
    from orchestration.sources.generator import GeneratorConfig, generate, write_bulk_events

    events = int(os.environ.get("BENCH_DATA_EVENTS", "10000000"))
    work = Path(tempfile.mkdtemp(prefix="recsys_bench_data_"))
    results = {}
    ml100k = Path(os.environ.get("BENCH_ML100K", ML100K))
    if (ml100k / "u.data").exists():
        results["ml-100k"] = measure(ml100k, work / "home-ml100k")
    else:
        print(f"skipping MovieLens-100K: {ml100k} not found (set BENCH_ML100K)")
    generated = work / "generated"
    generated.mkdir()
    items = generate(GeneratorConfig(users=10, items=1000, events=50)).items
    items.to_csv(generated / "items.csv", index=False)
    started = time.perf_counter()
    bad = write_bulk_events(generated / "events.csv", events, items["item_id"].tolist())
    print(f"generated {events:,} events ({bad:,} deliberately broken) "
          f"in {time.perf_counter() - started:.0f} s")
    results[f"generated-{events // 1_000_000}M"] = measure(generated, work / "home-generated")
    print(f"\n{'source':<16} {'rows':>11} {'validated':>11} {'quarantined':>11} "
          f"{'seconds':>8} {'rows/s':>8} {'peak RSS MB':>11}")
    for name, row in results.items():
        print(f"{name:<16} {row['rows']:>11,} {row['validated']:>11,} {row['quarantined']:>11,} "
              f"{row['seconds']:>8.1f} {row['rows_per_s']:>8,} {row['peak_rss_mb']:>11,}")
        for reason, count in row["reasons"].items():
            print(f"{'':<16}   quarantined: {reason}: {count:,}")
    return results


def tables(results: dict) -> list[dict]:
    """Ingest + validate through the real Dagster assets, one process per source."""
    return [table("Ingest and validate (Dagster assets, Great Expectations)",
                  ["source", "rows", "validated", "quarantined", "seconds", "rows/s",
                   "peak RSS MB"],
                  [[name, r["rows"], r["validated"], r["quarantined"], r["seconds"],
                    r["rows_per_s"], r["peak_rss_mb"]] for name, r in results.items()])]


if __name__ == "__main__":
    print(json.dumps(run(Path(sys.argv[1]), Path(sys.argv[2]))))
