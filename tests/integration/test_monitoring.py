"""Drift and the reports index, on a copy of the session pipeline's state: a new
window of generated events is ingested by the real ``ingest`` job, the
``drift_after_ingest`` sensor asks for the ``monitoring`` job, and that job's
drift checks are asserted. Unshifted = the same generator with new randomness;
shifted = other genre tastes and another popularity order."""

import math
import shutil

import numpy as np
import pandas as pd
import pytest
from dagster import DagsterInstance, Definitions, build_sensor_context

from infra import redis_server
from infra.settings import Settings
from orchestration import drift
from orchestration.definitions import ASSETS, CHECKS
from orchestration.jobs import ingest_job, monitoring_job
from orchestration.offline import read_validated_events
from orchestration.resources import resources_from_settings
from orchestration.sensors import drift_after_ingest
from orchestration.sources.generator import GeneratorConfig, generate
from tests.conftest import SMALL

pytestmark = pytest.mark.slow  # the whole pipeline, a real server or a cluster

SHIFT = {"popularity_seed": 99, "taste_genres": ("Horror", "Western", "Musical")}
WINDOW = SMALL["generator_events"]  # a whole window of new events against the training data


def new_window(pipeline, home, **shift) -> dict:
    """Copy the pipeline's state, add a window of events after the champion's
    training data, run ``ingest``, the sensor and ``monitoring``; drift checks by name."""
    shutil.copytree(pipeline.settings.home, home,
                    ignore=shutil.ignore_patterns("redis", "dagster", "reports"))
    settings = Settings(home=home)
    trained_until = read_validated_events(pipeline.settings)["event_timestamp"].max()
    config = GeneratorConfig(users=SMALL["generator_users"], items=SMALL["generator_items"],
                             events=WINDOW, start=int(trained_until.timestamp()) + 86_400,
                             behaviour_seed=11, **shift)
    window = generate(config).events
    window.to_csv(settings.generated_source_dir / "events-window.csv", index=False)
    resources = resources_from_settings(settings, **SMALL)
    defs = Definitions(assets=ASSETS, asset_checks=CHECKS, jobs=[ingest_job, monitoring_job],
                       resources=resources)
    instance = DagsterInstance.ephemeral()
    quiet = drift_after_ingest.evaluate_tick(build_sensor_context(instance=instance))
    ingested = defs.resolve_job_def("ingest").execute_in_process(instance=instance)
    assert ingested.success
    tick = drift_after_ingest.evaluate_tick(build_sensor_context(instance=instance))
    (request,) = tick.run_requests
    assert not quiet.run_requests and request.run_key == f"drift-after-{ingested.run_id}"
    # An ingest run that found nothing new starts no monitoring run.
    nothing = defs.resolve_job_def("ingest").execute_in_process(instance=instance)
    assert nothing.success
    after_quiet = drift_after_ingest.evaluate_tick(build_sensor_context(
        instance=instance, cursor=tick.cursor))
    assert not after_quiet.run_requests
    assert f"ingest run {nothing.run_id} read no new rows" in after_quiet.skip_message
    monitored = defs.resolve_job_def("monitoring").execute_in_process(
        instance=instance, raise_on_error=False, run_config={
            "ops": {"feature_drift": {"config": {"window_events": WINDOW}}}})
    checks = {c.check_name: c for c in monitored.get_asset_check_evaluations()}
    (materialised,) = [e for e in monitored.get_asset_materialization_events()
                       if e.asset_key.to_user_string() == "feature_drift"]
    meta = {k: v.value for k, v in materialised.materialization.metadata.items()}
    return {"checks": checks, "meta": meta, "settings": settings, "window": window}


@pytest.fixture(scope="module")
def unshifted(pipeline, tmp_path_factory):
    run = new_window(pipeline, tmp_path_factory.mktemp("unshifted") / "home")
    yield run
    redis_server.stop(run["settings"])  # raw_events started it to drain the stream


@pytest.fixture(scope="module")
def shifted(pipeline, tmp_path_factory):
    run = new_window(pipeline, tmp_path_factory.mktemp("shifted") / "home", **SHIFT)
    yield run
    redis_server.stop(run["settings"])


def severity(run, check: str, feature: str) -> str:
    return run["checks"][check].metadata[feature].value["severity"]


def test_an_unshifted_window_stays_green(unshifted):
    assert unshifted["meta"]["new_events"] == len(unshifted["window"]) > WINDOW - 10
    assert unshifted["meta"]["features"] == {
        f: drift.OK for f in ("rating", "item_train_popularity", "item_id", "genre",
                              "event_type", "champion_top_score")}
    assert unshifted["meta"]["severity"] == drift.OK
    assert {n: c.passed for n, c in unshifted["checks"].items()} == {
        "numeric_feature_drift": True, "categorical_feature_drift": True,
        "prediction_drift": True}
    stats = unshifted["checks"]["categorical_feature_drift"].metadata["item_id"].value
    assert stats["js"] > 0 and stats["js_excess"] < drift.Thresholds().js_warn


