"""Rows the database rejects are isolated and dead-lettered; the rest is written."""

from __future__ import annotations

import json
import math
import random

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from schemas.tables import dead_letters
from tests.integration.support import (
    counts,
    create_topic,
    running,
    send,
    settings_for,
    stored_offsets,
    unique,
    wait_until,
)
from worker.consumer import Persister
from worker.loadgen import make_event
from worker.stack import StackInfo

# Valid JSON and a valid envelope, but PostgreSQL refuses each: jsonb has no
# \u0000, and a JSON integer beyond 64 bits cannot be bound as jsonb here.
REJECTED_PAYLOADS = [{"text": "nul \u0000 inside"}, {"big": 2**70}, {"nested": ["\u0000"]}]


async def test_database_rejected_rows_are_isolated(
    stack_info: StackInfo, engine: AsyncEngine
) -> None:
    topic = unique("rejected")
    await create_topic(stack_info, topic, 1)
    rng = random.Random(21)
    batch = [make_event(rng, related=1) for _ in range(1_000)]
    bad_positions = {17, 500, 998}
    for position, payload in zip(sorted(bad_positions), REJECTED_PAYLOADS, strict=True):
        batch[position]["payload"] = payload
    settings = settings_for(stack_info, topic, batch_size=1_000, flush_every_s=5)

    # The standard library writes the big integer orjson would refuse.
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
