"""Fault injection against real worker processes, a real broker and a real
database: kills, scaling, a database outage, a broker restart, SIGTERM mid-run
and a topic that appears late. Every test ends with exact counts: each valid
message is one event row (with 1 + len(related) resource rows), each bad one
is one dead letter at its own (topic, partition, offset), and the stored
offsets equal the topic's end offsets.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import signal
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from schemas.tables import dead_letters, events
from tests.integration.support import (
    counts,
    create_topic,
    end_offsets,
    read_topic,
    send,
    settings_for,
    stored_offsets,
    unique,
    wait_until,
)
from tests.integration.workers import READY_MARKER, WorkerPool, worker_env
from worker.devtools.loadgen import INVALID_MESSAGES, messages
from worker.devtools.stack import LocalStack, StackInfo
from worker.pipeline.connections import create_engine
from worker.pipeline.dead_letters.records import origin
from worker.pipeline.persister import Persister

Position = tuple[int, int]  # (partition, offset)

SHUTDOWN_GRACE_S = 10.0
# Process exit after the last flush: leaving the group, closing the pool, the
# interpreter's own shutdown.
EXIT_MARGIN_S = 3.0


# --- what the database must hold ------------------------------------------------


@dataclass(frozen=True)
class Tally:
    """What a set of sent messages must become in the database."""

    events: int
    resources: int
    dead_letters: int
    event_ids: frozenset[uuid.UUID]
    bad_positions: tuple[Position, ...]

    @property
    def counts(self) -> tuple[int, int, int]:
        return self.events, self.resources, self.dead_letters


def tally(
    values: Sequence[bytes | None],
    positions: Sequence[Position],
    below: Mapping[int, int] | None = None,
) -> Tally:
    """Count what `values` (sent to `positions`) must become; with `below`,
    only the messages under each partition's offset there."""
    assert len(values) == len(positions)
    n_events = n_resources = 0
    ids: set[uuid.UUID] = set()
    bad: list[Position] = []
    for value, (partition, offset) in zip(values, positions, strict=True):
        if below is not None and offset >= below.get(partition, 0):
            continue
        if value in INVALID_MESSAGES:
            bad.append((partition, offset))
            continue
        assert value is not None
        event = orjson.loads(value)
        n_events += 1
        n_resources += 1 + len(event["related"])
        ids.add(uuid.UUID(event["id"]))
    assert len(ids) == n_events, "the generated events must have distinct ids"
    return Tally(n_events, n_resources, len(bad), frozenset(ids), tuple(sorted(bad)))


async def stored_event_ids(engine: AsyncEngine) -> set[uuid.UUID]:
    async with engine.connect() as conn:
        return set((await conn.execute(select(events.c.id))).scalars().all())


async def dead_letter_positions(engine: AsyncEngine, group: str, topic: str) -> list[Position]:
    c = dead_letters.c
    async with engine.connect() as conn:
        rows = await conn.execute(
            select(c.partition, c.offset).where(c.group_id == group, c.topic == topic)
        )
        return sorted((int(p), int(o)) for p, o in rows)


async def assert_exact(
    engine: AsyncEngine, group: str, topic: str, expected: Tally, ends: Mapping[int, int]
) -> None:
    """Nothing lost, nothing duplicated, every bad message dead-lettered once."""
    assert await stored_offsets(engine, group, topic) == dict(ends)
    assert await counts(engine) == expected.counts, "(events, resource rows, dead letters)"
    stored_ids = await stored_event_ids(engine)
    missing, extra = expected.event_ids - stored_ids, stored_ids - expected.event_ids
    assert not missing and not extra, f"{len(missing)} events missing, {len(extra)} unexpected"
    positions = await dead_letter_positions(engine, group, topic)
    assert len(set(positions)) == len(positions), "a message was dead-lettered twice"
    assert positions == list(expected.bad_positions), "dead letters at the wrong positions"


