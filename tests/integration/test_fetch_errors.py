"""Fetches that waiting does not heal: a batch that cannot be read stops its
partition loudly while the others flow, and it goes on once the batch can be
read; a stored offset outside the log follows one rule, said at ERROR."""

from __future__ import annotations

import logging
import random
import uuid
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka import codec as aiokafka_codec
from aiokafka.admin import AIOKafkaAdminClient, RecordsToDelete
from sqlalchemy.ext.asyncio import AsyncEngine

from schemas.tables import events
from tests.integration.support import (
    count,
    create_topic,
    end_offsets,
    running,
    send,
    settings_for,
    stored_offsets,
    unique,
    wait_persisted,
    wait_until,
)
from worker.core import metrics
from worker.devtools.loadgen import make_event
from worker.devtools.stack import LocalStack, StackInfo
from worker.pipeline.persister import Persister
from worker.services.health_server import readiness_problems


def values(n: int, rng: random.Random, note: str = "") -> list[bytes]:
    out = []
    for _ in range(n):
        event = make_event(rng, payload_bytes=100)
        event["payload"]["marker"] = note
        out.append(orjson.dumps(event))
    return out


def sample(name: str, labels: dict[str, str]) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


def said_once(caplog: pytest.LogCaptureFixture, text: str, level: str = "ERROR") -> str:
    """The one log line containing `text`, checked to be at `level`."""
    said = [r for r in caplog.records if text in r.getMessage()]
    assert [r.levelname for r in said] == [level], [r.getMessage() for r in said]
    return said[0].getMessage()


async def send_snappy(info: StackInfo, topic: str, batch: list[bytes]) -> None:
    producer = AIOKafkaProducer(
        bootstrap_servers=info.kafka_bootstrap_servers, compression_type="snappy"
    )
    await producer.start()
    try:
        for future in [await producer.send(topic, v, partition=0) for v in batch]:
            await future
    finally:
        await producer.stop()


def flip(segment_dir: Path, old: bytes, new: bytes) -> None:
    """Replace bytes in a partition's first log segment, as disk corruption would."""
    segment = segment_dir / "00000000000000000000.log"
    data = segment.read_bytes()
    assert data.count(old) == 1, f"expected {old!r} once in {segment}"
    with segment.open("r+b") as f:
        f.seek(data.index(old))
        f.write(new)


