"""Ingest and validate: raw events and the catalogue as read, then Great
Expectations splits every row into validated or quarantined (with a reason)."""


import time

import pandas as pd
from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetExecutionContext,
    AssetOut,
    MaterializeResult,
    MetadataValue,
    Output,
    asset,
    asset_check,
    multi_asset,
)

from feature_repo.schema import EVENT_COLUMNS, PROVENANCE_COLUMNS
from infra.fingerprint import file_sha256
from orchestration.quality import validate_events
from orchestration.resources import RecsysState

RAW_EVENTS = "raw_events.parquet"
ITEMS = "items.parquet"
VALIDATED = "validated_events.parquet"
QUARANTINE = "quarantined_events.parquet"


def read_event_log(state: RecsysState) -> pd.DataFrame:
    """Events accepted by the service (``$RECSYS_HOME/event_log/*.jsonl``), as raw rows."""
    frames = []
    for path in sorted(state.settings().event_log_dir.glob("*.jsonl")):
        frame = pd.read_json(path, lines=True, dtype=False)
        if frame.empty:
            continue
        frame = frame.astype("string").astype(object).where(frame.notna(), None)
        frame["source_file"] = path.name
        frame["source_row"] = range(1, len(frame) + 1)
        frames.append(frame.reindex(columns=list(EVENT_COLUMNS + PROVENANCE_COLUMNS)))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


@asset(group_name="ingest")
def item_catalogue(state: RecsysState) -> MaterializeResult:
    """The item catalogue (id, title, genres, description) from the source."""
    source = state.open_source()
    items = source.items()
    path = state.settings().offline_dir / ITEMS
    path.parent.mkdir(parents=True, exist_ok=True)
    items.to_parquet(path, index=False)
    return MaterializeResult(metadata={
        "row_count": len(items), "source": source.name, "path": MetadataValue.path(str(path)),
    })


@asset(group_name="ingest")
def raw_events(state: RecsysState) -> MaterializeResult:
    """Every behaviour event as read from the source and the service's event log."""
    source = state.open_source()
    frames = [source.events(), read_event_log(state)]
    events = pd.concat([f for f in frames if not f.empty], ignore_index=True)
    if events.empty:
        raise ValueError(f"source {source.directory} has no event rows")
    path = state.settings().offline_dir / RAW_EVENTS
    path.parent.mkdir(parents=True, exist_ok=True)
    events.astype({c: "string" for c in EVENT_COLUMNS}).to_parquet(path, index=False)
    rows = events["source_file"].value_counts().to_dict()
    files = {p.name: {"path": str(p), "sha256": file_sha256(p), "rows": int(rows.get(p.name, 0))}
             for p in source.files}
    return MaterializeResult(metadata={
        "row_count": len(events), "source": source.name,
        "files": MetadataValue.json(files),
        "event_log_rows": int(len(events) - sum(rows.get(p.name, 0) for p in source.files)),
        "path": MetadataValue.path(str(path)),
    })


@multi_asset(
    outs={
        "validated_events": AssetOut(is_required=True, group_name="ingest",
                                     description="Events that passed the GX suite, typed."),
        "quarantined_events": AssetOut(is_required=True, group_name="ingest",
                                       description="Rows that failed, as read, with reasons."),
    },
    deps=["raw_events", "item_catalogue"],
)
def validate_raw_events(context: AssetExecutionContext, state: RecsysState):
    """Validate raw events with Great Expectations; quarantine failing rows with reasons."""
    settings = state.settings()
    raw = pd.read_parquet(settings.offline_dir / RAW_EVENTS).astype(object)
    raw = raw.where(raw.notna(), None)
    items = pd.read_parquet(settings.offline_dir / ITEMS)
    source = state.open_source()
    started = time.perf_counter()
    result = validate_events(raw, set(items["item_id"]), source.rating_range,
                             gx_root=settings.home / "gx", docs_dir=settings.data_docs_dir)
    seconds = time.perf_counter() - started
    result.validated.to_parquet(settings.offline_dir / VALIDATED, index=False)
    settings.quarantine_dir.mkdir(parents=True, exist_ok=True)
    quarantine_path = settings.quarantine_dir / QUARANTINE
    result.quarantined.astype({"reason": "string"}).to_parquet(quarantine_path, index=False)
    docs = MetadataValue.url(result.data_docs.as_uri())
    yield Output(None, output_name="validated_events", metadata={
        "row_count": len(result.validated), "raw_row_count": len(raw),
        "pass_rate": round(len(result.validated) / len(raw), 6),
        "gx_success_percent": result.success_percent, "data_docs": docs,
        "validation_seconds": round(seconds, 2),
    })
    yield Output(None, output_name="quarantined_events", metadata={
        "row_count": len(result.quarantined), "path": MetadataValue.path(str(quarantine_path)),
        "reasons": MetadataValue.json(result.reason_counts), "data_docs": docs,
    })


@asset_check(asset="validated_events", additional_deps=["raw_events", "quarantined_events"],
             blocking=True)
def no_rows_lost(state: RecsysState) -> AssetCheckResult:
    """raw = validated + quarantined: every row read ended up somewhere."""
    offline = state.settings().offline_dir
    raw = pd.read_parquet(offline / RAW_EVENTS, columns=["source_row"]).shape[0]
    validated = pd.read_parquet(offline / VALIDATED, columns=["source_row"]).shape[0]
    quarantined = pd.read_parquet(state.settings().quarantine_dir / QUARANTINE,
                                  columns=["source_row"]).shape[0]
    return AssetCheckResult(
        passed=raw == validated + quarantined, severity=AssetCheckSeverity.ERROR,
        metadata={"raw": raw, "validated": validated, "quarantined": quarantined},
    )
