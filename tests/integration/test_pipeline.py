"""The whole asset graph materialised once (session fixture) on small generated
data, against the embedded Redis and a local MLflow store."""

import mlflow.models
import mlflow.pyfunc
import numpy as np
import pandas as pd
import pytest
import torch
from dagster import materialize

from feature_repo.feature_services import BEHAVIOUR_ENCODER_SERVICE
from feature_repo.recent_items import feature_times
from feature_repo.store import open_store
from infra import redis_server
from infra.fingerprint import file_sha256, tree_sha256
from infra.settings import Settings
from orchestration.assets.training import EncoderTraining, logged_recipe
from orchestration.definitions import defs
from orchestration.offline import read_validated_events
from orchestration.resources import resources_from_settings
from tests.conftest import EPOCHS
from tests.unit.test_sources import U_ITEM
from training import registry
from training.model import BehaviourEncoder, EncoderConfig
from training.text_encoder import TextEncoder

pytestmark = pytest.mark.slow  # the whole pipeline, a real server or a cluster

MICROSECOND = pd.Timedelta(microseconds=1)


def test_definitions_load_and_resolve_the_job():
    job = defs.resolve_job_def("recsys_pipeline")
    keys = {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()}
    assert {"raw_events", "validated_events", "quarantined_events", "behaviour_encoder_version",
            "champion_model", "online_user_features", "training_set"} <= keys
    assert job.name == "recsys_pipeline"


def test_row_counts_add_up(pipeline):
    raw = pipeline.metadata("raw_events")["row_count"]
    validated = pipeline.metadata("validated_events")["row_count"]
    quarantined = pipeline.metadata("quarantined_events")["row_count"]
    assert raw == validated + quarantined
    assert raw > 10_000
    raw_files = pipeline.metadata("raw_events")["files"]
    source_dir = pipeline.settings.generated_source_dir
    assert raw_files["events.csv"] == {"path": str(source_dir / "events.csv"), "rows": raw,
                                   "sha256": file_sha256(source_dir / "events.csv")}
    files = read_validated_events(pipeline.settings)
    assert len(files) == validated
    checks = pipeline.result.get_asset_check_evaluations()
    assert sorted((c.check_name, c.passed) for c in checks) == [
        ("categorical_feature_drift", True), ("challenger_beats_champion", True),
        ("no_rows_lost", True), ("numeric_feature_drift", True), ("prediction_drift", True),
        ("raw_events_suite", True), ("training_serving_skew", True)]
    # Nothing new since training: the drift windows are the same events.
    assert pipeline.metadata("feature_drift")["new_events"] == 0
    assert (pipeline.settings.data_docs_dir / "index.html").exists()


def test_every_user_with_events_has_online_features(pipeline):
    settings = pipeline.settings
    events = read_validated_events(settings)
    store = open_store(settings, redis_server.ensure(settings).url)
    users = sorted(events["user_id"].unique())
    online = store.get_online_features(
        features=store.get_feature_service(BEHAVIOUR_ENCODER_SERVICE),
        entity_rows=[{"user_id": u} for u in users],
    ).to_dict()
    last = events.groupby("user_id")["item_id"].agg(list)
    for user, recent in zip(online["user_id"], online["recent_item_ids"], strict=True):
        assert recent == last[user][-settings.recent_items:]


def test_training_set_is_point_in_time(pipeline):
    settings = pipeline.settings
    frame = pd.read_parquet(settings.offline_dir / "training_set.parquet")
    events = read_validated_events(settings)
    assert len(frame) == pipeline.metadata("training_set")["row_count"] > 300
    events["feature_time"] = feature_times(events)
    n = settings.recent_items
    for row in frame.itertuples():
        mine = events[events["user_id"] == row.user_id].reset_index(drop=True)
        # the target is the event one microsecond after the row's time ...
        (position,) = mine.index[mine["feature_time"] == row.event_timestamp + MICROSECOND]
        assert mine.loc[position, "item_id"] == row.target_item_id
        # ... and the features are exactly the n items before it: nothing from after.
        assert list(row.recent_item_ids) == mine["item_id"].tolist()[max(0, position - n):position]


