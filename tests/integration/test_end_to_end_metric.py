"""`persister_end_to_end_seconds` is per event: after a worker persists N
events its `_count` is N (dead letters and batches not counted), and its
p50 and p99, as Prometheus computes them from the buckets, are within 10%
of the same quantiles of each event's age at commit, from the database:
its transaction's commit timestamp minus `received` (its Kafka timestamp).

Not `recorded - received`: the worker stamps `recorded` on a batch's rows
before it writes them, so that figure leaves the write out, where the
metric, like a reader, counts up to the commit.
"""

from __future__ import annotations

import asyncio
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from itertools import islice
from pathlib import Path

from aiokafka import AIOKafkaProducer
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from schemas.tables import dead_letters
from tests.integration.support import (
    count,
    create_topic,
    end_offsets,
    unique,
    wait_persisted,
)
from tests.integration.test_faults import no_crashes, wait_ready
from tests.integration.workers import WorkerPool, worker_env
from tests.quantiles import INF, exact_quantile, histogram_quantile
from tests.soak.latency import lines
from tests.soak.latency import measure as measure_latency
from tests.soak.probes import metrics_url
from worker.devtools.loadgen import messages
from worker.devtools.stack import LocalStack, StackInfo

PARTITIONS = 1  # one write in flight: the worker learns of each commit at once
SENT = 4_000
INVALID_EVERY = 100  # 40 bad messages: dead letters, not events
CHUNK = 200
CHUNK_EVERY_S = 0.4  # 500 events/s for 8 s: live traffic, not a backlog
# Each event's age: its Kafka timestamp (the `received` column, as these
# events carry none of their own) to the commit of the transaction that
# wrote it (needs track_commit_timestamp).
AGES = text(
    "SELECT EXTRACT(EPOCH FROM pg_xact_commit_timestamp(xmin) - received)::float8 FROM events"
)
TRACKING = text("SHOW track_commit_timestamp")


async def track_commits(local_stack: LocalStack, engine: AsyncEngine, on: bool) -> bool:
    """Turn PostgreSQL's commit timestamps on or off (a restart); False if
    they already were."""
    async with engine.connect() as conn:
        conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
        if (await conn.scalar(TRACKING) == "on") == on:
            return False
        await conn.execute(
            text(f"ALTER SYSTEM SET track_commit_timestamp = {'on' if on else 'off'}")
        )
    await engine.dispose()
    await asyncio.to_thread(local_stack.stop_postgres)
    await asyncio.to_thread(local_stack.start_postgres)
    async with engine.connect() as conn:
        assert await conn.scalar(TRACKING) == ("on" if on else "off")
    return True


@asynccontextmanager
async def commit_timestamps(local_stack: LocalStack, engine: AsyncEngine) -> AsyncIterator[None]:
    turned_on = await track_commits(local_stack, engine, True)
    try:
        yield
    finally:
        if turned_on:
            await track_commits(local_stack, engine, False)


def histogram(url: str) -> tuple[dict[float, float], float]:
    """(cumulative buckets, count) of persister_end_to_end_seconds."""
    with urllib.request.urlopen(url, timeout=5) as response:
        scraped = response.read().decode()
    for family in text_string_to_metric_families(scraped):
        if family.name == "persister_end_to_end_seconds":
            assert family.type == "histogram"
            buckets = {
                float(s.labels["le"]): s.value for s in family.samples if s.name.endswith("_bucket")
            }
            total = next(s.value for s in family.samples if s.name.endswith("_count"))
            return buckets, total
    raise AssertionError("no persister_end_to_end_seconds in /metrics")


async def send_live(stack_info: StackInfo, topic: str, values: Iterator[bytes | None]) -> None:
    """`values` in chunks at a steady pace, as a producer in production would."""
    producer = AIOKafkaProducer(
        bootstrap_servers=stack_info.kafka_bootstrap_servers, linger_ms=5, acks="all"
    )
    await producer.start()
    try:
        next_at = time.monotonic()
        while chunk := list(islice(values, CHUNK)):
            futures = [
                await producer.send(topic, v, key=b"tombstone" if v is None else None)
                for v in chunk
            ]
            await asyncio.gather(*futures)
            next_at += CHUNK_EVERY_S
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))  # pacing the load
    finally:
        await producer.stop()


async def test_the_metric_counts_each_event_and_its_quantiles_match_the_database(
    local_stack: LocalStack, stack_info: StackInfo, engine: AsyncEngine, tmp_path: Path
) -> None:
    began = datetime.now(UTC)
    topic = unique("end-to-end")
    group = f"group-{topic}"
    await create_topic(stack_info, topic, PARTITIONS)
    env = worker_env(stack_info, topic, group, flush_every_s=1.0)
    async with (
        commit_timestamps(local_stack, engine),
        WorkerPool(env, tmp_path / "workers") as pool,
    ):
        pool.start(1)
        await wait_ready(pool, [0], 60)
        await send_live(stack_info, topic, messages(SENT, seed=31, invalid_every=INVALID_EVERY))
        await wait_persisted(engine, group, topic, await end_offsets(stack_info, topic, PARTITIONS))
        url = metrics_url(pool.current_log(0))
        assert url is not None, pool.tail()
        buckets, observed = await asyncio.to_thread(histogram, url)

        async with engine.connect() as conn:
            ages = sorted(float(a) for a in (await conn.execute(AGES)).scalars())
        assert len(ages) == SENT - SENT // INVALID_EVERY
        assert await count(engine, dead_letters) == SENT // INVALID_EVERY
        assert observed == buckets[INF] == len(ages)
        for q in (0.5, 0.99):
            estimate, exact = histogram_quantile(q, buckets), exact_quantile(q, ages)
            assert estimate is not None
            assert abs(estimate - exact) <= 0.10 * exact, (q, estimate, exact, ages[0], ages[-1])

        # The soak's report computes the same figures, the database's in SQL.
        latency = await measure_latency(engine, began - timedelta(hours=1), buckets)
        print("\n".join(lines(latency)))
        assert latency.database_events == latency.metric_events == len(ages)
        assert latency.database_p50_s == exact_quantile(0.5, ages)
        assert latency.database_p99_s == exact_quantile(0.99, ages)
        assert latency.metric_p99_s == histogram_quantile(0.99, buckets)
        no_crashes(pool)
