"""Ingest and validate: raw events and the catalogue as read, then Great
Expectations splits every row into validated or quarantined (with a reason).

Ingestion is incremental: the ingest ledger (``orchestration.ledger``) decides
which bytes of which event file are new; each new batch becomes one parquet
part in ``raw_events``, then one in ``validated_events`` and one in
``$RECSYS_HOME/quarantine``. Everything streams in chunks of ``chunk_rows``."""


import time
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import redis
from dagster import (
    AssetExecutionContext,
    AssetOut,
    MaterializeResult,
    MetadataValue,
    Output,
    asset,
    multi_asset,
)

from infra.fingerprint import file_sha256
from infra.settings import Settings
from orchestration.consume import Drained, OfflineLogConsumer, default_name
from orchestration.ledger import Ledger
from orchestration.offline import (
    QUARANTINE_SCHEMA,
    RAW_SCHEMA,
    VALIDATED_SCHEMA,
    PartWriter,
    read_part_chunks,
    write_part,
)
from orchestration.privacy import IngestGuard, apply_pending
from orchestration.quality import EventValidator, SeenKeys
from orchestration.resources import RecsysState
from orchestration.sources.base import Source, SourceFormatError
from orchestration.sources.event_log import event_log_source


@asset(group_name="ingest")
def item_catalogue(state: RecsysState) -> MaterializeResult:
    """The item catalogue (id, title, genres, description) from the source."""
    source = state.open_source()
    items = source.items()
    if items.empty:
        raise SourceFormatError(f"{source.item_files[0]} has no items: the catalogue is empty")
    path = state.settings().items_path
    path.parent.mkdir(parents=True, exist_ok=True)
    items.to_parquet(path, index=False)
    return MaterializeResult(metadata={
        "row_count": len(items), "source": source.name, "path": MetadataValue.path(str(path)),
    })


@asset(group_name="ingest")
def raw_events(context: AssetExecutionContext, state: RecsysState) -> MaterializeResult:
    """Every behaviour event as read, from the source and the offline event log
    (first drained from the event stream the service writes to): only bytes the
    ingest ledger has not seen are read (a re-run adds nothing)."""
    settings = state.settings()
    source = state.open_source()
    try:
        drained = OfflineLogConsumer(settings, f"{default_name()}-ingest").drain()
        context.log.info(f"event stream: {drained.read} events, {drained.written} written "
                         f"to the offline log, {drained.already_logged} already there")
        applied = apply_pending(settings)
        if applied.total:
            context.log.info(f"deletion requests applied: {applied.total} rows removed")
    except redis.RedisError as error:  # they stay on the stream for the next run
        drained = Drained()
        context.log.warning(f"event stream unavailable ({type(error).__name__}): ingesting "
                            "the offline log as it is")
    guard = IngestGuard(settings, source.id_pattern)
    ledger = Ledger(settings.ingest_ledger)
    new, skipped, hashes = [], {}, {}
    for src in (source, event_log_source(settings.event_log_dir, source)):
        for path in src.event_files:
            plan = ledger.plan(path, src.readable_end(path), src.appendable(path))
            hashes[path] = plan.sha256  # a source file is planned whole: its content hash
            if plan.action == "skip":
                skipped[path.name] = plan.note
                continue
            part = settings.raw_events_dir / ledger.next_part()
            counts: dict[str, int] = {}
            write_part(part, RAW_SCHEMA, guard.chunks(src.read_events(
                path, plan.start_byte, plan.end_byte, plan.first_row, state.chunk_rows),
                from_source=src is source, counts=counts))
            rows, forgotten = counts.get("read", 0), counts.get("forgotten", 0)
            if rows == 0:
                part.unlink()
                if src is source and plan.action == "new":
                    raise SourceFormatError(f"{path} has no event rows (empty or header only)")
                continue
            batch = ledger.add(plan, src.name, rows, forgotten)
            new.append({"batch": batch.batch, "file": path.name, "rows": rows,
                        "forgotten": forgotten, "first_row": batch.first_row,
                        "note": plan.note})
            context.log.info(f"batch {batch.batch}: {rows} rows from {path.name} ({plan.note})")
    if not ledger.batches:
        raise SourceFormatError(f"source {source.directory} has no event rows")
    ledger.save()
    return MaterializeResult(metadata={
        "row_count": ledger.total("rows"), "new_rows": sum(b["rows"] for b in new),
        "source": source.name, "files": MetadataValue.json(_file_lineage(source, ledger, hashes)),
        "new_batches": MetadataValue.json(new), "skipped_files": MetadataValue.json(skipped),
        "event_log_rows": sum(b.rows for b in ledger.batches if b.source == "event_log"),
        "stream_events_drained": drained.written,
        "forgotten_rows": ledger.total("forgotten"), "pseudonymised": settings.pseudonymise,
        "path": MetadataValue.path(str(settings.raw_events_dir)),
    })


