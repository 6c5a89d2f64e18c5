"""Prefect's side of the Kafka broker's tests, run with the Prefect venv's
python and the repository on PYTHONPATH:

    broker_checks.py NAME OUT    one check; what it saw, as JSON, into OUT

Each check drives `worker.prefect_messaging` through Prefect's own entry
points (`create_publisher`, `create_consumer`, `ephemeral_subscription`,
`break_topic`), against the Kafka broker of PERSISTER_KAFKA_BOOTSTRAP_SERVERS,
with PREFECT_MESSAGING_BROKER and PREFECT_MESSAGING_CACHE set by the test.
The test asserts on the output; a check only reports.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import sys
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from prefect.server.utilities import messaging
from prefect.server.utilities.messaging import Message, StopConsumer
from prefect.settings import PREFECT_MESSAGING_BROKER

from worker.prefect_messaging import clients
from worker.prefect_messaging.settings import MessagingSettings

SETTINGS = MessagingSettings()
DEADLINE_S = 60.0
Check = Callable[[], Awaitable[dict[str, Any]]]


def ids(count: int) -> list[str]:
    return [str(uuid.uuid4()) for _ in range(count)]


async def publish(topic: str, items: list[tuple[bytes, dict[str, str]]], dedup: bool) -> None:
    async with messaging.create_publisher(topic, deduplicate_by="id" if dedup else None) as p:
        for data, attributes in items:
            await p.publish_data(data, attributes)


async def consume(
    topic: str,
    group: str | None,
    count: int,
    stop: Callable[[Message, int], None] | None = None,
    **extra: Any,
) -> list[Message]:
    """Run a consumer of `group` until it has handled `count` messages (then
    StopConsumer with ack) or `stop` raised StopConsumer itself."""
    seen: list[Message] = []

    async def handler(message: Message) -> None:
        seen.append(message)
        if stop is not None:
            stop(message, len(seen))
        if len(seen) == count:
            raise StopConsumer(ack=True)

    consumer = messaging.create_consumer(topic, group=group, name=f"{group}-check", **extra)
    await asyncio.wait_for(consumer.run(handler), DEADLINE_S)
    return seen


async def raw_records(topic: str) -> list[dict[str, Any]]:
    """Every record of the Kafka topic, as any Kafka client reads it."""
    kafka_topic = SETTINGS.kafka_topic(topic)
    admin = AIOKafkaAdminClient(**SETTINGS.kafka_options())
    await admin.start()
    try:
        [described] = await admin.describe_topics([kafka_topic])
    finally:
        await admin.close()
    parts = [TopicPartition(kafka_topic, p["partition"]) for p in described["partitions"]]
    reader = AIOKafkaConsumer(
        **SETTINGS.kafka_options(), enable_auto_commit=False, auto_offset_reset="earliest"
    )
    await reader.start()
    try:
        reader.assign(parts)
        ends = await reader.end_offsets(parts)
        found: list[dict[str, Any]] = []
        while [tp for tp in parts if await reader.position(tp) < ends[tp]]:
            for records in (await reader.getmany(timeout_ms=1000)).values():
                found += [
                    {
                        "key": r.key.decode() if r.key else None,
                        "value": (r.value or b"").decode(),
                        "headers": {k: v.decode() for k, v in r.headers},
                    }
                    for r in records
                ]
        return found
    finally:
        await reader.stop()


async def groups() -> list[str]:
    admin = AIOKafkaAdminClient(**SETTINGS.kafka_options())
    await admin.start()
    try:
        return sorted(g[0] for g in await admin.list_consumer_groups())
    finally:
        await admin.close()


def message_form(m: Message) -> dict[str, Any]:
    data = m.data.decode() if isinstance(m.data, bytes) else m.data
    return {"data": data, "attributes": dict(m.attributes)}


async def round_trip() -> dict[str, Any]:
    event_ids = ids(3)
    items = [(f'{{"n": {n}}}'.encode(), {"id": i, "event": "x.y"}) for n, i in enumerate(event_ids)]
    await publish("events", items, dedup=False)
    got = await consume("events", "round-trip", 3)
    return {
        "ids": event_ids,
        "consumed": sorted((message_form(m) for m in got), key=lambda m: m["data"]),
        "records": sorted(await raw_records("events"), key=lambda r: r["value"]),
    }


async def deduplication() -> dict[str, Any]:
    event_ids = ids(5)
    items = [(b"{}", {"id": i}) for i in event_ids]
    await publish("events", items, dedup=True)
    await publish("events", items[:3], dedup=True)
    await publish("events", [(b"{}", {"other": "x"})], dedup=True)
    return {"ids": event_ids, "records": await raw_records("events")}


async def publish_ids() -> dict[str, Any]:
    """Publish, deduplicated by id, the ids in CHECK_IDS (one process of
    several doing the same)."""
    event_ids = os.environ["CHECK_IDS"].split(",")
    await publish("events", [(b"{}", {"id": i}) for i in event_ids], dedup=True)
    return {}


async def publish_ids_failing() -> dict[str, Any]:
    """As publish_ids, but Kafka refuses every message."""
    broker = importlib.import_module(PREFECT_MESSAGING_BROKER.value())
    async with broker.break_topic():
        try:
            await publish_ids()
        except ValueError as exc:
            return {"failed": str(exc)}
    return {"failed": None}


async def new_group_starts_at_the_end() -> dict[str, Any]:
    """A group that never committed, under the default setting: what was
    published before it joined is not delivered, what comes after is."""
    await publish("events", [(b"old", {"id": "1"})], dedup=False)
    seen: list[str] = []

    async def handler(message: Message) -> None:
        seen.append(message_form(message)["data"])
        raise StopConsumer(ack=True)

    consumer = messaging.create_consumer("events", group="new-group", name="new")
    running = asyncio.create_task(consumer.run(handler))
    async with asyncio.timeout(DEADLINE_S):
        while True:  # polled: the consumer has no event to wait on
            if consumer._kafka is not None and consumer._kafka.assignment():
                break
            await asyncio.sleep(0.05)
        for tp in consumer._kafka.assignment():
            await consumer._kafka.position(tp)  # the start is resolved
        await publish("events", [(b"new", {"id": "1"})], dedup=False)
        await running
    return {"consumed": seen}


async def records() -> dict[str, Any]:
    return {"records": await raw_records("events")}


async def stop_consumer() -> dict[str, Any]:
    # One key: one partition, so "first" is read before "second".
    await publish("events", [(b"first", {"id": "1"}), (b"second", {"id": "1"})], dedup=False)

    def without_ack(message: Message, seen: int) -> None:
        raise StopConsumer(ack=False)

    def with_ack(message: Message, seen: int) -> None:
        raise StopConsumer(ack=True)

    runs = [
        await consume("events", "stopping", 99, without_ack),
        await consume("events", "stopping", 99, with_ack),
        await consume("events", "stopping", 99, with_ack),
    ]
    return {"runs": [[message_form(m)["data"] for m in run] for run in runs]}


async def shared_group() -> dict[str, Any]:
    kafka_topic = SETTINGS.kafka_topic("events")
    await clients.ensure_topic(SETTINGS, kafka_topic)
    seen: dict[str, list[str]] = {"a": [], "b": []}
    consumers = {n: messaging.create_consumer("events", group="shared", name=n) for n in seen}
    expected = 200
    all_seen = asyncio.Event()

    def handler_of(name: str) -> Callable[[Message], Awaitable[None]]:
        async def handler(message: Message) -> None:
            seen[name].append(message.attributes["id"])
            if sum(map(len, seen.values())) >= expected:
                all_seen.set()

        return handler

    tasks = [asyncio.create_task(c.run(handler_of(n))) for n, c in consumers.items()]
    assigned: dict[str, list[int]] = {}
    async with asyncio.timeout(DEADLINE_S):
        while True:
            assigned = {
                n: sorted(tp.partition for tp in c._kafka.assignment()) if c._kafka else []
                for n, c in consumers.items()
            }
            if sum(map(len, assigned.values())) == SETTINGS.prefect_topic_partitions and all(
                assigned.values()
            ):
                break
            await asyncio.sleep(0.1)
        await publish("events", [(b"{}", {"id": i}) for i in ids(expected)], dedup=False)
        await all_seen.wait()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return {"assigned": assigned, "seen": seen}


async def commit_retried() -> dict[str, Any]:
    """The group's first commit fails (a coordinator moving, say) and no
    record comes after the handled ones: the consumer commits them after
    its next poll, and the group's committed offsets reach the topic's end."""
    kafka_topic = SETTINGS.kafka_topic("events")
    await clients.ensure_topic(SETTINGS, kafka_topic)
    expected = 20
    real_commit = AIOKafkaConsumer.commit
    failed: list[int] = []

    async def commit_failing_once(self: AIOKafkaConsumer, offsets: Any = None) -> None:
        if not failed:
            failed.append(len(offsets or {}))
            raise KafkaError("the first commit fails")
        await real_commit(self, offsets)

    AIOKafkaConsumer.commit = commit_failing_once
    seen: list[str] = []

    async def handler(message: Message) -> None:
        seen.append(message.attributes["id"])

    consumer = messaging.create_consumer("events", group="retried", name="retried")
    task = asyncio.create_task(consumer.run(handler))
    partitions = [TopicPartition(kafka_topic, p) for p in range(SETTINGS.prefect_topic_partitions)]
    reader = AIOKafkaConsumer(**SETTINGS.kafka_options())
    admin = AIOKafkaAdminClient(**SETTINGS.kafka_options())
    await reader.start()
    await admin.start()
    committed: dict[int, int] = {}
    try:
        async with asyncio.timeout(DEADLINE_S):
            # A new group starts at the end: publish once it is there.
            while True:
                kafka = consumer._kafka
                if kafka is not None and len(kafka.assignment()) == len(partitions):
                    break
                await asyncio.sleep(0.1)
            await publish("events", [(b"{}", {"id": i}) for i in ids(expected)], dedup=False)
            ends = {tp.partition: o for tp, o in (await reader.end_offsets(partitions)).items()}
            while committed != {p: o for p, o in ends.items() if o}:
                offsets = await admin.list_consumer_group_offsets("retried")
                committed = {tp.partition: at.offset for tp, at in offsets.items() if at.offset}
                await asyncio.sleep(0.1)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await reader.stop()
        await admin.close()
        AIOKafkaConsumer.commit = real_commit
    return {"failed": len(failed), "seen": len(seen), "committed": sum(committed.values())}


async def ephemeral() -> dict[str, Any]:
    await publish("events", [(b"before", {"id": "0"})], dedup=False)
    before = await groups()
    async with messaging.ephemeral_subscription("events") as kwargs:
        await publish("events", [(b"during", {"id": "1"})], dedup=False)
        got = await consume(group=None, count=1, **kwargs)
        during = await groups()
    return {
        "kwargs": sorted(kwargs),
        "consumed": [message_form(m)["data"] for m in got],
        "groups_before": before,
        "groups_during": during,
        "groups_after": await groups(),
    }


async def broken_topic() -> dict[str, Any]:
    event_id = str(uuid.uuid4())
    failed = ""
    # As Prefect's own tests reach it: through the broker module configured.
    broker = importlib.import_module(PREFECT_MESSAGING_BROKER.value())
    async with broker.break_topic():
        try:
            await publish("events", [(b"{}", {"id": event_id})], dedup=True)
        except ValueError as exc:
            failed = str(exc)
    await publish("events", [(b"{}", {"id": event_id})], dedup=True)
    return {"failed": failed, "records": len(await raw_records("events"))}


async def dead_letters() -> dict[str, Any]:
    await publish("events", [(b"bad", {"id": "1"}), (b"good", {"id": "1"})], dedup=False)
    calls: list[str] = []

    async def handler(message: Message) -> None:
        data = message_form(message)["data"]
        calls.append(data)
        if data == "bad":
            raise RuntimeError("cannot handle it")
        raise StopConsumer(ack=True)

    consumer = messaging.create_consumer("events", group="failing", name="failing-check")
    await asyncio.wait_for(consumer.run(handler), DEADLINE_S)
    letters = await raw_records("events.failing.dlq")
    return {"calls": calls, "dead_letters": letters}


async def foreign_producer() -> dict[str, Any]:
    kafka_topic = SETTINGS.kafka_topic("events")
    await clients.ensure_topic(SETTINGS, kafka_topic)
    event_id = str(uuid.uuid4())
    body = {"id": event_id, "event": "external.thing", "occurred": "2026-12-07T00:00:00Z"}
    producer = AIOKafkaProducer(**SETTINGS.kafka_options())
    await producer.start()
    try:
        await producer.send_and_wait(kafka_topic, json.dumps(body).encode())
    finally:
        await producer.stop()
    got = await consume("events", "foreign", 1)
    return {"id": event_id, "attributes": [dict(m.attributes) for m in got]}


async def persister_group() -> dict[str, Any]:
    """Prefect's event persister left on: its consumer is refused."""
    try:
        messaging.create_consumer("events", group="event-persister", name="persister")
    except ValueError as exc:
        return {"refused": str(exc)}
    return {"refused": None}


CHECKS: dict[str, Check] = {
    "persister_group": persister_group,
    "round_trip": round_trip,
    "deduplication": deduplication,
    "publish_ids": publish_ids,
    "publish_ids_failing": publish_ids_failing,
    "new_group_starts_at_the_end": new_group_starts_at_the_end,
    "records": records,
    "stop_consumer": stop_consumer,
    "shared_group": shared_group,
    "commit_retried": commit_retried,
    "ephemeral": ephemeral,
    "broken_topic": broken_topic,
    "dead_letters": dead_letters,
    "foreign_producer": foreign_producer,
}


async def main(name: str) -> dict[str, Any]:
    try:
        return await CHECKS[name]()
    finally:
        await clients.close_producer()


if __name__ == "__main__":
    Path(sys.argv[2]).write_text(json.dumps(asyncio.run(main(sys.argv[1]))))
