"""Monitoring: drift of the newest events against the champion's training
reference (an asset with three checks) and the reports index page. The
training/serving skew check is in ``orchestration.checks``."""


from dataclasses import fields

import numpy as np
import pandas as pd
from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    Config,
    MaterializeResult,
    MetadataValue,
    asset,
)

from orchestration import drift, reports
from orchestration.offline import read_validated_events
from orchestration.resources import MlflowResource, RecsysState
from training import registry
from training.model import BehaviourEncoder
from training.sequences import ItemIndex
from training.train import model_scorer

DRIFT_CHECKS = {"numeric_feature_drift": "numeric", "categorical_feature_drift": "categorical",
                "prediction_drift": "prediction"}


class DriftConfig(Config):
    """Window size, users scored for prediction drift, and the WARN / ERROR bounds
    (defaults: ``orchestration.drift.Thresholds``)."""

    window_events: int = 10_000
    scored_users: int = 500
    psi_warn: float = drift.Thresholds.psi_warn
    psi_error: float = drift.Thresholds.psi_error
    ks_warn: float = drift.Thresholds.ks_warn
    ks_error: float = drift.Thresholds.ks_error
    js_warn: float = drift.Thresholds.js_warn
    js_error: float = drift.Thresholds.js_error

    def thresholds(self) -> drift.Thresholds:
        return drift.Thresholds(**{f.name: getattr(self, f.name)
                                   for f in fields(drift.Thresholds)})


def top_scorer(model: BehaviourEncoder, batch: int = 256) -> drift.TopScore:
    """Histories (item ids) -> the model's best score over items not in the history."""
    index, scorer = ItemIndex(model.item_ids), model_scorer(model)

    def top(histories: list[list[str]]) -> np.ndarray:
        out = []
        for start in range(0, len(histories), batch):
            encoded = [index.encode(h) for h in histories[start:start + batch]]
            scores = scorer(encoded)
            scores[:, 0] = -np.inf
            for row, items in enumerate(encoded):
                scores[row, items] = -np.inf
            out.append(scores.max(axis=1))
        return np.concatenate(out) if out else np.zeros(0)
    return top


@asset(group_name="monitoring", deps=["validated_events", "item_catalogue", "champion_model"],
       check_specs=[AssetCheckSpec(name, asset="feature_drift",
                                   description=f"{kind} drift: WARN / ERROR by the thresholds")
                    for name, kind in DRIFT_CHECKS.items()])
def feature_drift(context: AssetExecutionContext, config: DriftConfig, state: RecsysState,
                  mlflow: MlflowResource) -> MaterializeResult:
    """The newest ``window_events`` validated events against the newest events the
    champion was trained on: PSI / KS for numeric features and the champion's
    scores, Jensen-Shannon for items, genres and event types. Report at
    ``$RECSYS_HOME/reports/drift.html``."""
    settings = state.settings()
    uri = mlflow.tracking_uri
    version = registry.alias_version(uri, registry.CHAMPION)
    if version is None:
        raise ValueError("no champion registered: materialise champion_model first")
    run = registry.version_run(uri, version)
    until = run.data.tags.get(registry.TRAINED_UNTIL_TAG)
    trained_until = pd.Timestamp(until) if until else None
    events = read_validated_events(settings, columns=[
        "user_id", "item_id", "event_type", "rating", "event_timestamp"])
    items = pd.read_parquet(settings.items_path, columns=["item_id", "genres"])
    win = drift.windows(events, trained_until, config.window_events)
    top = top_scorer(registry.load_version(uri, version))
    scores = tuple(drift.window_top_scores(w, top, config.scored_users)
                   for w in (win.reference, win.current))
    features = drift.compare(win.reference, win.current, items.set_index("item_id")["genres"],
                             win.train_counts, config.thresholds(), scores)
    overall = drift.worst(f.severity for f in features)
    summary = {"champion": f"behaviour_encoder v{version}",
               "trained on events until": until or "unknown (all events used as reference)",
               "events since training": win.new_events,
               "reference window": _span(win.reference), "current window": _span(win.current),
               "overall": overall}
    path = reports.write(settings.reports_dir, reports.DRIFT, reports.drift_html(features, summary))
    context.log.info(f"drift {overall}: " + ", ".join(f"{f.name} {f.severity}" for f in features))
    return MaterializeResult(check_results=_drift_checks(features, path), metadata={
        "severity": overall, "champion": version, "new_events": win.new_events,
        "report": MetadataValue.url(path.as_uri()),
        "features": MetadataValue.json({f.name: f.severity for f in features})})


def _drift_checks(features: list[drift.FeatureDrift], report) -> list[AssetCheckResult]:
    """One check per kind of feature, at the worst severity among its features."""
    checks = []
    for name, kind in DRIFT_CHECKS.items():
        mine = [f for f in features if f.kind == kind]
        level = drift.worst(f.severity for f in mine)
        checks.append(AssetCheckResult(
            check_name=name, passed=level == drift.OK,
            severity=AssetCheckSeverity.ERROR if level == drift.ERROR else AssetCheckSeverity.WARN,
            metadata={"severity": level, "report": MetadataValue.url(report.as_uri()),
                      **{f.name: MetadataValue.json({"severity": f.severity, **{
                          k: round(v, 4) for k, v in f.statistics.items()}}) for f in mine}}))
    return checks


def _span(window: pd.DataFrame) -> str:
    if window.empty:
        return "empty"
    times = window["event_timestamp"]
    return f"{len(window)} events, {times.min():%Y-%m-%d %H:%M} .. {times.max():%Y-%m-%d %H:%M}"


@asset(group_name="monitoring", deps=["feature_drift", "champion_model"])
def reports_index(state: RecsysState, mlflow: MlflowResource) -> MaterializeResult:
    """``$RECSYS_HOME/reports/index.html``: links to the latest Data Docs, drift and
    skew reports, and the champion's page (metrics and training-curve plots)."""
    settings = state.settings()
    uri = mlflow.tracking_uri
    notes = {}
    version = registry.alias_version(uri, registry.CHAMPION)
    if version is not None:
        run = registry.version_run(uri, version)
        names = [k for k in run.data.metrics if k == "train_loss" or (
            k.startswith("val_") and not k.startswith("val_baseline"))]  # per-epoch curves
        final = {k: v for k, v in run.data.metrics.items() if k not in names}
        reports.write(settings.reports_dir, reports.CHAMPION, reports.champion_html(
            version, final, registry.metric_curves(uri, run.info.run_id, names)))
        notes[reports.CHAMPION] = f"v{version}, test NDCG@10 " \
            f"{run.data.metrics.get('ndcg_at_10', float('nan')):.4f}"
    path = reports.write(settings.reports_dir, reports.INDEX, reports.index_html(
        settings.reports_dir, settings.data_docs_dir / "index.html", notes))
    return MaterializeResult(metadata={"index": MetadataValue.url(path.as_uri()),
                                       "champion": str(version)})
