"""Event validation: a Great Expectations 1.x suite run through a checkpoint.

Raw values are parsed into helper columns (parsed time, numeric rating, known
item, duplicate flag); the suite's expectations run over them with
``result_format=COMPLETE`` so every failing row index comes back, and each
failing row is quarantined with every reason that applies. The checkpoint also
rebuilds the Data Docs site under ``$RECSYS_HOME/data_docs``.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from feature_repo.schema import (
    EVENT_TYPES,
    FUTURE_TOLERANCE_S,
    ID_PATTERN,
    MIN_TIMESTAMP,
    parse_timestamps,
)

SUITE_NAME = "raw_events_suite"
MALFORMED = "malformed line"
SITE_NAME = "recsys"


@dataclass(frozen=True)
class ValidationResult:
    validated: pd.DataFrame  # typed events, stable time order
    quarantined: pd.DataFrame  # raw fields as read + reason
    reason_counts: dict[str, int]
    data_docs: Path
    success_percent: float


def _prepare(raw: pd.DataFrame, catalogue_ids: set[str], rating_range: tuple[float, float],
             now: float, future_tolerance_s: float) -> pd.DataFrame:
    frame = raw[["user_id", "item_id", "event_type"]].apply(lambda s: s.str.strip())
    frame["parse_error"] = raw["parse_error"]
    frame["ts_seconds"] = parse_timestamps(raw["timestamp"])
    rating_text = raw["rating"].astype("string").str.strip().replace("", pd.NA)
    frame["rating_value"] = pd.to_numeric(rating_text, errors="coerce")
    frame["rating_is_number"] = rating_text.isna() | frame["rating_value"].notna()
    frame["item_known"] = frame["item_id"].isin(catalogue_ids)
    keys = ["user_id", "item_id", "event_type", "ts_seconds", "rating_value"]
    frame["is_duplicate"] = frame.duplicated(subset=keys, keep="first")
    frame.attrs.update(rating_range=rating_range, max_ts=now + future_tolerance_s)
    return frame


def _expectations(frame: pd.DataFrame) -> list[tuple[object, str]]:
    """(GX expectation, reason given to a row that fails it)."""
    import great_expectations.expectations as gxe

    low, high = frame.attrs["rating_range"]
    max_ts = frame.attrs["max_ts"]
    out: list[tuple[object, str]] = [
        (gxe.ExpectColumnValuesToBeNull(column="parse_error"), MALFORMED),
    ]
    for column in ("user_id", "item_id", "event_type"):
        out.append((gxe.ExpectColumnValuesToNotBeNull(column=column), f"{column} is missing"))
    for column in ("user_id", "item_id"):
        out.append((gxe.ExpectColumnValuesToMatchRegex(column=column, regex=ID_PATTERN),
                    f"{column} is not a valid id"))
    out += [
        (gxe.ExpectColumnValuesToBeInSet(column="event_type", value_set=list(EVENT_TYPES)),
         "event_type is not one of " + "/".join(EVENT_TYPES)),
        (gxe.ExpectColumnValuesToNotBeNull(column="ts_seconds"),
         "timestamp is missing or unparseable"),
        (gxe.ExpectColumnValuesToBeBetween(column="ts_seconds", min_value=MIN_TIMESTAMP,
                                           max_value=max_ts),
         "timestamp before 1990 or in the future"),
        (gxe.ExpectColumnValuesToBeInSet(column="rating_is_number", value_set=[True]),
         "rating is not a number"),
        (gxe.ExpectColumnValuesToBeBetween(column="rating_value", min_value=low, max_value=high),
         f"rating outside {low:g}..{high:g}"),
        (gxe.ExpectColumnValuesToBeInSet(column="item_known", value_set=[True]),
         "item_id not in the catalogue"),
        (gxe.ExpectColumnValuesToBeInSet(column="is_duplicate", value_set=[False]),
         "duplicate of an earlier event"),
    ]
    return out


def _run_checkpoint(frame: pd.DataFrame, gx_root: Path, docs_dir: Path):
    """Run the suite; returns the validation result and the reasons in suite order."""
    import great_expectations as gx

    logging.getLogger("great_expectations").setLevel(logging.ERROR)
    from great_expectations.data_context.types.base import ProgressBarsConfig

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
    for expectation, reason in _expectations(frame):
        expectation.meta = {"reason": reason}  # results come back in no fixed order
        expectations.append(expectation)
    suite = gx.ExpectationSuite(name=SUITE_NAME, expectations=expectations)
    suite = context.suites.add_or_update(suite)
    definition = context.validation_definitions.add_or_update(
        gx.ValidationDefinition(name="raw_events_validation", data=batch, suite=suite))
    checkpoint = context.checkpoints.add_or_update(gx.Checkpoint(
        name="raw_events_checkpoint", validation_definitions=[definition],
        actions=[gx.checkpoint.UpdateDataDocsAction(name="data_docs", site_names=[SITE_NAME])],
        result_format={"result_format": "COMPLETE"}))
    result = checkpoint.run(batch_parameters={"dataframe": frame})
    (validation,) = result.run_results.values()
    return validation, [e.meta["reason"] for e in expectations]


def validate_events(raw: pd.DataFrame, catalogue_ids: set[str],
                    rating_range: tuple[float, float], gx_root: Path, docs_dir: Path,
                    future_tolerance_s: float = FUTURE_TOLERANCE_S, now: float | None = None,
                    ) -> ValidationResult:
    """Split raw events into validated and quarantined rows; every row lands in one."""
    if raw.empty:
        raise ValueError("raw_events has no rows: nothing to validate")
    raw = raw.reset_index(drop=True)
    now = time.time() if now is None else now
    frame = _prepare(raw, catalogue_ids, rating_range, now, future_tolerance_s)
    validation, suite_reasons = _run_checkpoint(frame, gx_root, docs_dir)
    order = {reason: k for k, reason in enumerate(suite_reasons)}
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
    bad = np.zeros(len(raw), dtype=bool)
    bad[list(reasons)] = True
    quarantined = raw[bad].copy()
    # A malformed line says how: "line has 7 fields, expected 5".
    quarantined["reason"] = ["; ".join(raw.at[i, "parse_error"] if r == MALFORMED else r
                                       for r in reasons[i]) for i in np.flatnonzero(bad)]
    good = frame[~bad]
    validated = pd.DataFrame({
        "user_id": good["user_id"],
        "item_id": good["item_id"],
        "event_type": good["event_type"],
        "event_timestamp": pd.to_datetime(good["ts_seconds"] * 1e6, unit="us", utc=True),
        "rating": good["rating_value"].astype(float),
        "source_file": raw.loc[~bad, "source_file"],
        "source_row": raw.loc[~bad, "source_row"].astype("int64"),
    })
    validated = validated.sort_values("event_timestamp", kind="stable").reset_index(drop=True)
    counts = Counter(r for rs in reasons.values() for r in rs)
    return ValidationResult(
        validated=validated,
        quarantined=quarantined.reset_index(drop=True),
        reason_counts=dict(counts.most_common()),
        data_docs=docs_dir / "index.html",
        success_percent=float(validation.statistics.get("success_percent") or 0.0),
    )
