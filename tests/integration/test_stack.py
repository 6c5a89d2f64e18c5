"""The local stack really starts Kafka and PostgreSQL, survives a broker restart and stops."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import asyncpg  # type: ignore[import-untyped, unused-ignore]
import psutil
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import UnknownTopicOrPartitionError

from tests.integration.cluster import busiest_leader, describe, fully_replicated, leaders
from tests.integration.support import wait_until
from worker.core.kafka_admin import create_topic, topic_config
from worker.devtools.stack import LocalStack

pytestmark = pytest.mark.integration

TOPIC = "stack-check"
PARTITIONS = [TopicPartition(TOPIC, 0), TopicPartition(TOPIC, 1)]


async def select_one(database_url: str) -> int:
    plain_url = database_url.replace("postgresql+asyncpg://", "postgresql://")
    conn = await asyncpg.connect(plain_url)
    try:
        return int(await conn.fetchval("SELECT 1"))
    finally:
        await conn.close()


async def create_topic_and_produce(bootstrap: str, count: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(TOPIC, num_partitions=2, replication_factor=1)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for i in range(count):
            await producer.send_and_wait(TOPIC, f"event {i}".encode(), partition=i % 2)
    finally:
        await producer.stop()


async def end_offsets_total(bootstrap: str) -> int:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        offsets = await consumer.end_offsets(PARTITIONS)
        return sum(offsets.values())
    finally:
        await consumer.stop()


def refuses_connections(address: str) -> bool:
    host, port = address.rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=2.0).close()
    except OSError:
        return True
    return False


@pytest.fixture
def stack_dir() -> Iterator[Path]:
    """Outside pytest's own temporary directories, which it keeps closed to
    other users: PostgreSQL runs as its own user."""
    with tempfile.TemporaryDirectory(prefix="persister-stack-test-") as tmp:
        yield Path(tmp)


def test_local_stack_starts_restarts_kafka_and_stops(stack_dir: Path) -> None:
    # database_url=None: a real PostgreSQL cluster even when DATABASE_URL is set.
    stack = LocalStack(stack_dir / "stack", database_url=None)
    try:
        info = stack.start()
        assert asyncio.run(select_one(info.database_url)) == 1
        asyncio.run(create_topic_and_produce(info.kafka_bootstrap_servers, 5))
        assert asyncio.run(end_offsets_total(info.kafka_bootstrap_servers)) == 5

        stack.stop_kafka()
        assert refuses_connections(info.kafka_bootstrap_servers)
        stack.start_kafka()
        assert stack.info == info
        assert asyncio.run(end_offsets_total(info.kafka_bootstrap_servers)) == 5, (
            stack.kafka_log_tail()
        )
    finally:
        stack.stop()

    assert refuses_connections(info.kafka_bootstrap_servers)
    pg_address = info.database_url.split("@", 1)[1].split("/", 1)[0]
    assert refuses_connections(pg_address)
    assert "export DATABASE_URL=" in info.exports()


async def produce_to(bootstrap: str, topic: str, count: int) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        for i in range(count):
            await producer.send_and_wait(topic, f"event {i}".encode(), partition=i % 3)
    finally:
        await producer.stop()


async def cluster_end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        offsets = await consumer.end_offsets([TopicPartition(topic, p) for p in range(3)])
        return {tp.partition: offset for tp, offset in offsets.items()}
    finally:
        await consumer.stop()


async def cluster_survives_a_lost_node(stack: LocalStack) -> None:
    info = stack.info
    options = {"bootstrap_servers": info.kafka_bootstrap_servers}
    assert await create_topic(options, "replicated", 3)

    async def durable() -> bool:
        # Asked of any node: wait until they all know the new topic.
        with contextlib.suppress(UnknownTopicOrPartitionError):
            return await topic_config(options, "replicated", "min.insync.replicas") == "2"
        return False

    await wait_until(durable, 30, "the topic's min.insync.replicas to read 2")
    (described,) = await describe(info, ["replicated"])
    assert [len(p["replicas"]) for p in described["partitions"]] == [3, 3, 3]
    await wait_until(lambda: fully_replicated(info, ["replicated"]), 60, "replicas in sync")
    await produce_to(info.kafka_bootstrap_servers, "replicated", 30)

    node, led = await busiest_leader(info, "replicated")
    await asyncio.to_thread(stack.stop_kafka, [node], signal.SIGKILL)
    assert refuses_connections(f"127.0.0.1:{stack.kafka.port(node)}")

    async def moved() -> bool:
        now = await leaders(info, "replicated")
        return all(now[p] not in (node, -1) for p in led)

    await wait_until(moved, 60, f"leaders of {led} to move off node {node}", 0.2)
    # Two replicas in sync are enough for acks=all with min.insync.replicas=2.
    await produce_to(info.kafka_bootstrap_servers, "replicated", 30)
    await asyncio.to_thread(stack.start_kafka, [node])
    await wait_until(lambda: fully_replicated(info, ["replicated"]), 60, "replicas in sync")
    ends = await cluster_end_offsets(info.kafka_bootstrap_servers, "replicated")
    assert ends == {0: 20, 1: 20, 2: 20}, stack.kafka_log_tail()


def test_local_stack_runs_a_three_broker_cluster_and_stops_every_node(stack_dir: Path) -> None:
    stack = LocalStack(
        stack_dir / "cluster", database_url="postgresql://unused@127.0.0.1/x", brokers=3
    )
    pids: list[int] = []
    try:
        info = stack.start()
        pids = list(stack.kafka.pids.values())
        assert len(info.kafka_bootstrap_servers.split(",")) == 3
        assert stack.kafka.quorum_leader() in (1, 2, 3)
        asyncio.run(cluster_survives_a_lost_node(stack))
        pids += list(stack.kafka.pids.values())
    finally:
        stack.stop()

    for address in info.kafka_bootstrap_servers.split(","):
        assert refuses_connections(address)
    assert not [pid for pid in set(pids) if psutil.pid_exists(pid)]