@pytest.mark.parametrize("broken", ["corrupt-batch", "codec-missing"])
async def test_an_unreadable_batch_stops_its_partition_loudly_and_others_flow(
    broken: str,
    local_stack: LocalStack,
    stack_info: StackInfo,
    engine: AsyncEngine,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    topic = unique(broken)
    await create_topic(stack_info, topic, 2)
    rng = random.Random(5)
    marker = f"BREAK-{uuid.uuid4().hex}"
    # Partition 0: 50 records, one batch of 3 that cannot be read, 50 more;
    # partition 1: 100 records fetched beside it.
    await send(stack_info, topic, values(50, rng), partition=0)
    bad = values(1, rng, note=marker) + values(2, rng)
    if broken == "codec-missing":
        await send_snappy(stack_info, topic, bad)
        fix: Callable[[], None] = monkeypatch.undo
        monkeypatch.setattr(aiokafka_codec, "cramjam", None)
    else:
        await send(stack_info, topic, bad, partition=0)
        segment_dir = local_stack.kafka_partition_dir(topic, 0)
        flip(segment_dir, marker.encode(), marker.lower().encode())

        def fix() -> None:
            flip(segment_dir, marker.lower().encode(), marker.encode())

    await send(stack_info, topic, values(50, rng), partition=0)
    await send(stack_info, topic, values(100, rng), partition=1)
    ends = await end_offsets(stack_info, topic, 2)
    assert ends == {0: 103, 1: 100}
    settings = settings_for(stack_info, topic, fetch_retry_s=0.5)
    errors_before = sum(
        sample("persister_fetch_errors_total", {"error": e})
        for e in ("CorruptRecordException", "UnsupportedCodecError")
    )

    with caplog.at_level(logging.INFO):
        async with running(Persister(settings, engine)):
            await wait_persisted(engine, settings.group_id, topic, {0: 50, 1: 100})

            async def retried_a_few_times() -> bool:
                total = sum(
                    sample("persister_fetch_errors_total", {"error": e})
                    for e in ("CorruptRecordException", "UnsupportedCodecError")
                )
                return total - errors_before >= 4

            await wait_until(retried_a_few_times, 30, "the partition to be retried")
            assert await stored_offsets(engine, settings.group_id, topic) == {0: 50, 1: 100}
            stopped = said_once(caplog, f"{topic}[0]: cannot read the records at offset 50")
            problems = readiness_problems(expect_persister=True)
            assert [p for p in problems if f"{topic}[0]" in p] == [stopped]
            assert sample("persister_conditions", {"kind": "fetch"}) == 1

            fix()  # the batch can be read again (a new leader, a library installed)
            await wait_persisted(engine, settings.group_id, topic, ends)
            said_once(caplog, f"{topic}[0]: reading again at offset 50", "INFO")
            problems = readiness_problems(expect_persister=True)
            assert not [p for p in problems if topic in p]
            assert sample("persister_conditions", {"kind": "fetch"}) == 0
    assert await count(engine, events) == 203


async def test_a_topic_recreated_under_a_running_worker_is_read_again_from_its_start(
    stack_info: StackInfo, engine: AsyncEngine, caplog: pytest.LogCaptureFixture
) -> None:
    topic = unique("recreated")
    await create_topic(stack_info, topic, 1)
    rng = random.Random(6)
    await send(stack_info, topic, values(100, rng), partition=0)
    settings = settings_for(stack_info, topic, metadata_max_age_s=1.0)
    resets_before = sample("persister_offset_resets_total", {"reason": "past_end"})

    with caplog.at_level(logging.INFO):
        async with running(Persister(settings, engine)):
            await wait_persisted(engine, settings.group_id, topic, {0: 100})
            admin = AIOKafkaAdminClient(bootstrap_servers=stack_info.kafka_bootstrap_servers)
            await admin.start()
            try:
                await admin.delete_topics([topic])

                async def gone() -> bool:
                    return topic not in await admin.list_topics()

                await wait_until(gone, 30, f"{topic} to be deleted")
            finally:
                await admin.close()
            await create_topic(stack_info, topic, 1)
            # Fewer records than before: the stored offset is past the new end.
            await send(stack_info, topic, values(30, rng), partition=0)
            await wait_persisted(engine, settings.group_id, topic, {0: 30})

            async def caught_up() -> bool:
                return not [p for p in metrics.readiness.conditions.values() if topic in p]

            await wait_until(caught_up, 10, "the reset condition to clear")

    assert await count(engine, events) == 130
    said_once(caplog, f"{topic}[0]: stored offset 100 is past the log end")
    assert sample("persister_offset_resets_total", {"reason": "past_end"}) == resets_before + 1
    said_once(caplog, f"{topic}[0]: caught up after the reset", "INFO")


async def test_records_deleted_before_they_were_stored_are_counted_at_error(
    stack_info: StackInfo, engine: AsyncEngine, caplog: pytest.LogCaptureFixture
) -> None:
    topic = unique("deleted")
    await create_topic(stack_info, topic, 1)
    rng = random.Random(7)
    await send(stack_info, topic, values(20, rng), partition=0)
    settings = settings_for(stack_info, topic)
    async with running(Persister(settings, engine)):
        await wait_persisted(engine, settings.group_id, topic, {0: 20})
    # While no worker runs, 80 more arrive and Kafka deletes up to offset 60.
    await send(stack_info, topic, values(80, rng), partition=0)
    admin = AIOKafkaAdminClient(bootstrap_servers=stack_info.kafka_bootstrap_servers)
    await admin.start()
    try:
        await admin.delete_records({TopicPartition(topic, 0): RecordsToDelete(60)})
    finally:
        await admin.close()
    resets_before = sample("persister_offset_resets_total", {"reason": "before_start"})

    with caplog.at_level(logging.INFO):
        async with running(Persister(settings, engine)):
            await wait_persisted(engine, settings.group_id, topic, {0: 100})

    assert await count(engine, events) == 20 + 40
    said_once(caplog, f"{topic}[0]: 40 records (20..59) were deleted from Kafka")
    assert sample("persister_offset_resets_total", {"reason": "before_start"}) == resets_before + 1
