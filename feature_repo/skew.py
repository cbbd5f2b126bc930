"""Training/serving skew: the same users' features read online (Redis) and offline
(point in time, as of the user's newest offline row, which is what batch
materialisation wrote online), compared value by value. A user whose online row
is newer than anything offline has had events since the last batch (real time,
through ``/events``): counted as fresher, not as a mismatch."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pandas as pd
from feast import FeatureStore


@dataclass
class SkewReport:
    users: int = 0
    compared: int = 0
    fresher_online: list[str] = field(default_factory=list)
    mismatches: dict[str, list[str]] = field(default_factory=dict)  # feature -> users

    def rate(self, feature: str) -> float:
        return len(self.mismatches.get(feature, [])) / self.compared if self.compared else 0.0


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _same(a, b) -> bool:
    # Feast stores a NaN as "no value" online: None and NaN both mean missing.
    if _missing(a) or _missing(b):
        return _missing(a) and _missing(b)
    if hasattr(a, "__len__") and not isinstance(a, str):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) or isinstance(b, float):
        return math.isclose(float(a), float(b), rel_tol=1e-6, abs_tol=1e-9)
    return a == b


def _plain(value):
    """numpy scalars and arrays -> Python values, for comparison and reports."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def compare_online_offline(store: FeatureStore, views: list[str], users: list[str],
                           latest_offline: pd.Series) -> SkewReport:
    """``views``: user views whose features are compared; ``latest_offline``: each
    user's newest offline feature time (for telling fresher online rows apart)."""
    refs = [f"{v}:{f.name}" for v in views for f in store.get_feature_view(v).features]
    online = store.get_online_features(features=refs, entity_rows=[{"user_id": u} for u in users],
                                       ).to_dict(include_event_timestamps=True)
    report = SkewReport(users=len(users))
    names = [r.split(":", 1)[1] for r in refs]
    rows = []
    for k, user in enumerate(users):
        stamps = [online.get(f"{n}__ts", [None] * len(users))[k] for n in names]
        seconds = max((s for s in stamps if s), default=0)
        # Feast keeps whole seconds online; the offline row is the user's newest.
        if seconds > int(latest_offline[user].timestamp()):
            report.fresher_online.append(user)
        else:
            rows.append(k)
    if not rows:
        return report
    entity = pd.DataFrame({"user_id": [users[k] for k in rows],
                           "event_timestamp": [latest_offline[users[k]] for k in rows]})
    offline = store.get_historical_features(entity_df=entity, features=refs).to_df()
    offline = offline.set_index("user_id")
    report.compared = len(rows)
    for name in names:
        report.mismatches[name] = [
            users[k] for k in rows
            if not _same(_plain(online[name][k]), _plain(offline.at[users[k], name]))]
    return report
