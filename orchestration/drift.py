"""Drift: the most recent window of validated events against the champion's
training reference (the newest events the champion was trained on).

Statistics come from scipy: Kolmogorov-Smirnov (``scipy.stats.ks_2samp``) and the
Jensen-Shannon distance (``scipy.spatial.distance.jensenshannon``, base 2, so 0..1).
The population stability index is the textbook sum over reference-quantile bins,
sum((cur - ref) * ln(cur / ref)), on top of ``numpy.histogram``. PSI and JS are
judged on their excess over a permutation null (random splits of the pooled
samples: JS's mean, PSI's 95th percentile), far from 0 for small samples or many
categories.

Features, per event of a window:
- numeric (PSI and KS): ``rating``; ``item_train_popularity``, log(1 + the item's
  count in the champion's training data): how mainstream what people consume is;
- categorical (JS, judged on its excess over a permutation null): ``item_id``
  (the item popularity distribution), ``genre`` (each genre of the event's item)
  and ``event_type``;
- prediction (PSI and KS): ``champion_top_score``, the champion's best score for
  each sampled user of the window, given the user's events in that window.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy.spatial.distance import jensenshannon
from scipy.stats import ks_2samp

from feature_repo.schema import GENRE_SEPARATOR

OK, WARN, ERROR = "OK", "WARN", "ERROR"
LEVELS = (OK, WARN, ERROR)
PSI_BINS = 10
PSI_FLOOR = 1e-4  # share given to an empty bin, so the logarithm stays finite
NULL_ROUNDS = 5  # permutations for the Jensen-Shannon null distance
PSI_NULL_ROUNDS = 100  # permutations for PSI's null (its 95th percentile)
KS_ALPHA = 0.01  # a KS distance counts only when this unlikely under no change


@dataclass(frozen=True)
class Thresholds:
    """A statistic at or above ``*_warn`` is WARN, at or above ``*_error`` ERROR.
    PSI 0.1 / 0.25 are the customary bounds; KS and JS are distances in 0..1.
    PSI and JS are compared on their excess over a permutation null, KS only when
    its p-value is below ``KS_ALPHA``."""

    psi_warn: float = 0.1
    psi_error: float = 0.25
    ks_warn: float = 0.1
    ks_error: float = 0.2
    js_warn: float = 0.1
    js_error: float = 0.2


@dataclass
class FeatureDrift:
    name: str
    kind: str  # "numeric", "categorical" or "prediction"
    statistics: dict[str, float]
    severity: str
    reference: pd.Series = field(repr=False)
    current: pd.Series = field(repr=False)


def worst(severities) -> str:
    return max(severities, key=LEVELS.index, default=OK)


def _level(value: float, warn: float, error: float) -> str:
    return ERROR if value >= error else WARN if value >= warn else OK


def psi(reference: np.ndarray, current: np.ndarray, bins: int = PSI_BINS) -> float:
    """Population stability index over the reference's quantile bins (ties merged)."""
    edges = np.unique(np.quantile(reference, np.linspace(0, 1, bins + 1)))
    if len(edges) < 2:  # a constant reference: one bin each side of it
        edges = np.array([edges[0] - 0.5, edges[0] + 0.5])
    edges[0], edges[-1] = -np.inf, np.inf
    ref = np.histogram(reference, edges)[0] / len(reference)
    cur = np.histogram(current, edges)[0] / len(current)
    ref, cur = np.maximum(ref, PSI_FLOOR), np.maximum(cur, PSI_FLOOR)
    return float(np.sum((cur - ref) * np.log(cur / ref)))


def permutation_null(statistic: Callable[[np.ndarray, np.ndarray], float],
                     reference: np.ndarray, current: np.ndarray,
                     rounds: int = NULL_ROUNDS, seed: int = 0) -> np.ndarray:
    """The statistic between random splits of the pooled samples (same sizes),
    ``rounds`` times: its values when nothing changed, at these sample sizes."""
    pooled = np.concatenate([reference, current])
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(rounds):
        shuffled = rng.permutation(pooled)
        values.append(statistic(shuffled[:len(reference)], shuffled[len(reference):]))
    return np.asarray(values)


def numeric_drift(name: str, reference: pd.Series, current: pd.Series,
                  thresholds: Thresholds, kind: str = "numeric") -> FeatureDrift:
    # Missing values (no rating) and -inf (a user who has seen every item) are left out.
    reference = reference[np.isfinite(reference.astype(float))]
    current = current[np.isfinite(current.astype(float))]
    if reference.empty or current.empty:
        return FeatureDrift(name, kind, {"reference_n": len(reference),
                                         "current_n": len(current)}, OK, reference, current)
    ref, cur = reference.to_numpy(float), current.to_numpy(float)
    ks = ks_2samp(ref, cur)
    value = psi(ref, cur)
    # A few hundred values (the prediction scores) put PSI at ~0.1 between two
    # samples of one distribution: judged on its excess over what 95% of random
    # splits stay under.
    null = float(np.percentile(permutation_null(psi, ref, cur, PSI_NULL_ROUNDS), 95))
    stats = {"psi": value, "psi_null": null, "psi_excess": max(0.0, value - null),
             "ks": float(ks.statistic), "ks_pvalue": float(ks.pvalue),
             "reference_mean": float(reference.mean()), "current_mean": float(current.mean()),
             "reference_n": len(reference), "current_n": len(current)}
    # KS 0.1 is within chance for 300 values a side: it counts when significant.
    ks_level = (_level(stats["ks"], thresholds.ks_warn, thresholds.ks_error)
                if stats["ks_pvalue"] < KS_ALPHA else OK)
    severity = worst([_level(stats["psi_excess"], thresholds.psi_warn, thresholds.psi_error),
                      ks_level])
    return FeatureDrift(name, kind, stats, severity, reference, current)