async def wait_dead_letters_sent(
    engine: AsyncEngine, group: str, timeout_s: float, diagnostics: Callable[[], str]
) -> None:
    """Wait until every dead letter of `group` is marked as sent to the topic."""
    c = dead_letters.c
    unsent: list[Position] = []

    async def all_sent() -> bool:
        nonlocal unsent
        query = select(c.partition, c.offset).where(c.group_id == group, c.published.is_(None))
        async with engine.connect() as conn:
            unsent = sorted((int(p), int(o)) for p, o in await conn.execute(query))
        return not unsent

    try:
        await wait_until(all_sent, timeout_s, "every dead letter to reach the dead-letter topic")
    except AssertionError as exc:
        where = f"unsent (partition, offset): {unsent}"
        raise AssertionError(f"{exc}; {where}\n{diagnostics()}") from None


async def wait_stored(
    engine: AsyncEngine,
    group: str,
    topic: str,
    ends: Mapping[int, int],
    timeout_s: float,
    diagnostics: Callable[[], str],
) -> float:
    """Wait until the stored offsets equal `ends`; the seconds it took."""
    last: dict[int, int] = {}

    async def caught_up() -> bool:
        nonlocal last
        last = await stored_offsets(engine, group, topic)
        return last == dict(ends)

    try:
        return await wait_until(caught_up, timeout_s, f"stored offsets to reach {dict(ends)}", 0.2)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; last stored {last}\n{diagnostics()}") from None


def progressed(engine: AsyncEngine, group: str, topic: str) -> Callable[[], Awaitable[bool]]:
    """A check: has any offset of the group been stored yet?"""

    async def check() -> bool:
        return sum((await stored_offsets(engine, group, topic)).values()) > 0

    return check


def chunked(values: Sequence[bytes | None], size: int) -> list[Sequence[bytes | None]]:
    return [values[i : i + size] for i in range(0, len(values), size)]


async def send_paced(
    info: StackInfo,
    topic: str,
    chunks: Iterable[Sequence[bytes | None]],
    pause_s: float,
    positions: list[Position],
) -> None:
    """Send chunk after chunk with a pause between them (the scenario's pace),
    appending each message's position in order."""
    for n, chunk in enumerate(chunks):
        if n:
            await asyncio.sleep(pause_s)
        positions.extend(await send(info, topic, chunk))


async def wait_ready(
    pool: WorkerPool, slots: Sequence[int], timeout_s: float, marker: str = READY_MARKER
) -> None:
    async def up() -> bool:
        return all(pool.ready(i, marker) for i in slots)

    try:
        await wait_until(up, timeout_s, f"workers {list(slots)} to be consuming", 0.1)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{pool.tail()}") from None


def no_crashes(pool: WorkerPool) -> None:
    crashes = pool.crashes()
    assert not crashes, f"workers exited on their own: {crashes}\n{pool.tail()}"


# --- a) chaos ---------------------------------------------------------------------


