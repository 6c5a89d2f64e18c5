"""The rate one worker stores alone on this machine, measured before the soak."""

from __future__ import annotations

import time
from pathlib import Path

from sqlalchemy import text

from tests.integration.support import stored_offsets, wait_until
from tests.integration.workers import WorkerPool, worker_env
from worker.core.kafka_admin import create_topic
from worker.devtools.loadgen import messages, produce
from worker.devtools.stack import StackInfo
from worker.pipeline.connections import create_engine

EVENTS = 60_000
PARTITIONS = 6


async def single_replica_rate(info: StackInfo, log_dir: Path) -> float:
    """Events per second one worker stores from a backlog (from its first
    stored offset to the last)."""
    topic = group = "calibration"
    options = {"bootstrap_servers": info.kafka_bootstrap_servers}
    await create_topic(options, topic, PARTITIONS)
    await produce(options, topic, messages(EVENTS, seed=9))
    engine = create_engine(info.database_url, pool_size=1)
    try:
        with WorkerPool(worker_env(info, topic, group, flush_every_s=0.5), log_dir) as pool:
            pool.start(1)
            first = 0

            async def started() -> bool:
                nonlocal first
                first = sum((await stored_offsets(engine, group, topic)).values())
                return first > 0

            await wait_until(started, 120, "the first stored offsets", 0.1)
            began = time.monotonic()

            async def done() -> bool:
                return sum((await stored_offsets(engine, group, topic)).values()) == EVENTS

            took = await wait_until(done, 300, "the calibration backlog stored", 0.1)
            assert pool.stop_all() == [0], pool.tail()
        # The soak counts every event in the tables as its own.
        async with engine.begin() as conn:
            await conn.execute(text("TRUNCATE events, event_resources"))
    finally:
        await engine.dispose()
    return (EVENTS - first) / max(took, time.monotonic() - began, 1e-3)
