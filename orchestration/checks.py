"""Every asset check of the pipeline, by the asset it guards: the blocking
``no_rows_lost`` and the suite's WARN check on ``validated_events``, the
training/serving skew on ``online_user_features``, and the blocking promotion
gate on ``behaviour_encoder_version``. (The three drift checks are declared
with ``feature_drift``, which computes them in one pass.)"""

from collections import Counter

import numpy as np
import pandas as pd
from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetCheckSeverity,
    Config,
    MetadataValue,
    asset_check,
)

from feature_repo.data_sources import USER_RECENT_ITEMS_FILE
from feature_repo.feature_views import USER_PROFILE, USER_RECENT_ITEMS
from feature_repo.skew import compare_online_offline
from orchestration import reports
from orchestration.ledger import Ledger
from orchestration.offline import part_rows, read_validated_events
from orchestration.resources import FeatureStoreResource, MlflowResource, RecsysState
from training import registry
from training.evaluate import evaluate, evaluated_users
from training.sequences import ItemIndex, evaluation_split
from training.train import model_scorer


@asset_check(asset="validated_events", additional_deps=["raw_events", "quarantined_events"],
             blocking=True)
def no_rows_lost(state: RecsysState) -> AssetCheckResult:
    """rows read = validated + quarantined + forgotten (rows of users forgotten at
    their request), for every batch and in total: every row read ended up somewhere."""
    settings = state.settings()
    raw = part_rows(settings.raw_events_dir)
    validated = part_rows(settings.validated_events_dir)
    quarantined = part_rows(settings.quarantine_dir)
    ledger = Ledger(settings.ingest_ledger)
    unbalanced = [b.batch for b in ledger.batches if b.validated is None
                  or b.rows != b.validated + b.quarantined + b.forgotten]
    forgotten = ledger.total("forgotten")
    return AssetCheckResult(
        passed=(raw == validated + quarantined and raw + forgotten == ledger.total("rows")
                and not unbalanced),
        severity=AssetCheckSeverity.ERROR,
        metadata={"raw": raw, "validated": validated, "quarantined": quarantined,
                  "forgotten": forgotten, "ledger_rows": ledger.total("rows"),
                  "unbalanced_batches": str(unbalanced)},
    )


class SuiteThresholds(Config):
    """The share of rows a run may quarantine before the suite's check warns."""

    max_quarantine_rate: float = 0.05


@asset_check(asset="validated_events", additional_deps=["quarantined_events"])
def raw_events_suite(config: SuiteThresholds, state: RecsysState) -> AssetCheckResult:
    """The Great Expectations suite's outcome as a Dagster check (WARN): rows failing
    each expectation in the batches the latest validation run read, and whether the share
    quarantined stays under ``max_quarantine_rate``. Failing rows are quarantined
    either way; this says when a source has started sending garbage."""
    settings = state.settings()
    ledger = Ledger(settings.ingest_ledger)
    validated = [b for b in ledger.batches if b.validated is not None]
    latest = validated[-1].validation_run if validated else None
    batches = [b for b in validated if b.validation_run == latest]
    rows = sum(b.rows for b in batches)
    quarantined = sum(b.quarantined for b in batches)
    reasons: Counter = Counter()
    for batch in batches:
        reasons.update(batch.reasons or {})
    rate = quarantined / rows if rows else 0.0
    return AssetCheckResult(
        passed=rate <= config.max_quarantine_rate, severity=AssetCheckSeverity.WARN,
        metadata={"rows": rows, "quarantined": quarantined, "quarantine_rate": round(rate, 6),
                  "max_quarantine_rate": config.max_quarantine_rate,
                  "failing_rows_per_expectation": MetadataValue.json(dict(reasons.most_common())),
                  "data_docs": MetadataValue.url(
                      (settings.data_docs_dir / "index.html").as_uri())},
    )


class SkewSample(Config):
    """How many users to compare (a seeded random sample)."""

    users: int = 200
    seed: int = 0


@asset_check(asset="online_user_features", additional_deps=["user_recent_items_offline"])
def training_serving_skew(config: SkewSample, state: RecsysState,
                          feature_store: FeatureStoreResource) -> AssetCheckResult:
    """Sampled users' user_recent_items and user_profile, online vs offline at the
    same instant: every feature must match (0 after a clean materialisation)."""
    settings = state.settings()
    table = pd.read_parquet(settings.offline_dir / USER_RECENT_ITEMS_FILE,
                            columns=["user_id", "event_timestamp"])
    latest = table.groupby("user_id")["event_timestamp"].max()
    rng = np.random.default_rng(config.seed)
    users = sorted(rng.choice(latest.index.to_numpy(), size=min(config.users, len(latest)),
                              replace=False).tolist())
    store = feature_store.store()
    report = compare_online_offline(store, [USER_RECENT_ITEMS, USER_PROFILE], users, latest)
    features = list(report.mismatches)
    path = reports.write(settings.reports_dir, reports.SKEW, reports.skew_html(report, features))
    mismatching = {f: users for f, users in report.mismatches.items() if users}
    return AssetCheckResult(
        passed=report.compared > 0 and not mismatching, severity=AssetCheckSeverity.ERROR,
        metadata={"users_compared": report.compared,
                  "fresher_online": len(report.fresher_online),
                  "mismatch_rate": MetadataValue.json({f: report.rate(f) for f in features}),
                  "mismatching_users": MetadataValue.json(
                      {f: u[:20] for f, u in mismatching.items()}),
                  "report": MetadataValue.url(path.as_uri())})


class Promotion(Config):
    """How much better (validation NDCG@10) a challenger must be to become champion."""

    min_margin: float = 0.0


@asset_check(asset="behaviour_encoder_version", blocking=True)
def challenger_beats_champion(context: AssetCheckExecutionContext, config: Promotion,
                              state: RecsysState, mlflow: MlflowResource) -> AssetCheckResult:
    """Blocking: the challenger's validation NDCG@10 must beat the champion's, both
    measured now on the same validation data, by more than ``min_margin``; when it
    does not, ``champion_model`` does not run and the champion stays."""
    settings = state.settings()
    items = len(pd.read_parquet(settings.items_path, columns=["item_id"]))
    split = evaluation_split(read_validated_events(settings),
                             evaluated_users(settings.evaluation_users, items))
    uri = mlflow.tracking_uri
    challenger = registry.alias_version(uri, registry.CHALLENGER)
    champion = registry.alias_version(uri, registry.CHAMPION)
    if challenger is None:
        return AssetCheckResult(passed=False, severity=AssetCheckSeverity.ERROR,
                                metadata={"reason": "no challenger registered"})
    scores = {}
    for version in {challenger, champion} - {None}:
        model = registry.load_version(uri, version)
        scores[version] = evaluate(model_scorer(model), split, ItemIndex(model.item_ids),
                                   "validation")["ndcg_at_10"]
    decision = registry.decide_promotion(challenger, scores[challenger], champion,
                                         scores.get(champion), config.min_margin)
    context.log.info(f"promotion check: {decision}")
    return AssetCheckResult(
        # Already champion: nothing to promote, nothing to block.
        passed=decision.promote or challenger == champion,
        severity=AssetCheckSeverity.ERROR,
        metadata={"challenger": challenger, "champion": str(champion),
                  "reason": decision.reason, "min_margin": config.min_margin,
                  "validation_ndcg_at_10": MetadataValue.json(scores)})
