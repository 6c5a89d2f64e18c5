"""Scaling a group of worker processes 1 -> 6 -> 2 -> 6 -> 1 under a steady
load, with and without static membership. Asserted: every change settles
(each partition owned by exactly one running worker), nothing is lost or
duplicated, every worker that was scaled down exited 0. Measured and printed
for each change: the rebalance pause (the longest time no partition was
written while records waited), the longest one partition waited, what the
workers logged as their pause, and the rate stored during the change.
"""

from __future__ import annotations

import asyncio
import itertools
import re
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.integration.progress import Producer, Sampler
from tests.integration.support import create_topic, end_offsets, unique, wait_until
from tests.integration.test_faults import assert_exact, no_crashes, tally, wait_ready, wait_stored
from tests.integration.workers import WorkerPool, worker_env
from worker.devtools.stack import StackInfo

PARTITIONS = 12
SEQUENCE = (1, 6, 2, 6, 1)
# What a worker has by default: the scale changes are measured as shipped.
SESSION_TIMEOUT_S = 45.0
ASSIGNED = re.compile(r"rebalance \d+: assigned (.*) \(consumption paused ([\d.]+) s\)")


@dataclass(frozen=True)
class Change:
    before: int
    after: int
    took_s: float  # until every partition had one owner and the backlog was stored
    pause_s: float  # longest time no partition was written while records waited
    partition_stall_s: float  # longest time one partition with records waited
    worker_pause_s: float  # longest "consumption paused" a worker logged
    stored_per_s: float
    sent_per_s: float

    def __str__(self) -> str:
        return (
            f"{self.before} -> {self.after}: settled {self.took_s:.1f}s, group paused"
            f" {self.pause_s:.1f}s, a partition waited up to {self.partition_stall_s:.1f}s,"
            f" workers logged up to {self.worker_pause_s:.1f}s; stored"
            f" {self.stored_per_s:.0f}/s while {self.sent_per_s:.0f}/s were sent"
        )


def assignments(pool: WorkerPool, since: dict[int, int]) -> dict[int, tuple[list[str], float]]:
    """Each running worker's assignments logged after the first `since[i]`
    ones: (the latest one's partitions, the longest pause logged)."""
    found = {}
    for i in pool.alive():
        matches = ASSIGNED.findall(pool.logs(i))[since.get(i, 0) :]
        if matches:
            latest = [] if matches[-1][0] == "nothing" else matches[-1][0].split(", ")
            found[i] = (latest, max(float(m[1]) for m in matches))
    return found


def assigned_counts(pool: WorkerPool) -> dict[int, int]:
    return {i: len(ASSIGNED.findall(pool.logs(i))) for i in range(len(pool))}


async def change(
    pool: WorkerPool, sampler: Sampler, producer: Producer, before: int, after: int
) -> Change:
    """Scale from `before` to `after` workers; wait until the change settled."""
    since = assigned_counts(pool)
    started = time.monotonic()
    codes = await asyncio.to_thread(pool.scale, after, 60)
    assert codes == [0] * max(0, before - after), f"scale-down exit codes\n{pool.tail()}"
    worker_pause = 0.0

    async def settled() -> bool:
        nonlocal worker_pause
        found = assignments(pool, since)
        if len(found) != after or not all(pool.ready(i) for i in found):
            return False
        owned = [tp for partitions, _ in found.values() for tp in partitions]
        if len(owned) != PARTITIONS or len(set(owned)) != PARTITIONS:
            return False  # a rebalance is still going on
        worker_pause = max(pause for _, pause in found.values())
        latest = sampler.samples[-1] if sampler.samples else None
        return latest is not None and latest.at > started and latest.total >= latest.produced

    # Up to two session timeouts: static members that left are replaced only then.
    took = await wait_until(settled, 2 * SESSION_TIMEOUT_S + 60, f"{before} -> {after}", 0.2)
    ended = started + took
    return Change(
        before,
        after,
        took,
        sampler.longest_pause(started, ended),
        sampler.longest_partition_stall(started, ended),
        worker_pause,
        sampler.rate(started, ended),
        sampler.offered(started, ended),
    )


async def scale_under_load(
    stack_info: StackInfo, engine: AsyncEngine, tmp_path: Path, static: bool
) -> list[Change]:
    topic = unique("scale-static" if static else "scale")
    group = f"group-{topic}"
    await create_topic(stack_info, topic, PARTITIONS)
    producer = Producer(stack_info, topic, chunk=1000, pause_s=0.5, invalid_every=500)
    sampler = Sampler(engine, group, topic, producer)
    env = worker_env(stack_info, topic, group, session_timeout_s=SESSION_TIMEOUT_S)
    changes: list[Change] = []

    async with WorkerPool(env, tmp_path / "workers", static_membership=static) as pool:
        pool.start(SEQUENCE[0])
        await wait_ready(pool, [0], 90)
        tasks = [asyncio.create_task(producer.run()), asyncio.create_task(sampler.run())]
        try:
            for before, after in itertools.pairwise(SEQUENCE):
                changes.append(await change(pool, sampler, producer, before, after))
        finally:
            producer.stop()
            await tasks[0]
        ends = await end_offsets(stack_info, topic, PARTITIONS)
        assert sum(ends.values()) == len(producer.values)
        await wait_stored(engine, group, topic, ends, 120, pool.tail)
        sampler.stop()
        await tasks[1]
        no_crashes(pool)
        assert await asyncio.to_thread(pool.stop_all) == [0] * SEQUENCE[-1], pool.tail()

    print(
        f"\nscaling {'with' if static else 'without'} static membership"
        f" ({len(producer.values)} events):\n  " + "\n  ".join(str(c) for c in changes)
    )
    await assert_exact(engine, group, topic, tally(producer.values, producer.positions), ends)
    return changes


async def test_scaling_without_static_membership_loses_and_duplicates_nothing(
    stack_info: StackInfo, engine: AsyncEngine, tmp_path: Path
) -> None:
    await scale_under_load(stack_info, engine, tmp_path, static=False)


@pytest.mark.cluster  # waits out session timeouts: `make test-cluster`
async def test_scaling_with_static_membership_loses_and_duplicates_nothing(
    stack_info: StackInfo, engine: AsyncEngine, tmp_path: Path
) -> None:
    await scale_under_load(stack_info, engine, tmp_path, static=True)
