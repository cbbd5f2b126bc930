"""The ingest ledger: which bytes of which event files have been ingested.

Every ingested range of an event file is a *batch* with its own raw, validated
and quarantine part files. The ledger is what makes ingestion incremental and
idempotent, whoever triggers it (the new-files sensor, a schedule, a person):

- a file whose content (SHA-256) equals an ingested batch's is skipped, under
  any name: a re-delivered file is recognised;
- a file that grew since its last batch, with the earlier bytes unchanged (an
  append-only log), is read from where the last batch ended;
- any other file is read whole as a new batch (a rewritten file included: the
  events it repeats are quarantined as duplicates, so nothing is counted twice).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from infra.files import atomic_write_text
from infra.fingerprint import file_sha256


def part_name(number: int) -> str:
    """File name of a batch's parquet part in each of the event tables."""
    return f"batch-{number:06d}.parquet"


@dataclass
class Batch:
    batch: int
    source: str  # adapter name
    file: str  # file name inside the source directory
    sha256: str  # of the file's bytes [0, end_byte) when the batch was read
    start_byte: int
    end_byte: int
    first_row: int  # source_row of the batch's first row (1-based data rows)
    rows: int  # rows read from the file
    ingested_at: float
    # Rows of forgotten users: left out at ingest, or removed later by a deletion
    # (rows = validated + quarantined + forgotten once validated).
    forgotten: int = 0
    validated: int | None = None  # None until validation has run on the batch
    quarantined: int | None = None
    reasons: dict[str, int] | None = None  # quarantined rows per reason
    validation_run: str | None = None  # the Dagster run that validated the batch

    @property
    def part(self) -> str:
        return part_name(self.batch)


@dataclass(frozen=True)
class Plan:
    path: Path
    action: str  # "skip", "new" or "append"
    start_byte: int
    end_byte: int
    first_row: int
    sha256: str
    note: str


class Ledger:
    def __init__(self, path: Path):
        self.path = path
        self.batches: list[Batch] = []
        if path.exists():
            self.batches = [Batch(**b) for b in json.loads(path.read_text())["batches"]]

    def save(self) -> None:
        """Atomic: a crash leaves the previous ledger, never half of one."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.path, json.dumps({"batches": [asdict(b) for b in self.batches]},
                                                indent=1))

    def plan(self, path: Path, end_byte: int, appendable: bool) -> Plan:
        """What to read of ``path`` (its bytes up to ``end_byte``)."""
        sha = file_sha256(path, end_byte)
        same = next((b for b in self.batches if b.sha256 == sha), None)
        if same is not None:
            return Plan(path, "skip", 0, end_byte, 0, sha,
                        f"same content as {same.file} (batch {same.batch}): already ingested")
        last = next((b for b in reversed(self.batches) if b.file == path.name), None)
        if (last is not None and appendable and end_byte > last.end_byte
                and file_sha256(path, last.end_byte) == last.sha256):
            return Plan(path, "append", last.end_byte, end_byte, last.first_row + last.rows,
                        sha, f"grew since batch {last.batch}: reading the new bytes only")
        note = "new file" if last is None else \
            f"content changed since batch {last.batch}: read again whole"
        return Plan(path, "new", 0, end_byte, 1, sha, note)

    def add(self, plan: Plan, source: str, rows: int, forgotten: int = 0) -> Batch:
        batch = Batch(batch=len(self.batches) + 1, source=source, file=plan.path.name,
                      sha256=plan.sha256, start_byte=plan.start_byte, end_byte=plan.end_byte,
                      first_row=plan.first_row, rows=rows, ingested_at=time.time(),
                      forgotten=forgotten)
        self.batches.append(batch)
        return batch

    def next_part(self) -> str:
        return part_name(len(self.batches) + 1)

    def pending(self) -> list[Batch]:
        """Batches read but not validated yet."""
        return [b for b in self.batches if b.validated is None]

    def total(self, field: str) -> int:
        return sum(getattr(b, field) or 0 for b in self.batches)

    def reason_totals(self) -> dict[str, int]:
        totals: dict[str, int] = {}
        for batch in self.batches:
            for reason, count in (batch.reasons or {}).items():
                totals[reason] = totals.get(reason, 0) + count
        return dict(sorted(totals.items(), key=lambda kv: -kv[1]))
