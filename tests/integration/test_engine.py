"""The Ray engine (``RECSYS_ENGINE=ray``) against the embedded one on the same
input, on a real local Ray started once for the module."""

import os

import pandas as pd
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import torch

from feature_repo import materialize, tables
from feature_repo.data_sources import (
    ITEM_POPULARITY_FILE,
    USER_PROFILE_FILE,
    USER_RECENT_ITEMS_FILE,
)
from feature_repo.feature_services import BEHAVIOUR_ENCODER_SERVICE
from feature_repo.profiles import write_item_popularity, write_user_profile
from feature_repo.recent_items import feature_times, recent_items_table, write_recent_items
from feature_repo.store import apply_definitions, historical_features, open_store
from infra import redis_server
from infra.engine import engine
from infra.settings import Settings
from orchestration.offline import read_validated_events
from tests.integration.test_features import (
    all_view_tables,
    edge_case_data,
    redis_dump,
    store_with_tables,
)
from tests.unit.test_feature_tables import HAND
from tests.unit.test_parallel_training import run, training_data
from training.sequences import training_targets

KEY = ["user_id", "event_timestamp"]


@pytest.fixture(scope="module")
def ray_engine(tmp_path_factory):
    import ray

    settings = Settings(home=tmp_path_factory.mktemp("ray_home"), engine="ray", ray_cpus=2,
                        ray_memory_mb=2048)
    with engine(settings) as runner:
        assert ray.cluster_resources()["CPU"] == 2  # the local Ray is bounded as set
        yield runner
    assert not ray.is_initialized()  # and stopped with the work


