"""The Ray engine on a Ray cluster of two nodes joined by address: two raylets,
each with its own object store and one CPU, on this one host
(``ray.cluster_utils.Cluster``, as Ray's own tests build one). A task's
arguments and result cross between the nodes' object stores as they would
between machines; what one host cannot show is storage shared over a network."""

import pyarrow.parquet as pq
import pytest

from feature_repo import tables
from feature_repo.data_sources import USER_RECENT_ITEMS_FILE
from feature_repo.recent_items import write_recent_items
from infra.engine import engine
from infra.settings import Settings
from orchestration.offline import read_validated_events


@pytest.fixture(scope="module")
def cluster():
    import ray
    from ray.cluster_utils import Cluster

    assert not ray.is_initialized()
    nodes = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "object_store_memory": 100 * 2**20, "include_dashboard": False})
    nodes.add_node(num_cpus=1, object_store_memory=100 * 2**20)
    nodes.wait_for_nodes()
    yield nodes
    nodes.shutdown()  # also forgets the address it recorded as this host's cluster


class NodeNoting:
    """A runner that notes which node ran each block, and otherwise is the one it wraps."""

    def __init__(self, runner):
        self.runner, self.name, self.parallelism = runner, runner.name, runner.parallelism
        self.nodes: list[str] = []

    def map(self, function, blocks, shared=()):
        def on_node(*arguments):
            import ray

            return ray.get_runtime_context().get_node_id(), function(*arguments)

        for node, result in self.runner.map(on_node, blocks, shared):
            self.nodes.append(node)
            yield result


def test_the_feature_tables_blocks_run_on_both_nodes_and_give_the_embedded_file(
        pipeline, cluster, tmp_path, monkeypatch):
    import ray

    settings = pipeline.settings
    events = read_validated_events(settings)
    monkeypatch.setattr(tables, "BLOCK_EVENTS", -(-len(events) // 8))
    on_cluster = Settings(home=tmp_path, engine="ray", ray_address=cluster.address)
    with engine(on_cluster) as runner:
        alive = {node["NodeID"] for node in ray.nodes() if node["Alive"]}
        assert len(alive) == 2 and runner.parallelism == 2
        noting = NodeNoting(runner)
        written = write_recent_items(events, settings.recent_items, tmp_path / "ray.parquet",
                                     noting)
    assert not ray.is_initialized()  # the driver left; the cluster is the cluster's own
    assert len(noting.nodes) >= 8 and set(noting.nodes) == alive
    assert written == write_recent_items(events, settings.recent_items,
                                         tmp_path / "embedded.parquet", None) == len(events)
    got = pq.read_table(tmp_path / "ray.parquet")
    assert got.equals(pq.read_table(tmp_path / "embedded.parquet"))
    assert got.num_rows == pq.read_table(settings.offline_dir / USER_RECENT_ITEMS_FILE).num_rows


def test_with_no_address_the_project_starts_its_own_ray_beside_a_running_cluster(
        cluster, tmp_path):
    """The cluster above is recorded as this host's current one (as `ray start` does):
    an unset RECSYS_RAY_ADDRESS must still mean a local Ray with the CPUs asked for,
    not joining that cluster (which refuses CPU bounds)."""
    import ray

    with engine(Settings(home=tmp_path, engine="ray", ray_cpus=1, ray_memory_mb=512)):
        assert len([node for node in ray.nodes() if node["Alive"]]) == 1
        assert ray.cluster_resources()["CPU"] == 1
        assert ray.get_runtime_context().gcs_address != cluster.address
    assert not ray.is_initialized()