def _file_lineage(source: Source, ledger: Ledger, hashes: dict[Path, str]) -> dict:
    """Each source file's path, SHA-256 and rows: event rows ingested from it, or for
    the catalogue file the items read from it (``recsys lineage`` prints these)."""
    rows = Counter()
    for batch in ledger.batches:
        rows[batch.file] += batch.rows
    rows[source.item_files[0].name] = len(source.items())
    return {p.name: {"path": str(p), "sha256": hashes.get(p) or file_sha256(p),
                     "rows": rows[p.name]} for p in source.files}


def _summary(rows: int, validated: int, reasons: dict[str, int]) -> str:
    """The per-run summary shown with the materialisation (Markdown)."""
    rate = validated / rows if rows else 1.0
    lines = [f"**{rows:,} rows** read this run, **{validated:,} validated** "
             f"(pass rate {rate:.2%}), {rows - validated:,} quarantined.", ""]
    if reasons:
        lines += ["| top failure reasons | rows |", "|---|---|"]
        lines += [f"| {reason} | {count:,} |" for reason, count in list(reasons.items())[:10]]
    return "\n".join(lines)


def _earlier_keys(settings: Settings, batches) -> SeenKeys:
    """Event keys of every row of already validated batches (validated and quarantined)."""
    keys = [pd.read_parquet(directory / b.part, columns=["event_key"])["event_key"].to_numpy()
            for b in batches if b.validated is not None
            for directory in (settings.validated_events_dir, settings.quarantine_dir)]
    return SeenKeys(np.concatenate(keys) if keys else None)


def _validate_batch(settings: Settings, batch, validator: EventValidator, seen: SeenKeys,
                    chunk_rows: int) -> Counter:
    """One raw batch, chunk by chunk, into its validated and quarantine parts; the
    batch's counts recorded on it. Returns the rows failing each reason."""
    reasons: Counter = Counter()
    with PartWriter(settings.validated_events_dir / batch.part, VALIDATED_SCHEMA) as good, \
            PartWriter(settings.quarantine_dir / batch.part, QUARANTINE_SCHEMA) as bad:
        for chunk in read_part_chunks(settings.raw_events_dir / batch.part, chunk_rows):
            result = validator.validate(chunk, seen)
            good.write(result.validated)
            bad.write(result.quarantined)
            reasons.update(result.reason_counts)
    batch.validated, batch.quarantined = good.rows, bad.rows
    batch.reasons = dict(reasons.most_common())
    return reasons


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
    """Validate new raw batches with Great Expectations, chunk by chunk; quarantine
    failing rows with every reason; rebuild the Data Docs."""
    settings = state.settings()
    ledger = Ledger(settings.ingest_ledger)
    pending = ledger.pending()
    started = time.perf_counter()
    run_reasons: Counter = Counter()
    run_rows = run_validated = 0
    if pending:
        source = state.open_source()
        catalogue = set(pd.read_parquet(settings.items_path, columns=["item_id"])
                        ["item_id"])
        validator = EventValidator(catalogue, source.rules(settings.future_tolerance_s,
                                                           settings.pseudonymise),
                                   settings.gx_dir, settings.data_docs_dir)
        seen = _earlier_keys(settings, ledger.batches)
        for batch in pending:
            batch_reasons = _validate_batch(settings, batch, validator, seen, state.chunk_rows)
            batch.validation_run = context.run_id
            run_reasons.update(batch_reasons)
            run_rows += batch.rows
            run_validated += batch.validated
            context.log.info(f"batch {batch.batch}: {batch.validated} validated, "
                             f"{batch.quarantined} quarantined")
        validator.build_docs()
        ledger.save()
    seconds = time.perf_counter() - started
    total_rows, total_validated = ledger.total("rows"), ledger.total("validated")
    docs = MetadataValue.url((settings.data_docs_dir / "index.html").as_uri())
    reasons = dict(run_reasons.most_common())
    yield Output(None, output_name="validated_events", metadata={
        "row_count": total_validated, "raw_row_count": total_rows,
        "pass_rate": round(total_validated / total_rows, 6) if total_rows else 1.0,
        "run_rows": run_rows, "run_validated": run_validated,
        "run_pass_rate": round(run_validated / run_rows, 6) if run_rows else 1.0,
        "summary": MetadataValue.md(_summary(run_rows, run_validated, reasons)),
        "data_docs": docs, "validation_seconds": round(seconds, 2),
        "rows_per_second": round(run_rows / seconds) if run_rows else 0,
        "path": MetadataValue.path(str(settings.validated_events_dir)),
    })
    yield Output(None, output_name="quarantined_events", metadata={
        "row_count": ledger.total("quarantined"),
        "path": MetadataValue.path(str(settings.quarantine_dir)),
        "reasons": MetadataValue.json(ledger.reason_totals()),
        "run_reasons": MetadataValue.json(reasons), "data_docs": docs,
    })