@pytest.mark.parametrize("membership", ["dynamic", "static"])
async def test_chaos_kills_and_scaling_lose_and_duplicate_nothing(
    stack_info: StackInfo, engine: AsyncEngine, tmp_path: Path, membership: str
) -> None:
    started = time.monotonic()
    topic, partitions = unique("chaos"), 6
    group = f"group-{topic}"
    await create_topic(stack_info, topic, partitions)
    values = list(messages(100_000, seed=101, invalid_every=100))
    rng = random.Random(101)
    env = worker_env(stack_info, topic, group, shutdown_grace_s=SHUTDOWN_GRACE_S)
    positions: list[Position] = []
    actions: list[str] = []
    scale_down_codes: list[int] = []

    static = membership == "static"
    async with WorkerPool(env, tmp_path / "workers", static_membership=static) as pool:
        pool.start(3)

        async def chaos() -> None:
            for round_ in range(12):
                await asyncio.sleep(rng.uniform(2.5, 3.5))  # the pace of the chaos
                victim = rng.choice(pool.alive())
                code = await asyncio.to_thread(pool.kill, victim)
                await asyncio.to_thread(pool.restart, victim)
                stored = sum((await stored_offsets(engine, group, topic)).values())
                actions.append(
                    f"{time.monotonic() - started:5.1f}s kill {victim} ({code});"
                    f" {len(positions)} sent, {stored} stored"
                )
                if round_ == 3:
                    # SIGTERM is the contract of a worker that is up: one still
                    # importing has no handler for it yet.
                    await wait_ready(pool, pool.alive(), 60)
                    codes = await asyncio.to_thread(pool.scale, 1)
                    scale_down_codes.extend(codes)
                    actions.append(f"{time.monotonic() - started:5.1f}s scaled to 1 {codes}")
                elif round_ == 7:
                    await asyncio.to_thread(pool.scale, 3)
                    actions.append(f"{time.monotonic() - started:5.1f}s scaled to 3")

        producer = asyncio.create_task(
            send_paced(stack_info, topic, chunked(values, 10_000), 3.5, positions)
        )
        try:
            await chaos()
        except BaseException:
            producer.cancel()
            raise
        await producer
        chaos_done = time.monotonic()
        assert len(positions) == len(values)
        ends = await end_offsets(stack_info, topic, partitions)
        assert sum(ends.values()) == len(values)

        took = await wait_stored(engine, group, topic, ends, 240, pool.tail)
        await wait_dead_letters_sent(engine, group, 60, pool.tail)
        print(
            f"\nchaos ({membership}): {len(actions)} actions, produced and chaos done after"
            f" {chaos_done - started:.1f}s, caught up {took:.1f}s later,"
            f" {time.monotonic() - started:.1f}s in all\n  " + "\n  ".join(actions)
        )
        kills = [a for a in actions if " kill " in a]
        assert len(kills) >= 10
        assert scale_down_codes == [0, 0], f"scale-down exit codes\n{pool.tail()}"
        no_crashes(pool)
        await wait_ready(pool, pool.alive(), 60)
        final_codes = await asyncio.to_thread(pool.stop_all)
        assert final_codes == [0, 0, 0], f"final SIGTERM exit codes\n{pool.tail()}"

    expected = tally(values, positions)
    assert expected.dead_letters == 1_000
    await assert_exact(engine, group, topic, expected, ends)
    # And each bad message is on the dead-letter topic once, with its origin.
    origins = [origin(r.headers) for r in await read_topic(stack_info, f"{topic}.dlq")]
    assert sorted((o[2], o[3]) for o in origins if o is not None) == list(expected.bad_positions)
    assert len(origins) == expected.dead_letters


# --- b) database outage -----------------------------------------------------------


async def test_database_outage_loses_nothing_and_dead_letters_nothing(
    local_stack: LocalStack,
    stack_info: StackInfo,
    engine: AsyncEngine,
    caplog: pytest.LogCaptureFixture,
) -> None:
    if os.environ.get("DATABASE_URL"):
        pytest.skip("the session uses an external database (DATABASE_URL): it cannot be stopped")
    caplog.set_level(logging.INFO, logger="worker")
    topic, partitions = unique("db-outage"), 3
    group = f"group-{topic}"
    await create_topic(stack_info, topic, partitions)
    values = list(messages(15_000, seed=202))
    settings = settings_for(stack_info, topic, group_id=group, session_timeout_s=6.0)
    worker_engine = create_engine(settings.database_url, settings.database_pool_size)
    persister = Persister(settings, worker_engine)
    stopping, ready = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(persister.run(stopping, ready))
    positions: list[Position] = []
    producer: asyncio.Task[None] | None = None
    try:
        is_ready = asyncio.create_task(ready.wait())
        await asyncio.wait([task, is_ready], return_when=asyncio.FIRST_COMPLETED)
        is_ready.cancel()
        assert not task.done(), task.result()
        # 30 chunks of 500, one a second: producing goes on through the outage.
        producer = asyncio.create_task(
            send_paced(stack_info, topic, chunked(values, 500), 1.0, positions)
        )
        await wait_until(progressed(engine, group, topic), 60, "the first stored offsets")
        before = await stored_offsets(engine, group, topic)

        await asyncio.to_thread(local_stack.stop_postgres)
        outage_started = time.monotonic()
        try:
            await asyncio.sleep(15)  # the outage
            assert not task.done(), "the persister stopped during the outage"
        finally:
            await asyncio.to_thread(local_stack.start_postgres)
        outage_s = time.monotonic() - outage_started

        await producer
        ends = await end_offsets(stack_info, topic, partitions)
        assert sum(ends.values()) == len(values)
        took = await wait_stored(engine, group, topic, ends, 90, lambda: caplog.text[-6000:])
        print(
            f"\ndatabase outage: {outage_s:.1f}s down; stored before {before};"
            f" caught up {took:.1f}s after the last send; stats {persister.stats}"
        )
        assert not task.done(), "the persister stopped"
        assert persister.stats.write_failures > 0, "the outage did not hit a write"
        assert persister.stats.rebalances == 1, "the persister lost its partitions"
    finally:
        if producer is not None and not producer.done():
            producer.cancel()
        stopping.set()
        await asyncio.wait_for(task, SHUTDOWN_GRACE_S + 30)
        await worker_engine.dispose()

    expected = tally(values, positions)
    assert expected.dead_letters == 0
    await assert_exact(engine, group, topic, expected, ends)


