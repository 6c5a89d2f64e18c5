"""Dead letters of any size reach `<topic>.dlq` once each, whole or reduced,
and none holds back another; `dlq replay` sends a large one back or refuses
in one line."""

from __future__ import annotations

import asyncio
import logging
import os
import random
import subprocess
import sys
from datetime import UTC, datetime
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from schemas.tables import dead_letters
from tests.integration.support import (
    counts,
    end_offsets,
    read_topic,
    running,
    settings_for,
    stored_offsets,
    unique,
    wait_persisted,
    wait_until,
)
from worker.core import metrics
from worker.core.kafka_admin import create_topic, topic_config
from worker.devtools.loadgen import encode, make_event
from worker.devtools.stack import StackInfo
from worker.pipeline.dead_letters.records import origin
from worker.pipeline.persister import Persister
from worker.services.health_server import readiness_problems

LARGE = 2_000_000
# What a source topic takes in these tests (Kafka's default is about 1 MB).
SOURCE_LIMIT = 4 * 1024 * 1024


def event_of(size: int, seed: int) -> bytes:
    """A valid event of exactly `size` bytes. Both builds take the same time:
    `isoformat` leaves out a zero microsecond, so two clock readings can
    differ in length."""
    when = datetime.now(UTC).replace(microsecond=123_456)
    base = len(encode(make_event(random.Random(seed), 1, when, payload_bytes=0)))
    value = encode(make_event(random.Random(seed), 1, when, payload_bytes=size - base))
    assert len(value) == size
    return value


async def make_topic(info: StackInfo, topic: str, limit: int | None = SOURCE_LIMIT) -> None:
    configs = {} if limit is None else {"max.message.bytes": str(limit)}
    options = {"bootstrap_servers": info.kafka_bootstrap_servers}
    assert await create_topic(options, topic, partitions=1, configs=configs)


async def set_limit(info: StackInfo, topic: str, limit: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=info.kafka_bootstrap_servers)
    await admin.start()
    try:
        configs = {"max.message.bytes": str(limit)}
        await admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, topic, configs)])
    finally:
        await admin.close()
    options = {"bootstrap_servers": info.kafka_bootstrap_servers}

    async def applied() -> bool:
        return await topic_config(options, topic, "max.message.bytes") == str(limit)

    await wait_until(applied, 10, f"{topic}'s max.message.bytes to be {limit}")


async def produce(
    info: StackInfo, topic: str, values: list[bytes], keys: dict[int, bytes] | None = None
) -> list[int]:
    """Send values (with the key given by position, if any) to partition 0,
    large ones included; returns their offsets."""
    producer = AIOKafkaProducer(
        bootstrap_servers=info.kafka_bootstrap_servers, max_request_size=SOURCE_LIMIT
    )
    await producer.start()
    try:
        futures = [
            await producer.send(topic, value, key=(keys or {}).get(i), partition=0)
            for i, value in enumerate(values)
        ]
        return [(await future).offset for future in futures]
    finally:
        await producer.stop()


async def unpublished(engine: AsyncEngine) -> int:
    query = select(func.count()).where(dead_letters.c.published.is_(None))
    async with engine.connect() as conn:
        return int((await conn.execute(query)).scalar_one())


async def wait_all_published(engine: AsyncEngine, timeout_s: float = 30) -> None:
    async def none_left() -> bool:
        return await unpublished(engine) == 0

    await wait_until(none_left, timeout_s, "every dead letter to be marked as sent")


async def dead_letter_records(info: StackInfo, topic: str) -> dict[int, list[Any]]:
    """The records on `<topic>.dlq`, by the offset they came from."""
    found: dict[int, list[Any]] = {}
    for record in await read_topic(info, f"{topic}.dlq"):
        where = origin(record.headers)
        assert where is not None and where[1:3] == (topic, 0)
        found.setdefault(where[3], []).append(record)
    return found


def condition_gauge() -> float:
    value = metrics.registry.get_sample_value("persister_conditions", {"kind": "dead_letter_topic"})
    assert value is not None
    return value


