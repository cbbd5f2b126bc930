"""Data benchmark, one source per process (so peak RSS is this run's alone):
ingest + validate through the real Dagster assets into a fresh RECSYS_HOME, then
print one JSON line: rows, validated, quarantined by reason, seconds, rows/s and
peak RSS.

    python -m tests.bench_data SOURCE_DIR HOME_DIR
"""

import json
import resource
import sys
import time
from pathlib import Path


def run(source: Path, home: Path) -> dict:
    from dagster import materialize

    from orchestration.assets.ingest import (
        item_catalogue,
        no_rows_lost,
        raw_events,
        validate_raw_events,
    )
    from orchestration.resources import RecsysState

    started = time.perf_counter()
    result = materialize([item_catalogue, raw_events, validate_raw_events, no_rows_lost],
                         resources={"state": RecsysState(home=str(home), source=str(source))})
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


if __name__ == "__main__":
    print(json.dumps(run(Path(sys.argv[1]), Path(sys.argv[2]))))
