"""A backlog far larger than the buffer bound: memory stays flat, all is stored."""

from __future__ import annotations

import asyncio
import itertools
import random
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncEngine

from tests.integration.support import counts, create_topic, end_offsets, send, unique
from tests.integration.test_faults import wait_stored
from tests.integration.workers import WorkerPool, worker_env
from worker.devtools.loadgen import encode, make_event
from worker.devtools.stack import StackInfo

BACKLOG = 500_000
BUFFER_BOUND = 8 * 1024 * 1024
# Measured: 126 MiB with this bound (an interpreter with the worker's
# libraries imported is about 80 MiB). Without a bound the buffers alone
# could hold the whole ~250 MB backlog.
PEAK_RSS_LIMIT_MIB = 200


def small_events(n: int) -> Iterator[bytes]:
    rng = random.Random(3)
    for _ in range(n):
        yield encode(make_event(rng, related=1, payload_bytes=100))


def peak_rss_mib(pid: int) -> float:
    """The process's high-water mark of resident memory (VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmHWM for pid {pid}")


async def test_backlog_of_half_a_million_with_a_small_buffer(
    stack_info: StackInfo, engine: AsyncEngine, tmp_path: Path
) -> None:
    topic = unique("backlog")
    group = f"group-{topic}"
    await create_topic(stack_info, topic, 4)
    events = small_events(BACKLOG)
    for _ in range(0, BACKLOG, 100_000):
        await send(stack_info, topic, itertools.islice(events, 100_000))
    ends = await end_offsets(stack_info, topic, 4)
    assert sum(ends.values()) == BACKLOG

    env = worker_env(
        stack_info,
        topic,
        group,
        max_buffered_bytes=str(BUFFER_BOUND),
        batch_size="1000",
        max_batch_bytes=str(2 * 1024 * 1024),
    )
    async with WorkerPool(env, tmp_path / "workers") as pool:
        pool.start(1)
        pid = pool.pid(0)
        assert pid is not None
        await wait_stored(engine, group, topic, ends, 240, pool.tail)
        peak = peak_rss_mib(pid)
        assert await asyncio.to_thread(pool.stop_all) == [0], pool.tail()

    print(f"\npeak RSS {peak:.0f} MiB for a {BACKLOG}-event backlog")
    assert peak < PEAK_RSS_LIMIT_MIB, peak
    assert await counts(engine) == (BACKLOG, 2 * BACKLOG, 0)