# --- c) broker restart ------------------------------------------------------------


async def test_broker_restart_mid_run_loses_and_duplicates_nothing(
    local_stack: LocalStack, stack_info: StackInfo, engine: AsyncEngine, tmp_path: Path
) -> None:
    topic, partitions = unique("broker-restart"), 4
    group = f"group-{topic}"
    await create_topic(stack_info, topic, partitions)
    values = list(messages(40_000, seed=303, invalid_every=500))
    first, rest = values[:25_000], values[25_000:]
    positions = await send(stack_info, topic, first)
    env = worker_env(stack_info, topic, group, shutdown_grace_s=SHUTDOWN_GRACE_S)

    async with WorkerPool(env, tmp_path / "workers") as pool:
        pool.start(1)
        await wait_until(progressed(engine, group, topic), 60, "the first stored offsets", 0.02)
        worker_pid = pool.pid(0)
        assert worker_pid is not None
        try:
            # The worker is held while the broker shuts down: the worker
            # stores 25,000 events in under a second, faster than a
            # controlled shutdown, so it would otherwise finish first.
            os.kill(worker_pid, signal.SIGSTOP)
            try:
                at_stop = await stored_offsets(engine, group, topic)
                await asyncio.to_thread(local_stack.stop_kafka)
            finally:
                os.kill(worker_pid, signal.SIGCONT)
            await asyncio.sleep(5)  # the broker is down, the worker running
            assert pool.alive() == [0], (
                f"the worker exited while the broker was down\n{pool.tail()}"
            )
        finally:
            await asyncio.to_thread(local_stack.start_kafka)
        assert sum(at_stop.values()) < len(first), "the broker stopped after the worker finished"

        positions += await send(stack_info, topic, rest)
        ends = await end_offsets(stack_info, topic, partitions)
        assert sum(ends.values()) == len(values)
        took = await wait_stored(engine, group, topic, ends, 120, pool.tail)
        print(f"\nbroker restart: stored at the stop {at_stop}; caught up {took:.1f}s after")
        no_crashes(pool)
        assert pool.alive() == [0]
        assert await asyncio.to_thread(pool.stop_all) == [0], pool.tail()

    await assert_exact(engine, group, topic, tally(values, positions), ends)


# --- d) SIGTERM mid-run -----------------------------------------------------------


