"""The local stack really starts Kafka and PostgreSQL, survives a broker restart and stops."""

from __future__ import annotations

import asyncio
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import asyncpg  # type: ignore[import-untyped, unused-ignore]
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from worker.stack import LocalStack

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