def condition_lines(caplog: pytest.LogCaptureFixture, topic: str) -> list[tuple[str, str]]:
    return [
        (r.levelname, r.getMessage())
        for r in caplog.records
        if r.name == "worker.core.conditions" and r.getMessage().startswith(f"{topic}[0]:")
    ]


async def test_a_2_mb_dead_letter_goes_reduced_and_its_neighbours_whole_each_once(
    stack_info: StackInfo, engine: AsyncEngine
) -> None:
    """Default settings: the 2 MB message is a MessageTooLarge dead letter,
    whole in the table, reduced on the topic; the dead letters before and
    after it go whole; each is on the topic exactly once."""
    topic = unique("large")
    await make_topic(stack_info, topic)
    large = event_of(LARGE, seed=1)
    values = [
        event_of(500, seed=2),
        b"{broken",
        event_of(500, seed=3),
        large,
        b"not json",
        event_of(500, seed=4),
        b"[]",
    ]
    assert await produce(stack_info, topic, values) == list(range(7))
    settings = settings_for(stack_info, topic)
    async with running(Persister(settings, engine)) as persister:
        await wait_persisted(engine, settings.group_id, topic, {0: 7})
        await wait_all_published(engine)

    assert await counts(engine) == (3, 6, 4)
    async with engine.connect() as conn:
        rows = (await conn.execute(select(dead_letters).order_by(dead_letters.c.offset))).all()
    assert [(r.offset, r.error_class) for r in rows] == [
        (1, "InvalidJson"),
        (3, "MessageTooLarge"),
        (4, "InvalidJson"),
        (6, "InvalidEnvelope"),
    ]
    assert rows[1].value == large
    assert (persister.dead_letters.published, persister.dead_letters.reduced) == (4, 1)
    assert persister.dead_letters.failed_attempts == 0

    on_topic = await dead_letter_records(stack_info, topic)
    assert {offset: len(records) for offset, records in on_topic.items()} == {
        1: 1,
        3: 1,
        4: 1,
        6: 1,
    }
    for offset in (1, 4, 6):
        record = on_topic[offset][0]
        assert record.value == values[offset]
        assert "dlq.reduced" not in dict(record.headers)
    record = on_topic[3][0]
    found = dict(record.headers)
    assert record.value == b""
    assert found["dlq.error_class"] == b"MessageTooLarge"
    assert found["dlq.error"] == b"message is 2000000 bytes, more than max_message_bytes=1572864"
    assert (found["dlq.reduced"], found["dlq.value_bytes"]) == (b"true", b"2000000")
    assert (found["dlq.id"], found["dlq.key_bytes"]) == (str(rows[1].id).encode(), b"0")

    options = {"bootstrap_servers": stack_info.kafka_bootstrap_servers}
    assert await topic_config(options, f"{topic}.dlq", "max.message.bytes") == "1638400"


async def test_one_the_topic_refuses_whole_goes_reduced_and_holds_back_none(
    stack_info: StackInfo, engine: AsyncEngine, caplog: pytest.LogCaptureFixture
) -> None:
    """The dead-letter topic's limit drops under a running worker: the
    broker refuses a 500 kB dead letter whole; it goes reduced on the next
    attempt, with the ones after it, and nothing is on the topic twice."""
    topic = unique("refused")
    await make_topic(stack_info, topic)
    await make_topic(stack_info, f"{topic}.dlq", limit=None)
    settings = settings_for(stack_info, topic)
    middle = b'"' + b"x" * 500_000
    caplog.set_level(logging.INFO, logger="worker.core.conditions")
    async with running(Persister(settings, engine)) as persister:
        await produce(stack_info, topic, [b"{one"])
        await wait_persisted(engine, settings.group_id, topic, {0: 1})
        await wait_all_published(engine)
        await set_limit(stack_info, f"{topic}.dlq", 100_000)
        await produce(stack_info, topic, [b"{two", middle, b"{four", b"{five"])
        await wait_persisted(engine, settings.group_id, topic, {0: 5})
        await wait_all_published(engine)

    assert await counts(engine) == (0, 0, 5)
    assert (persister.dead_letters.published, persister.dead_letters.reduced) == (5, 1)
    assert persister.dead_letters.failed_attempts == 1
    on_topic = await dead_letter_records(stack_info, topic)
    assert {offset: len(records) for offset, records in on_topic.items()} == {
        0: 1,
        1: 1,
        2: 1,
        3: 1,
        4: 1,
    }
    assert [on_topic[offset][0].value for offset in range(5)] == [
        b"{one",
        b"{two",
        b"",
        b"{four",
        b"{five",
    ]
    assert dict(on_topic[2][0].headers)["dlq.value_bytes"] == b"500001"
    assert condition_lines(caplog, topic) == [
        (
            "WARNING",
            f"{topic}[0]: dead letters not sent to {topic}.dlq: MessageSizeTooLargeError() "
            "at offset 2; retrying with a jittered backoff of up to 5 s "
            "(they are in the persister_dead_letters table)",
        ),
        ("INFO", f"{topic}[0]: dead letters reach {topic}.dlq again"),
    ]