async def test_sigterm_mid_run_exits_0_and_restart_resumes_exactly(
    stack_info: StackInfo, engine: AsyncEngine, tmp_path: Path
) -> None:
    topic, partitions = unique("sigterm"), 4
    group = f"group-{topic}"
    await create_topic(stack_info, topic, partitions)
    values = list(messages(50_000, seed=404, invalid_every=250))
    positions = await send(stack_info, topic, values)
    ends = await end_offsets(stack_info, topic, partitions)
    assert sum(ends.values()) == len(values)
    env = worker_env(stack_info, topic, group, shutdown_grace_s=SHUTDOWN_GRACE_S)

    async with WorkerPool(env, tmp_path / "workers") as pool:
        pool.start(1)
        await wait_until(progressed(engine, group, topic), 60, "the first stored offsets", 0.02)
        signalled = time.monotonic()
        code = await asyncio.to_thread(pool.terminate, 0, SHUTDOWN_GRACE_S + 30)
        took = time.monotonic() - signalled
        at_stop = await stored_offsets(engine, group, topic)
        print(f"\nSIGTERM: exit {code} after {took:.1f}s; stored {at_stop} of {ends}")
        assert code == 0, pool.tail()
        assert took < SHUTDOWN_GRACE_S + EXIT_MARGIN_S, pool.tail()
        assert pool.grep("left group"), pool.tail()
        assert sum(at_stop.values()) < len(values), "SIGTERM came after the end of the backlog"
        # The rows and the offsets commit together: what is stored is exactly
        # the messages below the stored offsets.
        prefix = tally(values, positions, below=at_stop)
        assert await counts(engine) == prefix.counts, f"rows don't match offsets {at_stop}"
        assert await dead_letter_positions(engine, group, topic) == list(prefix.bad_positions)

        pool.restart(0)
        took = await wait_stored(engine, group, topic, ends, 120, pool.tail)
        print(f"restarted worker caught up in {took:.1f}s")
        no_crashes(pool)
        code = await asyncio.to_thread(pool.terminate, 0, SHUTDOWN_GRACE_S + 30)
        assert code == 0, pool.tail()

    await assert_exact(engine, group, topic, tally(values, positions), ends)


# --- e) a topic that does not exist yet ------------------------------------------

# aiokafka's default request timeout: how long its consumer's start-up waits
# for the metadata of a subscribed topic.
KAFKA_CLIENT_REQUEST_TIMEOUT_S = 40.0


async def consume_late_topic(
    stack_info: StackInfo, engine: AsyncEngine, tmp_path: Path, absent_s: float
) -> None:
    """Start a worker on a topic that does not exist, check it keeps running
    for `absent_s`, then create the topic: every event is persisted once."""
    topic, partitions = unique("late-topic"), 3
    group = f"group-{topic}"
    env = worker_env(stack_info, topic, group, metadata_max_age_s="1")

    async with WorkerPool(env, tmp_path / "workers") as pool:
        pool.start(1)
        await wait_ready(pool, [0], 60, marker="starting ")  # imported, settings read
        started = time.monotonic()
        while time.monotonic() - started < absent_s:  # it keeps running without its topic
            assert pool.alive() == [0], (
                f"the worker exited {time.monotonic() - started:.1f}s after start-up"
                f" without its topic: {pool.crashes()}\n{pool.tail()}"
            )
            await asyncio.sleep(0.1)

        await create_topic(stack_info, topic, partitions)
        values = list(messages(500, seed=505))
        positions = await send(stack_info, topic, values)
        ends = await end_offsets(stack_info, topic, partitions)
        assert sum(ends.values()) == len(values)
        took = await wait_stored(engine, group, topic, ends, 60, pool.tail)
        print(f"\nlate topic (after {absent_s:.0f}s): persisted {took:.1f}s after producing")
        no_crashes(pool)
        assert await asyncio.to_thread(pool.stop_all) == [0], pool.tail()

    await assert_exact(engine, group, topic, tally(values, positions), ends)


async def test_topic_created_after_start_is_consumed(
    stack_info: StackInfo, engine: AsyncEngine, tmp_path: Path
) -> None:
    await consume_late_topic(stack_info, engine, tmp_path, absent_s=2.0)


async def test_topic_created_after_the_client_request_timeout_is_consumed(
    stack_info: StackInfo, engine: AsyncEngine, tmp_path: Path
) -> None:
    """The worker says a missing topic "is picked up once created": also when
    that is later than the Kafka client's request timeout."""
    await consume_late_topic(
        stack_info, engine, tmp_path, absent_s=KAFKA_CLIENT_REQUEST_TIMEOUT_S + 5
    )
