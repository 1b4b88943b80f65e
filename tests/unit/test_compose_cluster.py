"""docker-compose.yml's `cluster` profile (ClickHouse Keeper, 2 shards x 2 replicas) cannot
run here (no Docker engine): check its structure against what the pipeline's cluster
code assumes (pipeline/storage/cluster.py, docs/clickhouse.md)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
NODES = ("ch-s1-r1", "ch-s1-r2", "ch-s2-r1", "ch-s2-r2")
CLUSTER = "cdr_cluster"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert isinstance(data, dict)
    return data


def _config(compose: dict[str, Any], name: str) -> ET.Element:
    return ET.fromstring(compose["configs"][name]["content"])  # noqa: S314 - our own file


def _mounted(service: dict[str, Any]) -> set[str]:
    return {c["source"] for c in service.get("configs", [])}


def test_cluster_services_only_start_with_the_cluster_profile(compose: dict[str, Any]) -> None:
    services = compose["services"]
    cluster = {n for n, s in services.items() if "cluster" in s.get("profiles", [])}
    assert cluster == {"keeper", *NODES, "migrate-cluster", "sink-cluster", "dashboard-cluster"}
    for name in ("kafka", "clickhouse", "migrate", "worker", "sink", "dashboard"):
        assert "profiles" not in services[name], name  # the default deployment is unchanged


def test_two_shards_of_two_replicas_each_with_its_own_volume_and_macros(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    seen = set()
    for name in NODES:
        node = services[name]
        assert node["image"].startswith("clickhouse/clickhouse-server:"), name
        assert node["healthcheck"]["test"], name
        env = node["environment"]
        shard, replica = env["CDR_SHARD"], env["CDR_REPLICA"]
        assert (shard, replica) == (name[4], name), name  # ch-s<shard>-r<n>
        assert env["CLICKHOUSE_PASSWORD"].startswith("${"), "secrets come from .env"
        volume = node["volumes"][0].split(":")[0]
        assert volume in compose["volumes"] and volume not in seen, name
        seen.add(volume)
        assert {"ch-cluster-config", "ch-cluster-users"} <= _mounted(node), name
        assert node["depends_on"]["keeper"]["condition"] == "service_healthy", name
    macros = _config(compose, "ch-cluster-config").find("macros")
    assert macros is not None
    assert {m.tag: m.get("from_env") for m in macros} == {
        "shard": "CDR_SHARD", "replica": "CDR_REPLICA"}


def test_remote_servers_name_every_node_once_with_internal_replication(
    compose: dict[str, Any],
) -> None:
    config = _config(compose, "ch-cluster-config")
    cluster = config.find(f"remote_servers/{CLUSTER}")
    assert cluster is not None
    shards = cluster.findall("shard")
    assert len(shards) == 2
    hosts = []
    for number, shard in enumerate(shards, 1):
        assert shard.findtext("internal_replication") == "true"
        replicas = [r.findtext("host") for r in shard.findall("replica")]
        assert replicas == [f"ch-s{number}-r1", f"ch-s{number}-r2"]
        for replica in shard.findall("replica"):  # shards log in to each other as the app user
            password = replica.find("password")
            assert password is not None and password.get("from_env") == "CLICKHOUSE_PASSWORD"
        hosts += replicas
    assert sorted(hosts) == sorted(NODES) and set(hosts) <= set(compose["services"])


def test_keeper_is_where_the_servers_coordinate(compose: dict[str, Any]) -> None:
    keeper = compose["services"]["keeper"]
    assert keeper["image"].startswith("clickhouse/clickhouse-keeper:")
    assert keeper["volumes"][0].split(":")[0] in compose["volumes"]
    assert "ruok" in " ".join(keeper["healthcheck"]["test"])
    port = _config(compose, "keeper-config").findtext("keeper_server/tcp_port")
    node = _config(compose, "ch-cluster-config").find("zookeeper/node")
    assert node is not None
    assert (node.findtext("host"), node.findtext("port")) == ("keeper", port)
    ddl = _config(compose, "ch-cluster-config").findtext("distributed_ddl/path")
    assert ddl


def test_inserts_through_distributed_tables_are_synchronous(compose: dict[str, Any]) -> None:
    users = _config(compose, "ch-cluster-users")
    assert users.findtext("profiles/default/insert_distributed_sync") == "1"


def test_cluster_pipeline_services_migrate_on_the_cluster_and_use_it(
    compose: dict[str, Any],
) -> None:
    from pipeline.cli import build_parser
    from pipeline.storage.url import parse_clickhouse_url

    services = compose["services"]
    migrate = services["migrate-cluster"]
    args = build_parser().parse_args(migrate["command"])
    assert args.cluster == CLUSTER
    for name in ("migrate-cluster", "sink-cluster", "dashboard-cluster"):
        env = services[name]["environment"]
        url = parse_clickhouse_url(env["CDR_CLICKHOUSE_URL"])
        assert url.host in NODES, name
        assert env["CDR_CLICKHOUSE_CLUSTER"] == CLUSTER, name
        depends = services[name]["depends_on"]
        if name == "migrate-cluster":
            assert {n for n, d in depends.items() if d["condition"] == "service_healthy"} == set(
                NODES)
        else:
            assert depends["migrate-cluster"]["condition"] == "service_completed_successfully"
    assert services["sink-cluster"]["depends_on"]["kafka"]["condition"] == "service_healthy"
