"""Pure parts of the local stack."""

from __future__ import annotations

import base64
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from worker.devtools import stack, stack_kafka


def test_a_cluster_id_never_starts_with_a_dash(monkeypatch: pytest.MonkeyPatch) -> None:
    # 0xF8 makes the first base64 character '-', which the storage tool
    # would take for an option.
    ids: Iterator[uuid.UUID] = iter(
        [uuid.UUID(bytes=b"\xf8" + bytes(15)), uuid.UUID(bytes=b"\x01" + bytes(15))]
    )
    monkeypatch.setattr(uuid, "uuid4", lambda: next(ids))
    cluster_id = stack.new_cluster_id()
    assert not cluster_id.startswith("-")
    assert base64.urlsafe_b64decode(cluster_id + "==") == b"\x01" + bytes(15)


def properties(text: str) -> dict[str, str]:
    lines = [line for line in text.splitlines() if "=" in line and not line.startswith("#")]
    return dict(line.split("=", 1) for line in lines)


@pytest.mark.parametrize(
    ("brokers", "replication", "min_insync"), [(1, "1", "1"), (3, "3", "2"), (5, "3", "2")]
)
def test_every_node_of_a_cluster_votes_and_replicates(
    tmp_path: Path, brokers: int, replication: str, min_insync: str
) -> None:
    ports = dict(zip(stack_kafka.all_port_names(brokers), range(9001, 9100), strict=False))
    cluster = stack_kafka.KafkaCluster(tmp_path, ports, brokers, {})
    voters = ",".join(f"{n}@127.0.0.1:{ports[stack_kafka.port_names(n)[1]]}" for n in cluster.nodes)
    for node in cluster.nodes:
        config = properties(Path(cluster._write_config(node)).read_text())
        assert config["node.id"] == str(node)
        assert config["controller.quorum.voters"] == voters
        assert config["listeners"].startswith(f"PLAINTEXT://127.0.0.1:{cluster.port(node)},")
        assert config["log.dirs"] == str(cluster.node_dir(node) / "data")
        for name in ("default.replication.factor", "offsets.topic.replication.factor"):
            assert config[name] == replication
        assert config["min.insync.replicas"] == min_insync
    expected = ",".join(f"127.0.0.1:{cluster.port(n)}" for n in cluster.nodes)
    assert cluster.bootstrap() == expected
    assert len({cluster.node_dir(n) for n in cluster.nodes}) == brokers


def test_with_a_proxy_the_broker_advertises_the_proxy(tmp_path: Path) -> None:
    ports = {"kafka": 9001, "controller": 9002, "sasl": 9003, "kafka-proxy": 9004}
    cluster = stack_kafka.KafkaCluster(tmp_path, ports, 1, {})
    config = properties(Path(cluster._write_config(1)).read_text())
    assert config["listeners"].startswith("PLAINTEXT://127.0.0.1:9001,")
    assert config["advertised.listeners"] == (
        "PLAINTEXT://127.0.0.1:9004,SASL_PLAINTEXT://127.0.0.1:9003"
    )
    assert cluster.bootstrap() == "127.0.0.1:9004"
    assert cluster.bootstrap(sasl=True) == "127.0.0.1:9003"


@pytest.mark.parametrize(("brokers", "database_url"), [(3, None), (1, "postgresql://x@h/db")])
def test_proxies_need_one_broker_and_the_stacks_own_database(
    tmp_path: Path, brokers: int, database_url: str | None
) -> None:
    with pytest.raises(stack.StackError, match="proxies need one broker"):
        stack.LocalStack(tmp_path, database_url, brokers, proxy=True)