def in_order(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.sort_values(KEY).reset_index(drop=True)


def test_point_in_time_joins_on_ray_equal_the_embedded_ones_with_same_second_ties(
        home: Settings, ray_engine):
    """alice's b and c share a second: the instants between them must see b and not c
    on both engines (an engine that truncated the entity times to seconds would not)."""
    home.offline_dir.mkdir(parents=True)
    recent_items_table(HAND, n=50).to_parquet(home.offline_dir / USER_RECENT_ITEMS_FILE)
    store = open_store(home, redis_server.ensure(home).url)
    apply_definitions(store, home)
    micro = pd.Timedelta(microseconds=1)
    t = feature_times(HAND)
    assert t.iloc[2].floor("s") == t.iloc[3].floor("s")  # the tie
    entity = pd.DataFrame({
        "user_id": ["alice"] * 4 + ["bob"] * 4,
        "event_timestamp": [t.iloc[2] - micro, t.iloc[3] - micro, t.iloc[3], t.iloc[4]] * 2})
    embedded, _ = historical_features(store, entity, BEHAVIOUR_ENCODER_SERVICE, "user_id")
    on_ray, joins = historical_features(store, entity, BEHAVIOUR_ENCODER_SERVICE, "user_id",
                                        rows_per_join=4, engine=ray_engine)
    assert joins == 2  # one task per user
    pd.testing.assert_frame_equal(in_order(on_ray), in_order(embedded))
    alice = in_order(on_ray).query("user_id == 'alice'")["recent_item_ids"].map(list).tolist()
    assert alice == [["a"], ["a", "b"], ["a", "b", "c"], ["a", "b", "c", "d"]]


def test_the_training_set_on_ray_equals_the_embedded_one_row_for_row(pipeline, ray_engine):
    settings = pipeline.settings
    events = read_validated_events(settings)
    entity = training_targets(events, feature_times(events), max_len=settings.recent_items)
    store = open_store(settings, redis_server.ensure(settings).url)
    embedded, joins = historical_features(store, entity, BEHAVIOUR_ENCODER_SERVICE, "user_id")
    on_ray, blocks = historical_features(store, entity, BEHAVIOUR_ENCODER_SERVICE, "user_id",
                                         rows_per_join=-(-len(entity) // 5), engine=ray_engine)
    assert (joins, blocks) == (1, 5)
    assert len(embedded) == len(entity) and embedded["recent_item_ids"].notna().mean() > 0.9
    pd.testing.assert_frame_equal(in_order(on_ray), in_order(embedded))
    # and the asset's file (the embedded run of the pipeline) is that table
    pd.testing.assert_frame_equal(pd.read_parquet(settings.training_set_path), in_order(embedded),
                                  check_dtype=False)


def by_entity(table, key: str):
    """Rows grouped by entity, each entity's rows in the order they had (a stable sort)."""
    return table.take(pc.sort_indices(table, sort_keys=[(key, "ascending")]))


def test_the_feature_tables_on_ray_equal_the_embedded_ones_row_for_row(
        pipeline, ray_engine, tmp_path, monkeypatch):
    """Each table cut into six blocks of whole entities, a Ray task each: the same
    file as the embedded engine's; and the same rows per entity, in the same
    order, as the pipeline's own table."""
    settings = pipeline.settings
    events = read_validated_events(settings)
    items = pd.read_parquet(settings.items_path)
    monkeypatch.setattr(tables, "BLOCK_EVENTS", -(-len(events) // 6))
    writers = {
        USER_RECENT_ITEMS_FILE: ("user_id", lambda path, runner: write_recent_items(
            events, settings.recent_items, path, runner)),
        USER_PROFILE_FILE: ("user_id", lambda path, runner: write_user_profile(
            events, items, path, runner)),
        ITEM_POPULARITY_FILE: ("item_id", lambda path, runner: write_item_popularity(
            events, path, runner)),
    }
    for file, (key, write) in writers.items():
        assert len(tables.entity_blocks(events[key].to_numpy())) >= 5, file
        on_ray, embedded = tmp_path / f"ray_{file}", tmp_path / f"embedded_{file}"
        assert write(on_ray, ray_engine) == write(embedded, None) == len(events)
        got, want = pq.read_table(on_ray), pq.read_table(embedded)
        assert got.schema == want.schema and got.equals(want), file
        asset = pq.read_table(settings.offline_dir / file)
        assert by_entity(got, key).equals(by_entity(asset, key)), file


def test_materialisation_on_ray_leaves_the_redis_of_the_embedded_one(
        home: Settings, tmp_path, ray_engine, monkeypatch):
    """Every view (lists, nulls, empty lists, a view without TTL), written in
    batches of 7 entities, each a Ray task with its own Redis client."""
    monkeypatch.setattr(materialize, "WRITE_BATCH", 7)
    events, items = edge_case_data()
    tables = all_view_tables(events, items)
    other = Settings(home=tmp_path / "embedded")
    try:
        dumps = []
        for settings, runner in ((home, ray_engine), (other, None)):
            server, store = store_with_tables(settings, tables)
            for view, (table, file, key) in tables.items():
                stats = materialize.materialize_view(
                    store, view, settings.offline_dir / file, key,
                    table["event_timestamp"].min().to_pydatetime(),
                    (table["event_timestamp"].max() + pd.Timedelta(seconds=1)).to_pydatetime(),
                    engine=runner)
                assert stats.entities_written == table[key].nunique() > 7
            dumps.append(redis_dump(server))
        assert len(dumps[0]) == events["user_id"].nunique() + len(items)
        assert dumps[0] == dumps[1]
    finally:
        redis_server.stop(other)


def test_the_whole_pipeline_on_ray_gives_the_embedded_tables_and_a_champion(
        pipeline, ray_engine, tmp_path_factory, monkeypatch):
    """Every asset with ``engine="ray"`` on the embedded pipeline's generated data
    (the assets find the module's Ray running and leave it running)."""
    # mlflow.set_tracking_uri exports the URI to this process's environment: put
    # back what it was, or the services later tests start would take this run's
    # store for an external one
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        was = os.environ.get(name)
        monkeypatch.setenv(name, was or "")  # (recorded, to be restored)
        if was is None:
            monkeypatch.delenv(name)
    from dagster import materialize

    from orchestration.definitions import ASSETS, CHECKS
    from orchestration.lineage import instance_for
    from orchestration.resources import resources_from_settings
    from tests.conftest import EPOCHS, SMALL
    from training import registry

    settings = Settings(home=tmp_path_factory.mktemp("ray_pipeline"), engine="ray")
    try:
        result = materialize(
            [*ASSETS, *CHECKS], resources=resources_from_settings(settings, **SMALL),
            instance=instance_for(settings),
            run_config={"ops": {"behaviour_encoder_version": {"config": {
                "epochs": EPOCHS, "workers": 2, "threads": 1}}}})
        assert result.success
        run = type(pipeline)(settings=settings, result=result)
        for asset in ("user_recent_items_offline", "user_profile_offline",
                      "item_popularity_offline", "training_set", "online_user_features",
                      "online_item_features"):
            assert run.metadata(asset)["engine"] == "ray", asset
        for file in (USER_RECENT_ITEMS_FILE, USER_PROFILE_FILE, ITEM_POPULARITY_FILE):
            assert pq.read_table(settings.offline_dir / file).equals(
                pq.read_table(pipeline.settings.offline_dir / file)), file
        pd.testing.assert_frame_equal(pd.read_parquet(settings.training_set_path),
                                      pd.read_parquet(pipeline.settings.training_set_path))
        assert registry.alias_version(settings.tracking_uri(), registry.CHAMPION) == "1"
        mlflow = registry.client(settings.tracking_uri())
        params = mlflow.get_run(mlflow.get_model_version(registry.MODEL_NAME, "1").run_id
                                ).data.params
        assert (params["workers"], params["workers_on_ray"]) == ("2", "True")
    finally:
        redis_server.stop(settings)


def test_training_with_a_ray_task_as_the_second_process_takes_one_process_s_steps(
        ray_engine):
    """As ``test_parallel_training``'s exactness test, rank 1 a Ray task."""
    data = training_data()
    one, _ = run(data, 1, epochs=1, dropout=0.0)
    two, _ = run(data, 2, epochs=1, dropout=0.0, workers_on_ray=True)
    for (name, a), b in zip(one.model.state_dict().items(), two.model.state_dict().values(),
                            strict=True):
        if torch.is_floating_point(a):
            assert torch.allclose(a, b, atol=1e-4), name
