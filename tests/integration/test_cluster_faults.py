"""Broker faults on a three-node cluster (topics replicated 3 times,
min.insync.replicas 2) while three worker processes ingest a steady load:
the broker leading most partitions killed and brought back, a rolling
restart of every broker, the active controller killed. Each ends exact:
every event once, every bad message dead-lettered once (table and topic),
every partition's stored offset at its end, every worker alive and exiting 0.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.integration.cluster import busiest_leader, cluster_stack, leaders, wait_replicated
from tests.integration.progress import Producer, Sampler
from tests.integration.support import create_topic, end_offsets, read_topic, unique, wait_until
from tests.integration.test_faults import (
    assert_exact,
    no_crashes,
    progressed,
    tally,
    wait_dead_letters_sent,
    wait_ready,
    wait_stored,
)
from tests.integration.workers import WorkerPool, worker_env
from worker.devtools.stack import LocalStack, StackInfo
from worker.pipeline.dead_letters.records import origin

PARTITIONS = 6
WORKERS = 3
# Load after the fault, so the workers are seen going on with it.
AFTER_FAULT_EVENTS = 3000

Fault = Callable[[LocalStack, str], Awaitable[str]]


@pytest.fixture(scope="module")
def cluster(stack_info: StackInfo) -> Iterator[LocalStack]:
    with cluster_stack(stack_info.database_url) as stack:
        yield stack


async def load_through(
    cluster: LocalStack, engine: AsyncEngine, tmp_path: Path, name: str, fault: Fault
) -> None:
    """Three workers ingest a steady load while `fault` happens to the
    cluster; then everything is checked exactly."""
    info = cluster.info
    topic = unique(name)
    group, dlq = f"group-{topic}", f"{topic}.dlq"
    await create_topic(info, topic, PARTITIONS)
    producer = Producer(info, topic, chunk=1000, pause_s=0.5, invalid_every=100)
    sampler = Sampler(engine, group, topic, producer)
    env = worker_env(info, topic, group, session_timeout_s=10.0)

    async with WorkerPool(env, tmp_path / "workers") as pool:
        pool.start(WORKERS)
        await wait_ready(pool, list(range(WORKERS)), 90)
        tasks = [asyncio.create_task(producer.run()), asyncio.create_task(sampler.run())]
        try:
            await wait_until(progressed(engine, group, topic), 90, "the first stored offsets")
            await wait_replicated(info, [topic, dlq])
            started = time.monotonic()
            what = await fault(cluster, topic)
            ended = time.monotonic()
            sent = len(producer.positions)
            await wait_until(
                lambda: _at_least(producer.positions, sent + AFTER_FAULT_EVENTS),
                120,
                "load after the fault",
            )
        finally:
            producer.stop()
            await tasks[0]
        ends = await end_offsets(info, topic, PARTITIONS)
        assert sum(ends.values()) == len(producer.values)
        took = await wait_stored(engine, group, topic, ends, 180, pool.tail)
        sampler.stop()
        await tasks[1]
        await wait_dead_letters_sent(engine, group, 90, pool.tail)
        no_crashes(pool)
        assert pool.alive() == list(range(WORKERS)), pool.tail()
        print(
            f"\n{name}: {what}; fault took {ended - started:.1f}s; longest pause with records"
            f" waiting {sampler.longest_pause(started, ended + 5):.1f}s; stored"
            f" {sampler.rate(started, ended):.0f}/s during it (sent"
            f" {sampler.offered(started, ended):.0f}/s);"
            f" {len(producer.values)} sent, caught up {took:.1f}s after the last send"
        )
        assert await asyncio.to_thread(pool.stop_all) == [0] * WORKERS, pool.tail()

    expected = tally(producer.values, producer.positions)
    assert expected.dead_letters > 0
    await assert_exact(engine, group, topic, expected, ends)
    origins = [origin(r.headers) for r in await read_topic(info, dlq)]
    assert sorted((o[2], o[3]) for o in origins if o is not None) == list(expected.bad_positions)
    assert len(origins) == expected.dead_letters


async def _at_least(items: list[tuple[int, int]], n: int) -> bool:
    return len(items) >= n


async def kill_busiest_leader(cluster: LocalStack, topic: str) -> str:
    info = cluster.info
    node, led = await busiest_leader(info, topic)
    await asyncio.to_thread(cluster.stop_kafka, [node], signal.SIGKILL)

    async def moved() -> bool:
        now = await leaders(info, topic)
        return all(now[p] not in (node, -1) for p in led)

    moved_s = await wait_until(moved, 60, f"leadership of {led} to leave node {node}", 0.2)
    await asyncio.to_thread(cluster.start_kafka, [node])
    back_s = await wait_replicated(info, [topic, f"{topic}.dlq"])
    return (
        f"SIGKILL node {node} leading partitions {led}; leaders moved after {moved_s:.1f}s;"
        f" node back and replicas in sync {back_s:.1f}s after its start"
    )


async def rolling_restart(cluster: LocalStack, topic: str) -> str:
    steps = []
    for node in cluster.kafka.nodes:
        began = time.monotonic()
        await asyncio.to_thread(cluster.stop_kafka, [node])
        await asyncio.to_thread(cluster.start_kafka, [node])
        # Only once every replica is back in sync may the next one stop.
        await wait_replicated(cluster.info, [topic, f"{topic}.dlq"])
        steps.append(f"node {node} {time.monotonic() - began:.1f}s")
    return "rolling restart (SIGTERM, start, replicas in sync): " + ", ".join(steps)


async def kill_controller(cluster: LocalStack, topic: str) -> str:
    old = cluster.kafka.quorum_leader()
    assert old is not None, cluster.kafka_log_tail()
    await asyncio.to_thread(cluster.stop_kafka, [old], signal.SIGKILL)

    async def elected() -> bool:
        return cluster.kafka.quorum_leader() not in (None, old)

    elected_s = await wait_until(elected, 60, f"a controller other than node {old}", 0.1)
    new = cluster.kafka.quorum_leader()
    await asyncio.to_thread(cluster.start_kafka, [old])
    await wait_replicated(cluster.info, [topic, f"{topic}.dlq"])
    return f"SIGKILL active controller node {old}; node {new} elected after {elected_s:.1f}s"


async def test_killing_the_busiest_partition_leader_loses_and_duplicates_nothing(
    cluster: LocalStack, engine: AsyncEngine, tmp_path: Path
) -> None:
    await load_through(cluster, engine, tmp_path, "leader-kill", kill_busiest_leader)


@pytest.mark.cluster  # the longest of the three: `make test-cluster`
async def test_rolling_restart_of_every_broker_loses_and_duplicates_nothing(
    cluster: LocalStack, engine: AsyncEngine, tmp_path: Path
) -> None:
    await load_through(cluster, engine, tmp_path, "rolling", rolling_restart)


async def test_controller_failover_loses_and_duplicates_nothing(
    cluster: LocalStack, engine: AsyncEngine, tmp_path: Path
) -> None:
    await load_through(cluster, engine, tmp_path, "controller-kill", kill_controller)