async def test_one_that_fits_not_even_reduced_is_reported_and_holds_back_none(
    stack_info: StackInfo, engine: AsyncEngine, caplog: pytest.LogCaptureFixture
) -> None:
    """A dead-letter topic that takes 1,000 bytes, and a dead letter with a
    1 kB key (kept in the reduced form): it waits in the table while the
    dead letters before and after it are sent and the events around it are
    written; the problem is logged once, shown by /readyz and counted;
    raising the limit ends it."""
    topic = unique("unfit")
    await make_topic(stack_info, topic)
    await make_topic(stack_info, f"{topic}.dlq", limit=1_000)
    settings = settings_for(stack_info, topic)
    caplog.set_level(logging.INFO, logger="worker.core.conditions")
    values = [event_of(500, seed=5), b"{before", b"{bad", b"{after", event_of(500, seed=6)]
    await produce(stack_info, topic, values, keys={2: b"k" * 1000})
    async with running(Persister(settings, engine)) as persister:
        await wait_persisted(engine, settings.group_id, topic, {0: 5})

        async def retried() -> bool:
            return persister.dead_letters.failed_attempts >= 2

        await wait_until(retried, 30, "two attempts at the dead letter")
        assert await counts(engine) == (2, 4, 3)
        assert await unpublished(engine) == 1
        assert persister.dead_letters.published == 2
        assert condition_gauge() == 1
        problems = readiness_problems(expect_persister=True)
        unfit = [p for p in problems if p.startswith(f"{topic}[0]: the dead letter of offset 2")]
        assert len(unfit) == 1, problems
        assert f"does not fit {topic}.dlq even reduced" in unfit[0]
        assert unfit[0].endswith(
            "the topic takes 1000); raise the topic's max.message.bytes, "
            "it is retried with a jittered backoff of up to 5 s"
        )

        await set_limit(stack_info, f"{topic}.dlq", 1_000_000)
        await wait_all_published(engine)

        async def cleared() -> bool:
            return condition_gauge() == 0

        await wait_until(cleared, 10, "the condition to end")
        assert not [p for p in readiness_problems(True) if p.startswith(f"{topic}[0]")]
    assert persister.dead_letters.published == 3
    on_topic = await dead_letter_records(stack_info, topic)
    assert {offset: len(records) for offset, records in on_topic.items()} == {1: 1, 2: 1, 3: 1}
    assert [on_topic[offset][0].value for offset in (1, 2, 3)] == [b"{before", b"{bad", b"{after"]
    assert on_topic[2][0].key == b"k" * 1000
    assert [level for level, _ in condition_lines(caplog, topic)] == ["ERROR", "INFO"]
    assert condition_lines(caplog, topic)[1] == (
        "INFO",
        f"{topic}[0]: every dead letter fits {topic}.dlq again",
    )