def _js(reference: pd.Series, current: pd.Series) -> float:
    counts = pd.concat([reference.value_counts().rename("reference"),
                        current.value_counts().rename("current")], axis=1).fillna(0)
    return float(jensenshannon(counts["reference"], counts["current"], base=2))


def categorical_drift(name: str, reference: pd.Series, current: pd.Series,
                      thresholds: Thresholds, rounds: int = NULL_ROUNDS, seed: int = 0
                      ) -> FeatureDrift:
    """Jensen-Shannon distance of the two windows' category shares. With thousands of
    categories (items) two samples of the same distribution are already apart, so
    severity is judged on the excess over ``js_null``: the mean distance between
    random splits of the pooled windows (a permutation null, same sizes)."""
    if reference.empty or current.empty:
        return FeatureDrift(name, "categorical", {"reference_n": len(reference),
                                                  "current_n": len(current)}, OK,
                            reference, current)
    distance = _js(reference, current)
    null = float(np.mean(permutation_null(lambda a, b: _js(pd.Series(a), pd.Series(b)),
                                          reference.to_numpy(), current.to_numpy(),
                                          rounds, seed)))
    excess = max(0.0, distance - null)
    stats = {"js": distance, "js_null": null, "js_excess": excess,
             "categories": int(pd.concat([reference, current]).nunique()),
             "new_categories": int((~current.isin(set(reference))).sum()),
             "reference_n": len(reference), "current_n": len(current)}
    return FeatureDrift(name, "categorical", stats,
                        _level(excess, thresholds.js_warn, thresholds.js_error),
                        reference, current)


@dataclass(frozen=True)
class Windows:
    reference: pd.DataFrame
    current: pd.DataFrame
    new_events: int  # validated events after the champion's training data
    train_counts: pd.Series  # item id -> events in the champion's training data


def windows(events: pd.DataFrame, trained_until: pd.Timestamp | None, size: int) -> Windows:
    """``events`` in time order. Reference: the newest ``size`` events at or before
    ``trained_until`` (all events when unknown); current: the newest ``size`` events.
    Without new events the two windows are the same and nothing drifts."""
    trained = events if trained_until is None else events[
        events["event_timestamp"] <= trained_until]
    return Windows(reference=trained.tail(size), current=events.tail(size),
                   new_events=len(events) - len(trained),
                   train_counts=trained["item_id"].value_counts())


def event_features(window: pd.DataFrame, genres_of: pd.Series,
                   train_counts: pd.Series) -> dict[str, pd.Series]:
    """``genres_of``: item id -> genres string; ``train_counts``: item id -> events
    in the champion's training data."""
    genres = window["item_id"].map(genres_of).fillna("").str.split(GENRE_SEPARATOR).explode()
    return {
        "rating": window["rating"].astype(float),
        "item_train_popularity": np.log1p(
            window["item_id"].map(train_counts).fillna(0).astype(float)),
        "item_id": window["item_id"],
        "genre": genres[genres != ""],
        "event_type": window["event_type"],
    }


NUMERIC = ("rating", "item_train_popularity")
CATEGORICAL = ("item_id", "genre", "event_type")

TopScore = Callable[[list[list[str]]], np.ndarray]  # histories (item ids) -> best score each


def window_top_scores(window: pd.DataFrame, top_score: TopScore, users: int,
                      seed: int = 0) -> pd.Series:
    """The champion's best score for up to ``users`` users of ``window`` (seeded
    sample), each from the user's events inside the window (the recent items the
    service would read). Histories from before the window are left out on purpose:
    they only grow, and would move the scores even when behaviour does not."""
    active = np.sort(window["user_id"].unique())
    rng = np.random.default_rng(seed)
    sample = rng.choice(active, size=min(users, len(active)), replace=False)
    histories = window[window["user_id"].isin(sample)].groupby(
        "user_id", sort=True)["item_id"].agg(list)
    return pd.Series(top_score(histories.tolist()), index=histories.index)


def compare(reference: pd.DataFrame, current: pd.DataFrame, genres_of: pd.Series,
            train_counts: pd.Series, thresholds: Thresholds,
            scores: tuple[pd.Series, pd.Series] | None = None) -> list[FeatureDrift]:
    ref = event_features(reference, genres_of, train_counts)
    cur = event_features(current, genres_of, train_counts)
    out = [numeric_drift(n, ref[n], cur[n], thresholds) for n in NUMERIC]
    out += [categorical_drift(n, ref[n], cur[n], thresholds) for n in CATEGORICAL]
    if scores is not None:
        out.append(numeric_drift("champion_top_score", *scores, thresholds, kind="prediction"))
    return out
