"""Progress under churn: three workers (without static membership, and for
comparison with it) drain a backlog while one of them is SIGKILLed and
restarted every few seconds. The group must keep storing events through the
churn, and end exact. Measured and printed: the rate stored while the churn
lasts, as a fraction of the rate the same group stored just before it.
"""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.integration.support import (
    create_topic,
    end_offsets,
    send,
    stored_offsets,
    unique,
    wait_until,
)
from tests.integration.test_faults import (
    assert_exact,
    chunked,
    no_crashes,
    tally,
    wait_ready,
    wait_stored,
)
from tests.integration.workers import WorkerPool, worker_env
from worker.devtools.loadgen import messages
from worker.devtools.stack import StackInfo

PARTITIONS = 6
WORKERS = 3
BACKLOG = 400_000
STEADY_S = 5.0
CHURN_S = 32.0


async def stored_total(engine: AsyncEngine, group: str, topic: str) -> int:
    return sum((await stored_offsets(engine, group, topic)).values())


async def rate_over(engine: AsyncEngine, group: str, topic: str, seconds: float) -> float:
    """Offsets stored per second over the next `seconds` (the measurement window)."""
    start, began = await stored_total(engine, group, topic), time.monotonic()
    await asyncio.sleep(seconds)  # the window measured, not a wait for an event
    return (await stored_total(engine, group, topic) - start) / (time.monotonic() - began)


@pytest.mark.cluster  # a backlog of 400,000 events, kills every few seconds: `make test-cluster`
@pytest.mark.parametrize(
    ("membership", "kill_every_s"), [("dynamic", 4.0), ("dynamic", 8.0), ("static", 4.0)]
)
async def test_the_group_keeps_storing_while_replicas_die_every_few_seconds(
    stack_info: StackInfo, engine: AsyncEngine, tmp_path: Path, membership: str, kill_every_s: float
) -> None:
    topic, rng = unique("churn"), random.Random(7)
    group = f"group-{topic}"
    await create_topic(stack_info, topic, PARTITIONS)
    values = list(messages(BACKLOG, seed=707, invalid_every=1000))
    positions = []
    for chunk in chunked(values, 20_000):
        positions += await send(stack_info, topic, chunk)
    ends = await end_offsets(stack_info, topic, PARTITIONS)
    env = worker_env(stack_info, topic, group, session_timeout_s=6.0)

    static = membership == "static"
    async with WorkerPool(env, tmp_path / "workers", static_membership=static) as pool:
        pool.start(WORKERS)
        await wait_ready(pool, list(range(WORKERS)), 90)

        async def all_working() -> bool:
            stored = await stored_offsets(engine, group, topic)
            return len(stored) == PARTITIONS and all(stored.values())

        await wait_until(all_working, 90, "every partition stored once", 0.2)
        steady = await rate_over(engine, group, topic, STEADY_S)
        before = await stored_total(engine, group, topic)
        began = time.monotonic()
        kills = int(CHURN_S / kill_every_s)
        for _ in range(kills):
            victim = rng.choice(pool.alive())
            await asyncio.to_thread(pool.kill, victim)
            await asyncio.to_thread(pool.restart, victim)
            await asyncio.sleep(kill_every_s)  # the pace of the churn
        churn_s = time.monotonic() - began
        after = await stored_total(engine, group, topic)
        during = (after - before) / churn_s
        took = await wait_stored(engine, group, topic, ends, 300, pool.tail)
        print(
            f"\nchurn ({membership}): {kills} SIGKILLs every {kill_every_s:.0f}s over"
            f" {churn_s:.1f}s;"
            f" steady {steady:.0f}/s, during the churn {during:.0f}/s"
            f" ({during / steady:.0%} of steady); caught up {took:.1f}s after"
        )
        assert during > 0, f"nothing stored during the churn\n{pool.tail()}"
        assert after < sum(ends.values()), "the backlog ran out: the rates are not comparable"
        no_crashes(pool)
        await wait_ready(pool, pool.alive(), 60)
        assert await asyncio.to_thread(pool.stop_all) == [0] * WORKERS, pool.tail()

    await assert_exact(engine, group, topic, tally(values, positions), ends)