async def test_a_topic_that_cannot_be_created_is_reported_once_and_events_flow(
    stack_info: StackInfo, engine: AsyncEngine, caplog: pytest.LogCaptureFixture
) -> None:
    """A dead-letter topic name Kafka refuses: the dead letter stays in the
    table, the events are written, one WARNING, /readyz shows it until the
    worker lets go of the partition."""
    topic = unique("uncreatable")
    await make_topic(stack_info, topic)
    settings = settings_for(stack_info, topic, dead_letter_topic="<topic>/dlq")
    caplog.set_level(logging.INFO, logger="worker.core.conditions")
    await produce(stack_info, topic, [event_of(500, seed=8), b"{bad", event_of(500, seed=9)])
    async with running(Persister(settings, engine)) as persister:
        await wait_persisted(engine, settings.group_id, topic, {0: 3})

        async def retried() -> bool:
            return persister.dead_letters.failed_attempts >= 2

        await wait_until(retried, 30, "two attempts at the dead letter")
        assert await counts(engine) == (2, 4, 1)
        assert await unpublished(engine) == 1
        problems = readiness_problems(expect_persister=True)
        assert [p for p in problems if p.startswith(f"{topic}[0]")] == [
            condition_lines(caplog, topic)[0][1]
        ]
        assert condition_gauge() == 1
    assert condition_gauge() == 0
    lines = condition_lines(caplog, topic)
    assert len(lines) == 1
    assert lines[0][0] == "WARNING"
    assert lines[0][1].startswith(
        f"{topic}[0]: dead letters not sent to {topic}/dlq: InvalidTopicError("
    )
    assert lines[0][1].endswith(
        "; retrying with a jittered backoff of up to 5 s "
        "(they are in the persister_dead_letters table)"
    )


def dlq_replay(letter_id: int, info: StackInfo, **env: str) -> tuple[int, str, str]:
    proc = subprocess.run(
        [sys.executable, "-m", "worker", "dlq", "replay", "--id", str(letter_id)],
        env={
            **os.environ,
            "KAFKA_BOOTSTRAP_SERVERS": info.kafka_bootstrap_servers,
            "DATABASE_URL": info.database_url,
            **env,
        },
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return proc.returncode, proc.stdout, proc.stderr


async def test_dlq_replay_of_a_2_mb_dead_letter_refuses_in_one_line_until_it_fits(
    stack_info: StackInfo, engine: AsyncEngine
) -> None:
    topic = unique("replay-large")
    await make_topic(stack_info, topic)
    await produce(stack_info, topic, [event_of(LARGE, seed=7)])
    settings = settings_for(stack_info, topic, dead_letter_topic="")
    async with running(Persister(settings, engine)):
        await wait_persisted(engine, settings.group_id, topic, {0: 1})
    async with engine.connect() as conn:
        (letter_id,) = (await conn.execute(select(dead_letters.c.id))).scalars().all()

    code, out, err = await asyncio.to_thread(dlq_replay, letter_id, stack_info)
    assert (code, out) == (3, ""), err
    assert err.splitlines() == [
        f"refused: dead letter {letter_id} (2000000 bytes) is larger than "
        "PERSISTER_MAX_MESSAGE_BYTES=1572864 and would be dead-lettered again; raise it "
        "(for the workers too) or send a smaller --value-file"
    ]

    # The setting is raised, but the topic takes 1 MB.
    await set_limit(stack_info, topic, 1_000_000)
    raised = {"PERSISTER_MAX_MESSAGE_BYTES": "3000000"}
    code, out, err = await asyncio.to_thread(dlq_replay, letter_id, stack_info, **raised)
    assert (code, out) == (3, ""), err
    assert err.splitlines() == [
        f"refused: {topic}[0] did not take dead letter {letter_id}: MessageSizeTooLargeError() "
        "(0 sent before it); raise the topic's max.message.bytes"
    ]
    assert await end_offsets(stack_info, topic, 1) == {0: 1}

    await set_limit(stack_info, topic, SOURCE_LIMIT)
    code, out, err = await asyncio.to_thread(dlq_replay, letter_id, stack_info, **raised)
    assert (code, out, err) == (0, "sent 1 dead letters back to their topics\n", "")
    assert await end_offsets(stack_info, topic, 1) == {0: 2}
    fixed = settings_for(stack_info, topic, dead_letter_topic="", max_message_bytes=3_000_000)
    async with running(Persister(fixed, engine)):
        await wait_persisted(engine, settings.group_id, topic, {0: 2})
    assert await counts(engine) == (1, 2, 1)
    assert await stored_offsets(engine, settings.group_id, topic) == {0: 2}
