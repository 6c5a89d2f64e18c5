"""A partition's stored offset in `consumer_offsets`, and the fence on it: a
batch's transaction first moves the offset from the value this worker last
saw, so a worker that lost the partition (or a database that lost writes)
is found out before anything is written (`FenceError`)."""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import and_, func, select, tuple_, update
from sqlalchemy.ext.asyncio import AsyncConnection

from schemas.tables import consumer_offsets
from worker.core.sql_dialect import dialect_insert
from worker.core.topic_partition import TP


class FenceError(Exception):
    """The stored offset is not the one this worker last saw. Above it (or
    set where this worker found none): another worker owns the partition now,
    or did in between. Below it, or gone: the database lost writes this
    worker committed (a failover to a replica that had not received them, a
    restore from a backup), or a forced replay moved it back; either way the
    worker reloads it and writes the lost tail again."""

    def __init__(self, tp: TP, expected: int | None, stored: int | None) -> None:
        self.tp, self.expected, self.stored = tp, expected, stored
        where = f"{tp[0]}[{tp[1]}]"
        if self.lost_writes:
            now = "gone" if stored is None else f"{stored}"
            text = (
                f"{where}: stored offset is {now}, below the {expected} this worker wrote; "
                "the database lost writes (a failover or restore?), or a replay moved it back"
            )
        elif expected is None:
            text = (
                f"{where}: stored offset is {stored}, where there was none; another worker owns it"
            )
        else:
            text = (
                f"{where}: stored offset is no longer {expected} but {stored}; "
                "another worker owns it (or this worker's last commit went through "
                "and its answer was lost)"
            )
        super().__init__(text)

    @property
    def lost_writes(self) -> bool:
        """The database went back in time (see the class)."""
        return self.expected is not None and (self.stored is None or self.stored < self.expected)


async def load_offsets(
    conn: AsyncConnection, group_id: str, partitions: Iterable[TP]
) -> dict[TP, int]:
    wanted = list(partitions)
    if not wanted:
        return {}
    c = consumer_offsets.c
    rows = await conn.execute(
        select(c.topic, c.partition, c.next_offset).where(
            c.group_id == group_id, tuple_(c.topic, c.partition).in_(wanted)
        )
    )
    return {(topic, partition): offset for topic, partition, offset in rows}


async def advance_offset(
    conn: AsyncConnection,
    group_id: str,
    tp: TP,
    expected: int | None,
    next_offset: int,
) -> None:
    """Move the stored offset from `expected` to `next_offset`, or raise FenceError.

    The row lock taken here serialises two writers of one partition; the
    second re-checks the condition after the first commits and fails it.
    """
    c = consumer_offsets.c
    key = and_(c.group_id == group_id, c.topic == tp[0], c.partition == tp[1])
    if expected is None:
        stmt = (
            dialect_insert(conn, consumer_offsets)
            .values(group_id=group_id, topic=tp[0], partition=tp[1], next_offset=next_offset)
            .on_conflict_do_nothing()
        )
    else:
        stmt = (
            update(consumer_offsets)
            .where(key, c.next_offset == expected)
            .values(next_offset=next_offset, updated=func.now())
        )
    result = await conn.execute(stmt)
    if result.rowcount != 1:
        # Which way it moved tells what happened (see FenceError).
        stored = (await conn.execute(select(c.next_offset).where(key))).scalar_one_or_none()
        raise FenceError(tp, expected, stored)