def test_a_shifted_window_raises_error(shifted):
    from dagster import AssetCheckSeverity

    assert shifted["meta"]["severity"] == drift.ERROR
    categorical = shifted["checks"]["categorical_feature_drift"]
    assert not categorical.passed and categorical.severity == AssetCheckSeverity.ERROR
    assert severity(shifted, "categorical_feature_drift", "item_id") == drift.ERROR
    assert severity(shifted, "categorical_feature_drift", "genre") == drift.ERROR
    assert severity(shifted, "categorical_feature_drift", "event_type") == drift.OK
    # Consumption moved to items that were rare in training.
    popularity = shifted["checks"]["numeric_feature_drift"].metadata[
        "item_train_popularity"].value
    assert popularity["current_mean"] < popularity["reference_mean"]
    assert popularity["psi"] >= drift.Thresholds().psi_warn
    score = shifted["checks"]["prediction_drift"].metadata["champion_top_score"].value
    # Every user is scored but those who have seen the whole (small) catalogue.
    assert math.isfinite(score["psi"]) and 250 < score["current_n"] <= SMALL["generator_users"]
    report = (shifted["settings"].reports_dir / "drift.html").read_text()
    assert report.count("data:image/png;base64,") == 6  # one chart per feature
    assert ">ERROR</b>" in report
    assert f"events since training: {len(shifted['window'])}" in report


def test_reports_index_links_every_report(pipeline, shifted):
    index = (shifted["settings"].reports_dir / "index.html").read_text()
    for name in ("drift.html", "champion.html"):
        assert (shifted["settings"].reports_dir / name).as_uri() in index
    assert (shifted["settings"].data_docs_dir / "index.html").as_uri() in index
    assert "Training/serving skew: not produced yet" in index  # the copy has no skew report
    # The session pipeline's own index has all four, and the champion's curves.
    reports_dir = pipeline.settings.reports_dir
    own = (reports_dir / "index.html").read_text()
    assert "not produced yet" not in own and (reports_dir / "skew.html").as_uri() in own
    champion = (reports_dir / "champion.html").read_text()
    assert champion.count("data:image/png;base64,") == 2  # loss; validation metrics
    assert "<td>ndcg_at_10</td>" in champion and "<td>baseline_pop_ndcg_at_10</td>" in champion


@pytest.mark.parametrize(("reference", "current", "expected"), [
    ([1, 2, 3, 4] * 50, [1, 2, 3, 4] * 50, drift.OK),
    ([1, 2, 3, 4] * 50, [3, 4, 5, 6] * 50, drift.ERROR),
])
def test_numeric_drift_statistics(reference, current, expected):
    result = drift.numeric_drift("x", pd.Series(reference, dtype=float),
                                 pd.Series(current, dtype=float), drift.Thresholds())
    assert result.severity == expected
    if expected == drift.OK:
        assert result.statistics["psi"] == 0.0 and result.statistics["ks"] == 0.0
    else:
        assert result.statistics["ks"] == 0.5 and result.statistics["psi"] > 1.0


def test_small_samples_of_one_distribution_stay_green_and_a_shift_does_not():
    # 300 values a side: PSI and KS between two draws of N(0, 1) are ~0.1 by chance.
    rng = np.random.default_rng(0)
    draw = lambda mean: pd.Series(rng.normal(mean, 1.0, size=300))  # noqa: E731
    same = drift.numeric_drift("x", draw(0.0), draw(0.0), drift.Thresholds())
    assert same.statistics["psi_null"] > 0.05 and same.statistics["psi_excess"] == 0.0
    assert same.severity == drift.OK
    moved = drift.numeric_drift("x", draw(0.0), draw(0.5), drift.Thresholds())
    assert moved.statistics["psi_excess"] > 0.1 and moved.statistics["ks_pvalue"] < 1e-4
    assert moved.severity == drift.ERROR
    null = drift.permutation_null(drift.psi, draw(0.0).to_numpy(), draw(0.0).to_numpy(), 7)
    assert null.shape == (7,) and (null > 0).all()


def test_psi_matches_the_formula_on_hand_made_bins():
    # Reference quartile bins hold 25% each; the current sample puts 10/20/30/40% in them.
    reference = pd.Series(range(100), dtype=float).to_numpy()
    current = pd.Series([10] * 10 + [30] * 20 + [60] * 30 + [90] * 40, dtype=float).to_numpy()
    shares = [0.1, 0.2, 0.3, 0.4]
    expected = sum((c - 0.25) * math.log(c / 0.25) for c in shares)
    assert drift.psi(reference, current, bins=4) == pytest.approx(expected)
