"""Rows the database rejects are isolated and dead-lettered; the rest is written."""

from __future__ import annotations

import json
import math
import random
from typing import Any
from uuid import uuid4

from sqlalchemy import func, select, text, update
from sqlalchemy.ext.asyncio import AsyncEngine

from schemas.tables import dead_letters
from tests.integration.support import (
    counts,
    create_topic,
    end_offsets,
    read_topic,
    running,
    send,
    settings_for,
    stored_offsets,
    unique,
    wait_persisted,
    wait_until,
)
from worker.devtools.loadgen import make_event, messages
from worker.devtools.stack import StackInfo
from worker.pipeline.dead_letters.records import origin
from worker.pipeline.persister import Persister

# Valid JSON and a valid envelope, but PostgreSQL refuses each: neither jsonb
# nor text can hold \u0000.
REJECTED: list[dict[str, Any]] = [
    {"payload": {"text": "nul \u0000 inside"}},
    {"payload": {"nested": [{"deep": "\u0000"}]}},
    {"event": "nul\u0000.in.name"},
]


async def test_database_rejected_rows_are_isolated(
    stack_info: StackInfo, engine: AsyncEngine
) -> None:
    topic = unique("rejected")
    await create_topic(stack_info, topic, 1)
    rng = random.Random(21)
    batch = [make_event(rng, related=1) for _ in range(1_000)]
    bad_positions = {17, 500, 998}
    for position, change in zip(sorted(bad_positions), REJECTED, strict=True):
        batch[position].update(change)
    settings = settings_for(stack_info, topic, batch_size=1_000, flush_every_s=5)

    await send(stack_info, topic, [json.dumps(e).encode() for e in batch])
    async with running(Persister(settings, engine)) as persister:

        async def done() -> bool:
            return await stored_offsets(engine, settings.group_id, topic) == {0: 1_000}

        await wait_until(done, 30, "the batch to be written")

    assert persister.stats.batches == 1
    assert await counts(engine) == (997, 997 * 2, 3)
    async with engine.connect() as conn:
        letters = (
            await conn.execute(
                select(dead_letters.c.offset, dead_letters.c.error_class).order_by("offset")
            )
        ).all()
    assert [offset for offset, _ in letters] == sorted(bad_positions)
    assert all(error_class.startswith("DatabaseRejected") for _, error_class in letters)
    # Halving costs at most two savepoints per level for each rejected row
    # (any method needs log2(C(1000, 3)) ~ 28 attempts for 3 unknown rows).
    bound = 2 * len(bad_positions) * math.ceil(math.log2(1_000))
    assert 0 < persister.stats.isolation_attempts <= bound


async def test_payload_numbers_of_any_size_and_deep_nesting_are_stored_as_written(
    stack_info: StackInfo, engine: AsyncEngine
) -> None:
    """The payload goes to the database as the producer's JSON text: numbers
    beyond 64 bits or a double's range are kept, not rejected or rounded, and
    so is JSON nested 500 deep; of a repeated key, the last is kept."""
    topic = unique("numbers")
    await create_topic(stack_info, topic, 1)
    event = make_event(random.Random(5))
    nested = "[" * 500 + "]" * 500
    repeated = '"first", "n": "last"'
    numbers = [str(2**70), "1e400", "-0.10000000000000000000000000001", nested, repeated]
    values = [
        json.dumps({**event, "id": str(uuid4()), "payload": {"n": "?"}})
        .encode()
        .replace(b'"?"', number.encode())
        for number in numbers
    ]
    await send(stack_info, topic, values)
    settings = settings_for(stack_info, topic)
    async with running(Persister(settings, engine)):

        async def done() -> bool:
            return await stored_offsets(engine, settings.group_id, topic) == {0: 5}

        await wait_until(done, 30, "the events to be written")
    async with engine.connect() as conn:
        stored = (await conn.execute(text("SELECT payload->>'n' FROM events"))).scalars().all()
    assert sorted(stored) == sorted([str(2**70), "1" + "0" * 400, numbers[2], nested, "last"])
    assert (await counts(engine))[2] == 0


async def test_bad_messages_reach_table_and_topic_once(
    stack_info: StackInfo, engine: AsyncEngine
) -> None:
    """Each bad message is one dead_letters row and one record on `<topic>.dlq`
    with its origin in the headers, also when a worker stopped between
    writing the row and sending the record, or after sending it but before
    marking the row as sent."""
    topic = unique("poison")
    await create_topic(stack_info, topic, 2)
    settings = settings_for(stack_info, topic)
    first = await send(stack_info, topic, messages(200, seed=31, invalid_every=20))
    async with running(Persister(settings, engine)):
        ends = await end_offsets(stack_info, topic, 2)
        await wait_persisted(engine, settings.group_id, topic, ends)
    # As if the worker died after sending but before marking...
    async with engine.begin() as conn:
        await conn.execute(update(dead_letters).values(published=None))
    # ...and as if another died after writing rows but before sending them.
    second = await send(stack_info, topic, messages(100, seed=32, invalid_every=20))
    without_topic = settings_for(stack_info, topic, dead_letter_topic="")
    async with running(Persister(without_topic, engine)):
        ends = await end_offsets(stack_info, topic, 2)
        await wait_persisted(engine, settings.group_id, topic, ends)
    async with running(Persister(settings, engine)) as persister:

        async def all_sent() -> bool:
            async with engine.connect() as conn:
                unsent = select(func.count()).where(dead_letters.c.published.is_(None))
                return (await conn.execute(unsent)).scalar_one() == 0

        await wait_until(all_sent, 30, "every dead letter to be sent")
    assert persister.dead_letters.published == 5  # only the second part's

    bad = sorted(
        (topic, p, o) for i, (p, o) in enumerate(first + second) if (i % 200 + 1) % 20 == 0
    )
    assert len(bad) == 15
    assert (await counts(engine))[2] == 15
    records = await read_topic(stack_info, f"{topic}.dlq")
    origins = sorted(origin(r.headers)[1:] for r in records)  # type: ignore[index]
    assert origins == bad
    kinds = {dict(r.headers)["dlq.error_class"] for r in records}
    assert kinds == {b"Tombstone", b"InvalidJson", b"InvalidEnvelope"}
