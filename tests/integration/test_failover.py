"""A PostgreSQL failover: the primary dies (SIGKILL) and an asynchronous
streaming standby that had not received its last commits is promoted, so
the database goes back in time under running workers.

The workers reach the database through a libpq list of hosts with
`target_session_attrs=read-write`. Offsets commit with the rows, so the
stored offsets went back with the rows: the next write of each partition
fails its fence (worded as lost writes), the worker reloads the offset and
writes the lost tail again. Its dead letters had already been sent to the
dead-letter topic before the primary died: they are written again, found on
the topic, and not sent a second time.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from schemas.tables import dead_letters
from tests.integration.replicated_postgres import ReplicatedPostgres
from tests.integration.support import (
    create_topic,
    end_offsets,
    read_topic,
    stored_offsets,
    unique,
    wait_until,
)
from tests.integration.test_faults import (
    Position,
    assert_exact,
    chunked,
    no_crashes,
    send_paced,
    tally,
    wait_dead_letters_sent,
    wait_ready,
    wait_stored,
)
from tests.integration.workers import WorkerPool, run_command, worker_env
from worker.core.database_url import normalize
from worker.devtools.loadgen import messages
from worker.devtools.stack import StackInfo
from worker.pipeline.connections import create_engine
from worker.pipeline.dead_letters.records import origin

pytestmark = pytest.mark.faults

LOST_WRITES = "the database lost writes (a failover or restore?)"
PARTITIONS = 3
GROUP = "failover"


async def standby_offsets(pg: ReplicatedPostgres, topic: str) -> dict[int, int]:
    rows = await pg.standby.query(
        "SELECT partition, next_offset FROM persister_consumer_offsets "
        "WHERE group_id = $1 AND topic = $2",
        GROUP,
        topic,
    )
    return {int(r["partition"]): int(r["next_offset"]) for r in rows}


async def sent_in_tail(engine: AsyncEngine, kept: Mapping[int, int]) -> list[Position]:
    """Dead letters sent to the topic (and marked) at or past the offsets
    the standby kept: the ones the failover loses."""
    c = dead_letters.c
    query = select(c.partition, c.offset).where(c.published.is_not(None))
    async with engine.connect() as conn:
        rows = [(int(p), int(o)) for p, o in await conn.execute(query)]
    return sorted((p, o) for p, o in rows if o >= kept.get(p, 0))


async def lose_a_tail(
    pg: ReplicatedPostgres, engine: AsyncEngine, topic: str, diagnostics: str
) -> tuple[dict[int, int], dict[int, int], list[Position]]:
    """Hold the standby back while the workers write, until every partition
    and at least one sent dead letter is past what it has. Returns the
    standby's offsets, the primary's, and the dead letters it lacks."""

    async def replicated() -> bool:
        # Every partition, and a dead letter sent, before the standby stops.
        rows = await pg.standby.query(
            "SELECT count(*) AS n FROM persister_dead_letters WHERE published IS NOT NULL"
        )
        return len(await standby_offsets(pg, topic)) == PARTITIONS and rows[0]["n"] > 0

    await wait_until(replicated, 60, "the standby to have every partition's offset", 0.1)
    await pg.hold_back_standby()

    async def stopped() -> bool:
        return not await pg.receiving()

    await wait_until(stopped, 30, "the standby to stop receiving WAL")
    kept = await standby_offsets(pg, topic)
    assert len(kept) == PARTITIONS, f"the standby has offsets {kept}\n{diagnostics}"
    primary: dict[int, int] = {}
    lost: list[Position] = []

    async def tail_lost() -> bool:
        nonlocal primary, lost
        primary = await stored_offsets(engine, GROUP, topic)
        lost = await sent_in_tail(engine, kept)
        return all(primary[p] > kept[p] for p in kept) and len(lost) >= 2

    await wait_until(tail_lost, 60, "writes and sent dead letters past the standby", 0.2)
    return kept, primary, lost


async def test_a_failover_to_a_standby_behind_rewrites_the_lost_tail_once(
    stack_info: StackInfo, tmp_path: Path
) -> None:
    started = time.monotonic()
    pg = ReplicatedPostgres()
    await asyncio.to_thread(pg.start)
    engine: AsyncEngine | None = None
    try:
        url = pg.url()
        code, out, err = await asyncio.to_thread(
            run_command, stack_info, "migrate", env={"DATABASE_URL": url}
        )
        assert code == 0, err
        assert f"migrated postgresql://postgres@{pg.primary.address},{pg.standby.address}" in out
        engine = create_engine(normalize(url), pool_size=2)
        await failover(pg, engine, stack_info, tmp_path, url)
    finally:
        if engine is not None:
            await engine.dispose()
        await asyncio.to_thread(pg.stop)
    print(f"failover test: {time.monotonic() - started:.1f}s in all")


async def failover(
    pg: ReplicatedPostgres, engine: AsyncEngine, info: StackInfo, tmp_path: Path, url: str
) -> None:
    topic = unique("failover")
    await create_topic(info, topic, PARTITIONS)
    values = list(messages(9_000, seed=303, invalid_every=60))
    env = {**worker_env(info, topic, GROUP), "DATABASE_URL": url}
    positions: list[Position] = []
    async with WorkerPool(env, tmp_path / "workers") as pool:
        pool.start(2)
        await wait_ready(pool, [0, 1], 60)
        # 30 chunks of 300, three a second: producing goes on through the failover.
        producer = asyncio.create_task(
            send_paced(info, topic, chunked(values, 300), 0.3, positions)
        )
        try:
            kept, primary, lost = await lose_a_tail(pg, engine, topic, pool.tail())
            await asyncio.to_thread(pg.kill_primary)
            await asyncio.to_thread(pg.promote_standby)
            await producer
        finally:
            producer.cancel()
        ends = await end_offsets(info, topic, PARTITIONS)
        assert sum(ends.values()) == len(values)
        await wait_stored(engine, GROUP, topic, ends, 90, pool.tail)
        await wait_dead_letters_sent(engine, GROUP, 60, pool.tail)
        no_crashes(pool)
        fenced = pool.grep(LOST_WRITES)
        codes = await asyncio.to_thread(pool.stop_all)
        assert codes == [0, 0], f"exit codes after SIGTERM\n{pool.tail()}"

    assert all(kept[p] < primary[p] for p in kept), (kept, primary)
    assert fenced, f"no fence worded as lost writes\n{pool.tail()}"
    expected = tally(values, positions)
    assert expected.dead_letters == 150
    await assert_exact(engine, GROUP, topic, expected, ends)
    assert set(lost) <= set(expected.bad_positions)
    # Each bad message on the dead-letter topic once, those of the lost tail too.
    origins = [origin(r.headers) for r in await read_topic(info, f"{topic}.dlq")]
    on_topic = sorted((o[2], o[3]) for o in origins if o is not None)
    assert on_topic == list(expected.bad_positions), f"lost tail {lost}"
    assert len(origins) == expected.dead_letters
