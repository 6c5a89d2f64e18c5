"""A fenced write says what happened: the stored offset below the one this
worker wrote means the database lost writes (a failover to a replica that
had not received them, a restore); above it, another worker owns the
partition."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from schemas.tables import consumer_offsets
from worker.pipeline.offset_fence import FenceError, advance_offset

TP = ("events", 2)


@pytest.fixture
async def stored_100(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    """A database whose stored offset of TP is 100."""
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'offsets.db'}")
    async with engine.begin() as conn:
        await conn.run_sync(consumer_offsets.create)
        values = {"group_id": "g", "topic": TP[0], "partition": TP[1], "next_offset": 100}
        await conn.execute(insert(consumer_offsets).values(**values))
    yield engine
    await engine.dispose()


async def fence(engine: AsyncEngine, expected: int | None, partition: int = TP[1]) -> FenceError:
    with pytest.raises(FenceError) as info:
        async with engine.begin() as conn:
            await advance_offset(conn, "g", (TP[0], partition), expected, 200)
    return info.value


async def test_a_stored_offset_below_what_this_worker_wrote_is_lost_writes(
    stored_100: AsyncEngine,
) -> None:
    error = await fence(stored_100, 150)
    assert str(error) == (
        "events[2]: stored offset is 100, below the 150 this worker wrote; the database "
        "lost writes (a failover or restore?), or a replay moved it back"
    )
    assert error.lost_writes


async def test_a_stored_offset_gone_is_lost_writes(stored_100: AsyncEngine) -> None:
    error = await fence(stored_100, 150, partition=5)
    assert str(error) == (
        "events[5]: stored offset is gone, below the 150 this worker wrote; the database "
        "lost writes (a failover or restore?), or a replay moved it back"
    )


async def test_a_stored_offset_above_is_another_owner(stored_100: AsyncEngine) -> None:
    error = await fence(stored_100, 50)
    assert str(error) == (
        "events[2]: stored offset is no longer 50 but 100; another worker owns it (or this "
        "worker's last commit went through and its answer was lost)"
    )
    assert not error.lost_writes


async def test_a_stored_offset_where_there_was_none_is_another_owner(
    stored_100: AsyncEngine,
) -> None:
    error = await fence(stored_100, None)
    assert (
        str(error)
        == "events[2]: stored offset is 100, where there was none; another worker owns it"
    )
    assert not error.lost_writes
