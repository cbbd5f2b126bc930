"""Event validation: a Great Expectations 1.x suite run through a checkpoint.

Raw values are parsed into helper columns (parsed time, numeric rating, known
item, duplicate flag); the suite's expectations run over them with
``result_format=COMPLETE`` so every failing row index comes back, and each
failing row is quarantined with every reason that applies. Validation runs
chunk by chunk (bounded memory); a duplicate is an event with a known time whose
key (user, item, type, time, rating) was seen in any earlier row, in this chunk
or before. The
Data Docs site under ``$RECSYS_HOME/data_docs`` is rebuilt once per run.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from feature_repo import event_rules as rule
from feature_repo.event_rules import MALFORMED, EventRules
from feature_repo.schema import EVENT_TYPES, MIN_TIMESTAMP, parse_timestamps
from orchestration import docs_assets

SUITE_NAME = "raw_events_suite"
SITE_NAME = "recsys"
KEY_COLUMNS = ["user_id", "item_id", "event_type", "ts_seconds", "rating_value"]


@dataclass(frozen=True)
class ValidationResult:
    validated: pd.DataFrame  # typed events, in the order read, with their event_key
    quarantined: pd.DataFrame  # raw fields as read + reason + event_key
    reason_counts: dict[str, int]
    data_docs: Path
    success_percent: float


class SeenKeys:
    """64-bit hashes of the event keys of every row validated so far (any chunk, any
    run): what makes a repeated event a duplicate wherever it arrives."""

    def __init__(self, keys: np.ndarray | None = None):
        self._sorted = np.unique(np.asarray([] if keys is None else keys, dtype=np.uint64))

    def __len__(self) -> int:
        return len(self._sorted)

    def contains(self, keys: np.ndarray) -> np.ndarray:
        keys = np.asarray(keys, dtype=np.uint64)
        found = np.zeros(len(keys), dtype=bool)
        if not len(self._sorted):
            return found
        # Searched in key order: each search starts near the last one, in memory
        # already cached, instead of anywhere in tens of millions of keys.
        order = np.argsort(keys, kind="stable")
        wanted = keys[order]
        at = np.searchsorted(self._sorted, wanted).clip(max=len(self._sorted) - 1)
        found[order] = self._sorted[at] == wanted
        return found

    def add(self, keys: np.ndarray) -> None:
        new = np.unique(np.asarray(keys, dtype=np.uint64))
        new = new[~self.contains(new)]
        self._sorted = np.insert(self._sorted, np.searchsorted(self._sorted, new), new)


def event_keys(frame: pd.DataFrame) -> np.ndarray:
    """One 64-bit hash per row of the parsed event key (user, item, type, time, rating)."""
    return pd.util.hash_pandas_object(frame[KEY_COLUMNS], index=False).to_numpy()


def _prepare(raw: pd.DataFrame, catalogue: pd.Index, seen: SeenKeys) -> pd.DataFrame:
    ids = {c: raw[c].str.strip() for c in ("user_id", "item_id", "event_type")}
    rating_text = raw["rating"].astype("string").str.strip().replace("", pd.NA)
    rating_value = pd.to_numeric(rating_text, errors="coerce")
    frame = pd.DataFrame({
        **ids,
        "parse_error": raw["parse_error"],
        "ts_seconds": parse_timestamps(raw["timestamp"]),
        "rating_value": rating_value,
        "rating_is_number": rating_text.isna() | rating_value.notna(),
        # The catalogue's hash table is built once per validator, not per chunk.
        "item_known": catalogue.get_indexer(ids["item_id"]) >= 0,
    })
    keys = event_keys(frame)
    frame["event_key"] = keys
    # Only an event whose time is known can repeat an earlier one.
    frame["is_duplicate"] = frame["ts_seconds"].notna().to_numpy() & (
        pd.Series(keys).duplicated(keep="first").to_numpy() | seen.contains(keys))
    return frame


def _expectations(rules: EventRules, now: float) -> list[tuple[object, str]]:
    """(GX expectation, reason given to a row that fails it): the rules of
    ``feature_repo.event_rules``, in its order."""
    import great_expectations.expectations as gxe

    low, high = rules.rating_range
    out: list[tuple[object, str]] = [
        (gxe.ExpectColumnValuesToBeNull(column="parse_error"), MALFORMED),
    ]
    for column in ("user_id", "item_id", "event_type"):
        out.append((gxe.ExpectColumnValuesToNotBeNull(column=column), rule.missing(column)))
    for column in ("user_id", "item_id"):
        out.append((gxe.ExpectColumnValuesToMatchRegex(column=column, regex=rules.pattern(column)),
                    rule.not_an_id(column)))
    out += [
        (gxe.ExpectColumnValuesToBeInSet(column="event_type", value_set=list(EVENT_TYPES)),
         rule.EVENT_TYPE_UNKNOWN),
        (gxe.ExpectColumnValuesToNotBeNull(column="ts_seconds"), rule.TIME_MISSING),
        (gxe.ExpectColumnValuesToBeBetween(column="ts_seconds", min_value=MIN_TIMESTAMP,
                                           max_value=rules.latest_timestamp(now)),
         rule.TIME_OUT_OF_RANGE),
        (gxe.ExpectColumnValuesToBeInSet(column="rating_is_number", value_set=[True]),
         rule.RATING_NOT_A_NUMBER),
        (gxe.ExpectColumnValuesToBeBetween(column="rating_value", min_value=low, max_value=high),
         rule.rating_outside(low, high)),
        (gxe.ExpectColumnValuesToBeInSet(column="item_known", value_set=[True]),
         rule.ITEM_UNKNOWN),
        (gxe.ExpectColumnValuesToBeInSet(column="is_duplicate", value_set=[False]),
         rule.DUPLICATE),
    ]
    return out


class EventValidator:
    """The suite, its validation definition and checkpoint, set up once; ``validate``
    splits one chunk of raw rows, ``build_docs`` rebuilds the Data Docs site."""

    def __init__(self, catalogue_ids: set[str], rules: EventRules, gx_root: Path,
                 docs_dir: Path, now: float | None = None):
        import great_expectations as gx
        from great_expectations.data_context.types.base import ProgressBarsConfig

        logging.getLogger("great_expectations").setLevel(logging.ERROR)
        self.catalogue = pd.Index(list(set(catalogue_ids)), dtype=object)
        self.docs_index = docs_dir / "index.html"
        now = time.time() if now is None else now
        context = gx.get_context(mode="file", project_root_dir=str(gx_root))
        context.variables.progress_bars = ProgressBarsConfig(globally=False)
        if SITE_NAME not in (context.get_config().data_docs_sites or {}):
            context.add_data_docs_site(site_name=SITE_NAME, site_config={
                "class_name": "SiteBuilder",
                "store_backend": {"class_name": "TupleFilesystemStoreBackend",
                                  "base_directory": str(docs_dir)},
                "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
            })
        datasource = context.data_sources.add_or_update_pandas("events")
        names = [a.name for a in datasource.assets]
        asset = (datasource.get_asset("raw_events") if "raw_events" in names
                 else datasource.add_dataframe_asset("raw_events"))
        batch = next((b for b in asset.batch_definitions if b.name == "whole"), None) \
            or asset.add_batch_definition_whole_dataframe("whole")
        expectations = []
        for expectation, reason in _expectations(rules, now):
            expectation.meta = {"reason": reason}  # results come back in no fixed order
            expectations.append(expectation)
        self.reasons = [e.meta["reason"] for e in expectations]
        suite = context.suites.add_or_update(
            gx.ExpectationSuite(name=SUITE_NAME, expectations=expectations))
        definition = context.validation_definitions.add_or_update(
            gx.ValidationDefinition(name="raw_events_validation", data=batch, suite=suite))
        self.checkpoint = context.checkpoints.add_or_update(gx.Checkpoint(
            name="raw_events_checkpoint", validation_definitions=[definition], actions=[],
            result_format={"result_format": "COMPLETE"}))
        self.context = context

    def build_docs(self) -> Path:
        """Rebuild the site, its pages pointed at local copies of their assets."""
        self.context.build_data_docs(site_names=[SITE_NAME])
        docs_assets.localise(self.docs_index.parent)
        return self.docs_index

    def _failing_rows(self, frame: pd.DataFrame) -> tuple[dict[int, list[str]], float]:
        result = self.checkpoint.run(batch_parameters={"dataframe": frame})
        (validation,) = result.run_results.values()
        order = {reason: k for k, reason in enumerate(self.reasons)}
        reasons: dict[int, list[str]] = {}
        for outcome in validation.results:
            if outcome.success:
                continue
            reason = outcome.expectation_config.meta["reason"]
            if (outcome.exception_info or {}).get("raised_exception"):
                raise RuntimeError(f"Great Expectations could not evaluate '{reason}': "
                                   f"{outcome.exception_info.get('exception_message')}")
            for index in outcome.result.get("unexpected_index_list") or []:
                reasons.setdefault(int(index), []).append(reason)
        for listed in reasons.values():
            listed.sort(key=order.__getitem__)  # the suite's order, whatever GX returned
        return reasons, float(validation.statistics.get("success_percent") or 0.0)

    def validate(self, raw: pd.DataFrame, seen: SeenKeys) -> ValidationResult:
        """Split one chunk of raw rows; every row lands in one of the two outputs.
        The keys of all rows of the chunk are added to ``seen``."""
        if raw.empty:
            raise ValueError("raw_events has no rows: nothing to validate")
        raw = raw.reset_index(drop=True)
        frame = _prepare(raw, self.catalogue, seen)
        reasons, success_percent = self._failing_rows(frame)
        seen.add(frame["event_key"].to_numpy())
        bad = np.zeros(len(raw), dtype=bool)
        bad[list(reasons)] = True
        quarantined = raw[bad].copy()
        # A malformed line says how: "line has 7 fields, expected 5".
        quarantined["reason"] = ["; ".join(raw.at[i, "parse_error"] if r == MALFORMED else r
                                           for r in reasons[i]) for i in np.flatnonzero(bad)]
        quarantined["event_key"] = frame.loc[bad, "event_key"]
        good = frame[~bad]
        validated = pd.DataFrame({
            "user_id": good["user_id"],
            "item_id": good["item_id"],
            "event_type": good["event_type"],
            # Whole microseconds, the offline schema's unit (a float "now" from the
            # service carries sub-microsecond digits).
            "event_timestamp": pd.to_datetime((good["ts_seconds"] * 1e6).round(), unit="us",
                                              utc=True),
            "rating": good["rating_value"].astype(float),
            "source_file": raw.loc[~bad, "source_file"],
            "source_row": raw.loc[~bad, "source_row"].astype("int64"),
            "event_key": good["event_key"],
        })
        counts = Counter(r for rs in reasons.values() for r in rs)
        return ValidationResult(
            validated=validated.reset_index(drop=True),
            quarantined=quarantined.reset_index(drop=True),
            reason_counts=dict(counts.most_common()),
            data_docs=self.docs_index,
            success_percent=success_percent,
        )


def validate_events(raw: pd.DataFrame, catalogue_ids: set[str], rules: EventRules,
                    gx_root: Path, docs_dir: Path, now: float | None = None,
                    ) -> ValidationResult:
    """Validate one in-memory table in one chunk and rebuild the Data Docs."""
    validator = EventValidator(catalogue_ids, rules, gx_root, docs_dir, now)
    result = validator.validate(raw, SeenKeys())
    validator.build_docs()
    return result
