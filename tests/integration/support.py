"""Helpers for tests against the real broker and database."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from typing import Any

from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from sqlalchemy import func, make_url, select, text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from schemas.migrate import upgrade
from schemas.tables import consumer_offsets, dead_letters, event_resources, events
from worker.core import kafka_admin
from worker.core.settings import Settings
from worker.devtools.stack import StackInfo
from worker.pipeline.persister import Persister


async def upgrade_async(database_url: str) -> None:
    """`persister migrate`'s migrations, from a test's event loop."""
    # The migration environment runs its own event loop: not in this one.
    await asyncio.to_thread(upgrade, database_url)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def settings_for(info: StackInfo, topic: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "kafka_bootstrap_servers": info.kafka_bootstrap_servers,
        "database_url": info.database_url,
        "topics": (topic,),
        "group_id": f"group-{topic}",
        "flush_every_s": 0.2,
        "session_timeout_s": 10.0,
    }
    values.update(overrides)
    return Settings(**values)


async def create_topic(info: StackInfo, topic: str, partitions: int) -> None:
    """As the worker creates topics: on a cluster, replicated 3 times with
    min.insync.replicas 2."""
    options = {"bootstrap_servers": info.kafka_bootstrap_servers}
    await kafka_admin.create_topic(options, topic, partitions)


async def send(
    info: StackInfo, topic: str, values: Iterable[bytes | None], partition: int | None = None
) -> list[tuple[int, int]]:
    """Send values; returns (partition, offset) of each, in order."""
    # Acknowledged by every in-sync replica, and never written twice by a
    # retry: what a broker failure may not lose or duplicate.
    producer = AIOKafkaProducer(
        bootstrap_servers=info.kafka_bootstrap_servers,
        linger_ms=5,
        acks="all",
        enable_idempotence=True,
    )
    await producer.start()
    try:
        futures = [
            await producer.send(
                topic, v, key=b"tombstone" if v is None else None, partition=partition
            )
            for v in values
        ]
        metadata = [await f for f in futures]
    finally:
        await producer.stop()
    return [(m.partition, m.offset) for m in metadata]


async def end_offsets(info: StackInfo, topic: str, partitions: int) -> dict[int, int]:
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(bootstrap_servers=info.kafka_bootstrap_servers)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        ends = await consumer.end_offsets(tps)
    finally:
        await consumer.stop()
    return {tp.partition: offset for tp, offset in ends.items()}


async def count(engine: AsyncEngine, table: Any) -> int:
    async with engine.connect() as conn:
        return int((await conn.execute(select(func.count()).select_from(table))).scalar_one())


async def stored_offsets(engine: AsyncEngine, group_id: str, topic: str) -> dict[int, int]:
    c = consumer_offsets.c
    async with engine.connect() as conn:
        rows = await conn.execute(
            select(c.partition, c.next_offset).where(c.group_id == group_id, c.topic == topic)
        )
        return {p: o for p, o in rows}


async def counts(engine: AsyncEngine) -> tuple[int, int, int]:
    """(events, resource rows, dead letters)."""
    return (
        await count(engine, events),
        await count(engine, event_resources),
        await count(engine, dead_letters),
    )


async def wait_until(
    check: Callable[[], Awaitable[bool]], timeout_s: float, what: str, every_s: float = 0.05
) -> float:
    """Poll `check` until true; returns the seconds it took, fails at the deadline."""
    start = time.monotonic()
    while not await check():
        if time.monotonic() - start > timeout_s:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        await asyncio.sleep(every_s)
    return time.monotonic() - start


async def wait_persisted(
    engine: AsyncEngine, group: str, topic: str, ends: dict[int, int], timeout_s: float = 60
) -> float:
    """Wait until the stored offsets of every partition equal `ends`."""

    async def done() -> bool:
        return await stored_offsets(engine, group, topic) == ends

    return await wait_until(done, timeout_s, f"stored offsets of {topic} to reach {ends}")


@asynccontextmanager
async def running(persister: Persister) -> AsyncIterator[Persister]:
    """Run a persister in this event loop; stop it (flushing) on exit."""
    stopping, started = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(persister.run(stopping, started))
    await asyncio.wait([task, asyncio.create_task(started.wait())], return_when="FIRST_COMPLETED")
    if task.done():
        task.result()
    try:
        yield persister
    finally:
        stopping.set()
        await task


async def read_topic(info: StackInfo, topic: str) -> list[Any]:
    """Every record of a topic, from the beginning to the current end."""
    from aiokafka import AIOKafkaConsumer

    admin = AIOKafkaAdminClient(bootstrap_servers=info.kafka_bootstrap_servers)
    await admin.start()
    try:
        described = await admin.describe_topics([topic])
    finally:
        await admin.close()
    tps = [TopicPartition(topic, p["partition"]) for p in described[0]["partitions"]]
    assert tps, f"topic {topic} does not exist"
    consumer = AIOKafkaConsumer(
        bootstrap_servers=info.kafka_bootstrap_servers, enable_auto_commit=False
    )
    await consumer.start()
    records: list[Any] = []
    try:
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        for tp in tps:
            while await consumer.position(tp) < ends[tp]:
                fetched = await consumer.getmany(tp, timeout_ms=1000)
                records.extend(fetched.get(tp, []))
    finally:
        await consumer.stop()
    return records


@asynccontextmanager
async def fresh_database(server_url: str) -> AsyncIterator[str]:
    """A new, empty database on the session's PostgreSQL; dropped afterwards."""
    name = unique("shared").replace("-", "_")
    admin = create_async_engine(server_url, isolation_level="AUTOCOMMIT")
    try:
        async with admin.connect() as conn:
            await conn.execute(text(f'CREATE DATABASE "{name}"'))
        yield make_url(server_url).set(database=name).render_as_string(hide_password=False)
    finally:
        async with admin.connect() as conn:
            await conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        await admin.dispose()
