"""Steering a live group: replay --force under a running worker, and pause /
resume of a partition across a rebalance."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
from pathlib import Path

import orjson
from aiokafka import TopicPartition
from sqlalchemy import delete
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
from tests.integration.test_faults import wait_ready
from tests.integration.workers import WorkerPool, run_command, worker_env
from worker.core.kafka_admin import KafkaView
from worker.devtools.loadgen import make_event
from worker.devtools.stack import StackInfo
from worker.pipeline.controls import paused_among, read_controls
from worker.pipeline.persister import Persister

# `pause` promises its effect within this long.
EFFECT_S = 2.0


def command(info: StackInfo, *args: str) -> tuple[int, str, str]:
    return run_command(info, *args, env={"COLUMNS": "160"}, timeout_s=90)


def values(n: int, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    return [orjson.dumps(make_event(rng)) for _ in range(n)]


async def test_replay_force_with_a_live_worker_restores_exactly(
    stack_info: StackInfo, engine: AsyncEngine
) -> None:
    topic = unique("force")
    await create_topic(stack_info, topic, 2)
    await send(stack_info, topic, values(60, 1), partition=0)
    await send(stack_info, topic, values(40, 2), partition=1)
    ends = {0: 60, 1: 40}
    settings = settings_for(stack_info, topic)
    async with running(Persister(settings, engine)):
        await wait_persisted(engine, settings.group_id, topic, ends)
        stored = await counts(engine)
        assert stored[0] == 100 and stored[2] == 0
        async with engine.begin() as conn:  # the rows are lost; the topic still has them
            await conn.execute(delete(event_resources))
            await conn.execute(delete(events))

        code, out, err = await asyncio.to_thread(
            command, stack_info, "replay", "--topic", topic, "--group", settings.group_id,
            "--to-earliest", "--force",
        )  # fmt: skip
        assert (code, err) == (0, ""), out
        assert (
            "1 live members were told to reload; each has committed the new offsets to Kafka" in out
        )

        async def restored() -> bool:
            return await counts(engine) == stored

        # Both partitions are idle: the worker reloads without a write to fail.
        took = await wait_until(restored, 10, "the replayed events to be stored again")
        assert took < 5
        assert await stored_offsets(engine, settings.group_id, topic) == ends
        async with KafkaView.open(settings) as view:
            tps = [TopicPartition(topic, 0), TopicPartition(topic, 1)]

            async def kafka_follows() -> bool:
                committed = await view.committed(settings.group_id, tps)
                return {tp.partition: o for tp, o in committed.items()} == ends

            # The worker commits to Kafka what it stores, once a second.
            await wait_until(kafka_follows, 5, "Kafka's committed offsets to follow")
    assert await counts(engine) == stored  # no duplicate anywhere


async def test_pause_and_resume_follow_within_two_seconds_across_a_rebalance(
    stack_info: StackInfo, engine: AsyncEngine, tmp_path: Path
) -> None:
    topic = unique("pause")
    group = f"group-{topic}"
    await create_topic(stack_info, topic, 2)
    env = worker_env(stack_info, topic, group)
    async with WorkerPool(env, tmp_path / "workers") as pool:
        await asyncio.to_thread(pool.start, 2)
        await send(stack_info, topic, values(5, 3), partition=0)
        await send(stack_info, topic, values(5, 4), partition=1)
        await wait_persisted(engine, group, topic, {0: 5, 1: 5})

        code, out, _ = await asyncio.to_thread(
            command, stack_info, "pause", "--topic", topic, "--partition", "0", "--group", group
        )
        assert (code, out.strip()) == (
            0,
            f"paused {topic}[0] for group {group!r}; its owner follows within 2 s",
        )
        await asyncio.sleep(EFFECT_S)  # the promised bound, no more
        await send(stack_info, topic, values(7, 5), partition=0)
        await send(stack_info, topic, values(7, 6), partition=1)
        await wait_persisted(engine, group, topic, {0: 5, 1: 12})

        # A rebalance: one worker leaves, the other owns both partitions.
        await asyncio.to_thread(pool.terminate, 0)
        await send(stack_info, topic, values(3, 7), partition=1)
        await wait_persisted(engine, group, topic, {0: 5, 1: 15})
        assert len(pool.grep("assigned")) >= 2, pool.tail()

        await asyncio.to_thread(
            command, stack_info, "resume", "--topic", topic, "--partition", "0", "--group", group
        )
        started = time.monotonic()
        await wait_persisted(engine, group, topic, {0: 12, 1: 15})
        assert time.monotonic() - started < EFFECT_S + 1.0
    assert await end_offsets(stack_info, topic, 2) == {0: 12, 1: 15}
    assert (await counts(engine))[0] == 27


async def test_drain_leaves_the_group_and_keeps_the_process(
    stack_info: StackInfo, engine: AsyncEngine, tmp_path: Path
) -> None:
    """SIGUSR1: flush, commit, leave; the other replica takes over, the
    drained one stays up until SIGTERM (then exits 0)."""
    topic = unique("drain")
    group = f"group-{topic}"
    await create_topic(stack_info, topic, 2)
    settings = settings_for(stack_info, topic, group_id=group)
    async with WorkerPool(worker_env(stack_info, topic, group), tmp_path / "w") as pool:
        await asyncio.to_thread(pool.start, 2)
        await send(stack_info, topic, values(4, 8), partition=0)
        await send(stack_info, topic, values(4, 9), partition=1)
        await wait_persisted(engine, group, topic, {0: 4, 1: 4})
        # Before its handler is installed, SIGUSR1 would end the process.
        await wait_ready(pool, [0, 1], 60)
        pid = pool.pid(0)
        assert pid is not None
        os.kill(pid, signal.SIGUSR1)
        async with KafkaView.open(settings) as view:

            async def one_member_owns_both() -> bool:
                members = await view.members(group)
                return len(members) == 1 and len(members[0].partitions) == 2

            await wait_until(one_member_owns_both, 30, "the other replica to own both")
            assert (await view.members(group))[0].client_id.endswith(f":{pool.pid(1)}")
        await send(stack_info, topic, values(3, 10), partition=0)
        await send(stack_info, topic, values(3, 11), partition=1)
        await wait_persisted(engine, group, topic, {0: 7, 1: 7})
        assert pool.alive() == [0, 1]
        assert len(pool.grep("drained: the process stays up")) == 1, pool.tail()
        assert await asyncio.to_thread(pool.terminate, 0) == 0
    assert (await counts(engine))[0] == 14


async def test_resuming_one_partition_of_a_topic_paused_as_a_whole_resumes_it(
    stack_info: StackInfo, engine: AsyncEngine
) -> None:
    topic = unique("split-pause")
    group = f"group-{topic}"
    await create_topic(stack_info, topic, 3)
    partitions = [(topic, p) for p in range(3)]

    async def paused() -> set[tuple[str, int]]:
        async with engine.connect() as conn:
            return paused_among(await read_controls(conn, group), partitions)

    where = ("--topic", topic, "--group", group)
    code, out, err = await asyncio.to_thread(command, stack_info, "pause", *where)
    assert code == 0, err
    assert await paused() == set(partitions)
    code, out, err = await asyncio.to_thread(
        command, stack_info, "resume", *where, "--partition", "1"
    )
    assert code == 0, err
    assert f"still paused: {topic}[0], {topic}[2]" in out, out
    assert await paused() == {(topic, 0), (topic, 2)}
    code, out, err = await asyncio.to_thread(command, stack_info, "resume", *where)
    assert code == 0, err
    assert await paused() == set()
