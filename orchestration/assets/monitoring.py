"""Monitoring checks: training/serving skew between Redis and the offline store."""


import html

import numpy as np
import pandas as pd
from dagster import AssetCheckResult, AssetCheckSeverity, Config, MetadataValue, asset_check

from feature_repo.data_sources import USER_RECENT_ITEMS_FILE
from feature_repo.feature_views import USER_PROFILE, USER_RECENT_ITEMS
from feature_repo.skew import SkewReport, compare_online_offline
from orchestration.resources import FeatureStoreResource, RecsysState

SKEW_REPORT = "skew.html"


class SkewSample(Config):
    """How many users to compare (a seeded random sample)."""

    users: int = 200
    seed: int = 0


def _skew_html(report: SkewReport, features: list[str]) -> str:
    rows = "".join(
        f"<tr><td>{html.escape(f)}</td><td>{len(report.mismatches.get(f, []))}</td>"
        f"<td>{report.rate(f):.2%}</td>"
        f"<td>{html.escape(', '.join(report.mismatches.get(f, [])[:10]))}</td></tr>"
        for f in features)
    return f"""<!doctype html><html><head><meta charset="utf-8">
<title>Training/serving skew</title>
<style>body{{font-family:sans-serif;margin:2em}}td,th{{border:1px solid #ccc;padding:4px 8px}}
table{{border-collapse:collapse}}</style></head><body>
<h1>Training/serving skew</h1>
<p>{report.users} users sampled; {report.compared} compared online (Redis) against offline
(point in time, as of each user's newest offline row); {len(report.fresher_online)} had
newer real-time events online and were not compared.</p>
<table><tr><th>feature</th><th>mismatching users</th><th>rate</th><th>examples</th></tr>
{rows}</table></body></html>"""


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
    settings.reports_dir.mkdir(parents=True, exist_ok=True)
    path = settings.reports_dir / SKEW_REPORT
    path.write_text(_skew_html(report, features))
    mismatching = {f: users for f, users in report.mismatches.items() if users}
    return AssetCheckResult(
        passed=report.compared > 0 and not mismatching, severity=AssetCheckSeverity.ERROR,
        metadata={"users_compared": report.compared,
                  "fresher_online": len(report.fresher_online),
                  "mismatch_rate": MetadataValue.json({f: report.rate(f) for f in features}),
                  "mismatching_users": MetadataValue.json(
                      {f: u[:20] for f, u in mismatching.items()}),
                  "report": MetadataValue.url(path.as_uri())})
