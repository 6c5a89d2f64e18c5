"""The walking skeleton end to end: real Kafka in, real PostgreSQL out."""

from __future__ import annotations

import random
import time
import uuid

import orjson
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from schemas.tables import event_resources, events
from tests.integration.support import (
    counts,
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
from tests.records import msgs
from worker.devtools.loadgen import make_event
from worker.devtools.stack import StackInfo
from worker.pipeline.decoding import Rows, to_rows
from worker.pipeline.offset_fence import FenceError
from worker.pipeline.persister import Persister
from worker.pipeline.writer import write_batch


def generated(n: int, seed: int) -> tuple[list[bytes], int]:
    """n encoded events and the number of resource rows they make."""
    rng = random.Random(seed)
    batch = [make_event(rng) for _ in range(n)]
    return [orjson.dumps(e) for e in batch], sum(1 + len(e["related"]) for e in batch)


async def test_10k_events_over_4_partitions(stack_info: StackInfo, any_engine: AsyncEngine) -> None:
    topic = unique("bulk")
    await create_topic(stack_info, topic, 4)
    values, resource_rows = generated(10_000, seed=1)
    await send(stack_info, topic, values)
    ends = await end_offsets(stack_info, topic, 4)
    assert sum(ends.values()) == 10_000 and all(ends.values())

    settings = settings_for(stack_info, topic)
    async with running(Persister(settings, any_engine)) as persister:
        await wait_persisted(any_engine, settings.group_id, topic, ends)
    assert await counts(any_engine) == (10_000, resource_rows, 0)
    assert persister.stats.events == 10_000


async def test_restart_resumes_exactly(stack_info: StackInfo, any_engine: AsyncEngine) -> None:
    topic = unique("restart")
    await create_topic(stack_info, topic, 2)
    values, resource_rows = generated(3_000, seed=2)
    await send(stack_info, topic, values[:1_000])
    settings = settings_for(stack_info, topic, batch_size=100)

    async with running(Persister(settings, any_engine)):
        ends = await end_offsets(stack_info, topic, 2)
        await wait_persisted(any_engine, settings.group_id, topic, ends)
        # More arrives while the first worker is stopping: some of it may be
        # written by it, the rest by its successor, none twice.
        await send(stack_info, topic, values[1_000:2_000])
    first_run = (await counts(any_engine))[0]
    assert 1_000 <= first_run <= 2_000

    await send(stack_info, topic, values[2_000:])
    ends = await end_offsets(stack_info, topic, 2)
    async with running(Persister(settings, any_engine)):
        await wait_persisted(any_engine, settings.group_id, topic, ends)
    assert await counts(any_engine) == (3_000, resource_rows, 0)


async def test_same_id_three_times_is_one_row(
    stack_info: StackInfo, any_engine: AsyncEngine
) -> None:
    topic = unique("dupes")
    await create_topic(stack_info, topic, 1)
    event = make_event(random.Random(3), related=2)
    value = orjson.dumps(event)
    settings = settings_for(stack_info, topic)

    async with running(Persister(settings, any_engine)):
        await send(stack_info, topic, [value, value])  # in one batch
        await wait_persisted(any_engine, settings.group_id, topic, {0: 2})
        await send(stack_info, topic, [value])  # in a later batch
        await wait_persisted(any_engine, settings.group_id, topic, {0: 3})

    assert await counts(any_engine) == (1, 3, 0)
    async with any_engine.connect() as conn:
        roles = (await conn.execute(select(event_resources.c.resource_role))).scalars().all()
    assert sorted(roles) == ["", "deployment", "flow"]


async def test_single_event_visible_within_flush_every(
    stack_info: StackInfo, any_engine: AsyncEngine
) -> None:
    topic = unique("single")
    await create_topic(stack_info, topic, 1)
    settings = settings_for(stack_info, topic, flush_every_s=0.5)
    event = make_event(random.Random(4))

    async with running(Persister(settings, any_engine)):
        # Wait until the partition is positioned: its first flush cycle ran.
        await send(stack_info, topic, [orjson.dumps(make_event(random.Random(5)))])
        await wait_persisted(any_engine, settings.group_id, topic, {0: 1})

        sent_at = time.monotonic()
        await send(stack_info, topic, [orjson.dumps(event)])

        async def visible() -> bool:
            async with any_engine.connect() as conn:
                found = await conn.execute(
                    select(events.c.id).where(events.c.id == uuid.UUID(event["id"]))
                )
                return found.first() is not None

        await wait_until(visible, settings.flush_every_s + 1.0, "the event to be visible")
    assert time.monotonic() - sent_at < settings.flush_every_s + 1.0


async def test_two_workers_split_partitions(stack_info: StackInfo, any_engine: AsyncEngine) -> None:
    topic = unique("split")
    await create_topic(stack_info, topic, 4)
    values, resource_rows = generated(4_000, seed=6)
    settings = settings_for(stack_info, topic, batch_size=200)
    first, second = Persister(settings, any_engine), Persister(settings, any_engine)

    async with running(first), running(second):

        async def split() -> bool:
            return len(first.owned) == 2 and len(second.owned) == 2

        await wait_until(split, 30, "both workers to own two partitions")
        assert set(first.owned).isdisjoint(second.owned)
        await send(stack_info, topic, values)
        ends = await end_offsets(stack_info, topic, 4)
        await wait_persisted(any_engine, settings.group_id, topic, ends)

    assert first.stats.events > 0 and second.stats.events > 0
    assert first.stats.events + second.stats.events == 4_000
    assert await counts(any_engine) == (4_000, resource_rows, 0)


async def test_stale_owner_cannot_write(stack_info: StackInfo, any_engine: AsyncEngine) -> None:
    rng = random.Random(7)
    limits = settings_for(stack_info, "x").limits

    def batch(n: int, first: int) -> Rows:
        values: list[bytes | None] = [orjson.dumps(make_event(rng)) for _ in range(n)]
        return to_rows(msgs(values, "fenced", 0, first), limits, 10**6)

    owner = batch(10, first=0)
    await write_batch(any_engine, "g", ("fenced", 0), None, 10, owner)
    owner_resources = sum(map(len, owner.resources.values()))
    assert await counts(any_engine) == (10, owner_resources, 0)

    # The owner moved the stored offset to 10; a stale owner still believes 0
    # (or that there is no row at all): its writes roll back entirely.
    stale = batch(5, first=10)
    for expected in (0, None):
        with pytest.raises(FenceError):
            await write_batch(any_engine, "g", ("fenced", 0), expected, 15, stale)
    assert await counts(any_engine) == (10, owner_resources, 0)
    assert await stored_offsets(any_engine, "g", "fenced") == {0: 10}