def test_champion_registered_and_beats_popularity(pipeline):
    uri = pipeline.settings.tracking_uri()
    champion = registry.alias_version(uri, registry.CHAMPION)
    assert champion == registry.alias_version(uri, registry.CHALLENGER) == "1"
    c = registry.client(uri)
    run = c.get_run(c.get_model_version(registry.MODEL_NAME, champion).run_id)
    m = run.data.metrics
    assert m["ndcg_at_10"] > m["baseline_pop_ndcg_at_10"] * 2
    assert m["hr_at_10"] > m["baseline_pop_hr_at_10"]
    assert m["baseline_ease_ndcg_at_10"] > m["baseline_pop_ndcg_at_10"]
    assert m["train_seconds"] > 0
    assert run.data.tags["feature_service"] == BEHAVIOUR_ENCODER_SERVICE
    # Lineage: the exact bytes of the validated events and training set, on the
    # run and on the registered version, and the dataset logged as an input.
    offline = pipeline.settings.offline_dir
    version = c.get_model_version(registry.MODEL_NAME, champion)
    for key, expected in [
            ("validated_events_sha256", tree_sha256(offline / "validated_events")),
            ("training_set_sha256", file_sha256(offline / "training_set.parquet"))]:
        assert run.data.tags[key] == version.tags[key] == expected
    assert run.data.tags["dagster_run_id"] == pipeline.result.run_id
    assert [d.dataset.name for d in run.inputs.dataset_inputs] == ["validated_events"]
    assert run.data.params["hidden"] == "64"
    # The MLflow UI opens the experiment on its training runs; the run lasts as long
    # as the training did; the registered model says what it is.
    experiment = c.get_experiment(run.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert run.info.end_time - run.info.start_time >= 1000 * m["train_seconds"]
    assert "no pickle" in c.get_registered_model(registry.MODEL_NAME).description
    # The recipe reads back from the run's string params as it was given (the
    # cold-start evaluation retrains it), booleans included.
    assert logged_recipe(run.data.params) == EncoderTraining(epochs=EPOCHS)
    # a catalogue below sampled_softmax_min_items trains with the full softmax
    # (and its 6 epochs all ran: no budget or patience stopped them)
    assert run.data.params["softmax"] == "full" and run.data.params["stopped_by"] == "epochs"
    assert logged_recipe({**run.data.params, "user_vectors": "False"}).user_vectors is False
    served = registry.load_version(uri, champion)
    assert run.data.params["n_users"] == str(len(served.user_index)) and served.user_index
    # The item transitions and popularity travel with the registered model, at the
    # logged weights.
    assert len(served.transitions.lags) == int(run.data.params["transition_lags"]) == 3
    assert m["transition_weight"] == served.transitions.weight
    assert m["popularity_weight"] == served.transitions.popularity_weight
    assert m["borrowed_transition_weight"] == served.transitions.borrowed_weight
    assert run.data.params["random_tiling"] == "True"
    info = mlflow.models.get_model_info(f"models:/{registry.MODEL_NAME}/{champion}")
    # The pyfunc states its signature (histories of item ids in; item ids and their
    # scores out) instead of MLflow inferring it by loading the model.
    assert info.signature == registry.PYFUNC_SIGNATURE
    assert [c["name"] for c in info.signature.outputs.to_dict()] == ["item_ids", "scores"]
    assert pipeline.metadata("behaviour_encoder_version")["version"] == "1"


def test_a_weaker_model_never_becomes_champion(pipeline):
    """Register an untrained model as challenger: the blocking check fails, so
    champion_model does not run and v1 stays champion."""
    from dagster import AssetSelection

    from orchestration.definitions import ASSETS, CHECKS

    uri = pipeline.settings.tracking_uri()
    served = registry.load_version(uri, "1")
    torch.manual_seed(0)
    assert served.config.n_users > 0  # the pipeline's model has user vectors
    weak = BehaviourEncoder(EncoderConfig(**served.config.to_dict()), served.item_ids,
                            served.titles, list(served.user_index), served.user_salt)
    weak.eval()
    weakened = registry.log_and_register(
        uri, pipeline.settings.artifact_location(), weak, {"weakened": True}, [],
        {"best_val_ndcg_at_10": 0.0}, {"purpose": "test"},
        documents={registry.POPULARITY_DOCUMENT: {}})
    assert registry.alias_version(uri, registry.CHALLENGER) == weakened.version
    result = materialize(
        [*ASSETS, *CHECKS], resources=resources_from_settings(pipeline.settings),
        selection=AssetSelection.assets("champion_model")
        | AssetSelection.checks_for_assets("behaviour_encoder_version"),
        raise_on_error=False)
    assert not result.success
    (check,) = result.get_asset_check_evaluations()
    assert check.check_name == "challenger_beats_champion" and not check.passed
    assert result.asset_materializations_for_node("champion_model") == []
    assert registry.alias_version(uri, registry.CHAMPION) == "1"
    scores = check.metadata["validation_ndcg_at_10"].value
    assert scores["1"] > scores[weakened.version]
    assert check.metadata["reason"].value.startswith(f"challenger v{weakened.version} ")
    # A person can still promote it by hand, and roll back.
    registry.set_champion(uri, weakened.version)
    assert registry.alias_version(uri, registry.CHAMPION) == weakened.version
    assert registry.rollback_champion(uri) == "1"
    assert registry.alias_version(uri, registry.CHAMPION) == "1"
    assert registry.champion_history(uri) == ["1"]
    # leave the registry as the service tests expect it
    registry.client(uri).set_registered_model_alias(registry.MODEL_NAME, registry.CHALLENGER,
                                                    "1")


def test_a_resumed_scale_run_promotes_its_version_as_a_fresh_run_would(pipeline):
    """``bench.scale`` re-running training on a home with a champion forgets the
    champion first: the promotion check then passes as on a fresh home, instead
    of failing the stage for a version no better than the earlier run's."""
    from dagster import AssetSelection

    from bench.scale import forget_champion
    from orchestration.definitions import ASSETS, CHECKS

    uri = pipeline.settings.tracking_uri()
    assert registry.alias_version(uri, registry.CHAMPION) == "1"
    assert registry.alias_version(uri, registry.CHALLENGER) == "1"
    forget_champion(uri)
    try:
        assert registry.alias_version(uri, registry.CHAMPION) is None
        result = materialize(
            [*ASSETS, *CHECKS], resources=resources_from_settings(pipeline.settings),
            selection=AssetSelection.assets("champion_model")
            | AssetSelection.checks_for_assets("behaviour_encoder_version"),
            raise_on_error=False)
        assert result.success
        (check,) = result.get_asset_check_evaluations()
        assert check.passed and check.metadata["reason"].value == "no champion yet"
        assert registry.alias_version(uri, registry.CHAMPION) == "1"
    finally:
        registry.client(uri).set_registered_model_alias(registry.MODEL_NAME,
                                                        registry.CHAMPION, "1")
    assert registry.champion_history(uri) == ["1"]


def test_dagster_cli_materializes_ingest_headless(tmp_path):
    """The fixed command, on a small MovieLens-100K-format source with one bad row."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    source = tmp_path / "source"
    source.mkdir()
    (source / "u.item").write_bytes(U_ITEM.encode("latin-1"))
    (source / "u.data").write_text("1\t1\t5\t881250949\n1\t2\t9\t881250950\n2\t1\t3\t881250951\n")
    home = tmp_path / "home"
    env = {**os.environ, "RECSYS_HOME": str(home), "RECSYS_SOURCE": str(source),
           "DAGSTER_HOME": str(tmp_path / "dagster")}
    Path(env["DAGSTER_HOME"]).mkdir()
    dagster = Path(sys.executable).with_name("dagster")
    try:
        done = subprocess.run(
            [str(dagster), "asset", "materialize", "-m", "orchestration.definitions",
             "--select", "raw_events,item_catalogue,validated_events,quarantined_events",
             # one process for the run: each step's own process would import everything again
             "--config-json", '{"execution": {"config": {"in_process": {}}}}'],
            env=env, capture_output=True, text=True, timeout=300)
    finally:  # raw_events started the home's embedded Redis to drain the stream
        redis_server.stop(Settings(home=home))
    assert done.returncode == 0, done.stderr[-3000:]
    validated = pd.read_parquet(home / "offline" / "validated_events")
    quarantined = pd.read_parquet(home / "quarantine")
    assert validated[["user_id", "item_id"]].values.tolist() == [["1", "1"], ["2", "1"]]
    assert quarantined[["source_row", "rating", "reason"]].values.tolist() == [
        [2, "9", "rating outside 1..5"]]


def test_manual_promote_and_rollback_commands(pipeline, monkeypatch, capsys):
    from orchestration.cli import main

    monkeypatch.setenv("RECSYS_HOME", str(pipeline.settings.home))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = pipeline.settings.tracking_uri()
    assert main(["promote", "999"]) == 1
    assert "999" in capsys.readouterr().err
    assert main(["rollback"]) == 1
    assert "no earlier champion" in capsys.readouterr().err
    assert main(["promote", "1"]) == 0
    assert capsys.readouterr().out.strip() == "champion: v1 -> v1"
    assert registry.alias_version(uri, registry.CHAMPION) == "1"


def test_skew_is_zero_after_materialisation_and_catches_a_corrupted_value(pipeline):
    from dagster import AssetSelection
    from feast.protos.feast.types.Value_pb2 import StringList, Value

    from feature_repo.online_rows import RecentItemsRows
    from orchestration.checks import training_serving_skew
    from orchestration.definitions import ASSETS, CHECKS

    settings = pipeline.settings

    def skew():
        result = materialize(
            [*ASSETS, *CHECKS], resources=resources_from_settings(settings),
            selection=AssetSelection.checks(training_serving_skew), run_config={"ops": {
                "online_user_features_training_serving_skew": {"config": {"users": 10_000}}}})
        (check,) = result.get_asset_check_evaluations()
        return check

    clean = skew()
    assert clean.passed
    assert clean.metadata["users_compared"].value == 300
    assert set(clean.metadata["mismatch_rate"].value) == {
        "recent_item_ids", "recent_timestamps", "event_count", "last_event_us", "mean_rating",
        "top_genres", "top_genre_shares"}
    assert set(clean.metadata["mismatch_rate"].value.values()) == {0.0}
    # Corrupt one user's recent items in Redis (same hash, same row time).
    client = redis_server.ensure(settings).client()
    reader = RecentItemsRows(client, settings.feast_project)
    user = "u00042"
    key, field = reader.key(user), reader.fields[0]
    original = client.hget(key, field)
    wrong = Value(string_list_val=StringList(val=["i00000", "i00001"])).SerializeToString()
    client.hset(key, field, wrong)
    try:
        corrupted = skew()
    finally:
        client.hset(key, field, original)
    assert not corrupted.passed
    assert corrupted.metadata["mismatching_users"].value == {"recent_item_ids": [user]}
    assert corrupted.metadata["mismatch_rate"].value["recent_item_ids"] == 1 / 300
    report = (settings.reports_dir / "skew.html").read_text()
    assert "<td>recent_item_ids</td><td>1</td>" in report and user in report


def test_lineage_resolves_to_the_exact_raw_files(pipeline, monkeypatch, capsys):
    from orchestration.cli import main
    from orchestration.lineage import lineage

    settings = pipeline.settings
    events_file = settings.generated_source_dir / "events.csv"
    chain = lineage(settings, "1")
    assert chain["model"]["tags"]["dagster_run_id"] == pipeline.result.run_id
    assert chain["mlflow_run"]["tags"]["validated_events_sha256"] == \
        chain["model"]["tags"]["validated_events_sha256"]
    assert chain["dagster_run"]["found"] and chain["dagster_run"]["run_id"] == \
        pipeline.result.run_id
    assert {"raw_events", "validated_events", "training_set", "behaviour_encoder_version",
            "champion_model"} <= set(chain["dagster_run"]["assets"])
    assert chain["raw_files"]["events.csv"]["sha256"] == file_sha256(events_file)
    assert chain["raw_files"]["events.csv"]["rows"] == chain["raw_events"]["row_count"] > 10_000
    assert chain["raw_files"]["items.csv"]["sha256"] == file_sha256(
        settings.generated_source_dir / "items.csv")
    # The catalogue file counts the items read from it.
    assert chain["raw_files"]["items.csv"]["rows"] == len(pd.read_parquet(settings.items_path))
    monkeypatch.setenv("RECSYS_HOME", str(settings.home))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert main(["lineage", "1"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("behaviour_encoder v1")
    assert f"events.csv: {chain['raw_events']['row_count']} rows, sha256 " \
           f"{file_sha256(events_file)}" in printed
    assert main(["lineage", "99"]) == 1


def test_the_query_blend_is_chosen_on_validation_and_beats_both_parts_on_test(pipeline):
    """Genre queries of the targets: the blend at the weights chosen on validation
    beats behaviour alone and the query alone on test, and the weights travel
    with the version (the service reads them)."""
    uri = pipeline.settings.tracking_uri()
    champion = registry.alias_version(uri, registry.CHAMPION)
    m = registry.version_run(uri, champion).data.metrics
    assert m["query_events"] == m["evaluated_users"]  # every generated item has genres
    assert m["query_behaviour_ndcg_at_10"] == pytest.approx(m["ndcg_at_10"])
    assert m["query_blend_ndcg_at_10"] > max(m["query_behaviour_ndcg_at_10"],
                                             m["query_only_ndcg_at_10"])
    assert m["query_blend_hr_at_10"] > m["query_behaviour_hr_at_10"]
    blend = registry.load_document(uri, champion, registry.QUERY_BLEND_DOCUMENT)
    assert blend == {"weight": m["query_weight"],
                     "popularity_weight": m["query_popularity_weight"]}
    assert blend["weight"] > 0


def test_text_encoder_registered_and_cold_start_measured(pipeline):
    """item_text_encoder is in the registry and feeds item_content; the cold-start
    evaluation (10% of items held out of training) beats a random ranking."""
    uri = pipeline.settings.tracking_uri()
    text_version = registry.alias_version(uri, registry.CHAMPION, registry.TEXT_MODEL_NAME)
    assert text_version == "1"
    content = pipeline.metadata("item_content_offline")
    assert content["item_text_encoder_version"] == "1"
    assert content["text_precision"] == TextEncoder().precision
    texts = ["Space Saga. Sci-Fi, Adventure. A crew far from home.", "A quiet romance."]
    pyfunc = mlflow.pyfunc.load_model(f"models:/{registry.TEXT_MODEL_NAME}/1")
    np.testing.assert_allclose(pyfunc.predict(pd.DataFrame({"text": texts})),
                               TextEncoder().encode(texts), atol=1e-5)
    assert (registry.text_encoder_dir(uri, "1") / "config.json").exists()
    run = registry.version_run(uri, registry.alias_version(uri, registry.CHAMPION))
    m = run.data.metrics
    assert m["cold_start_users"] >= 20
    assert m["cold_start_hr_at_10"] >= 2 * m["cold_start_random_hr_at_10"]
    assert m["cold_start_lift"] == pytest.approx(
        m["cold_start_hr_at_10"] / m["cold_start_random_hr_at_10"])
