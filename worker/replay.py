"""Replaying a topic: moving a group's positions back (or forward).

The database's `consumer_offsets` is where workers resume, so a replay moves
those rows; it also commits the same offsets to Kafka so Kafka's tooling
agrees. Writes are idempotent: replaying over rows already stored adds
nothing, and replaying after a trim (or into an empty database) restores what
is still in the topic.

Only while the group has no members: a running worker would overwrite the
new positions with its next flush (and its fence would stop it writing, but
not from re-reading from where it was).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from aiokafka import TopicPartition
from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncEngine

from schemas.tables import consumer_offsets
from worker.kafka_admin import KafkaView
from worker.storage import dialect_insert


class ReplayRefused(Exception):
    """The group has live members."""


@dataclass(frozen=True)
class Target:
    """Where to move to: exactly one of the fields is set."""

    earliest: bool = False
    offset: int | None = None
    timestamp: datetime | None = None


@dataclass(frozen=True)
class Move:
    partition: int
    stored: int | None
    committed: int | None
    target: int

    @property
    def events(self) -> int | None:
        """How many records the move re-reads (negative: skips)."""
        return None if self.stored is None else self.stored - self.target


async def targets(
    view: KafkaView, tps: list[TopicPartition], target: Target
) -> dict[TopicPartition, int]:
    beginnings = await view.beginnings(tps)
    ends = await view.ends(tps)
    if target.earliest:
        return beginnings
    if target.offset is not None:
        wanted = target.offset
        return {tp: min(max(wanted, beginnings[tp]), ends[tp]) for tp in tps}
    assert target.timestamp is not None
    return await view.at_time(tps, int(target.timestamp.timestamp() * 1000))


async def plan(
    view: KafkaView,
    engine: AsyncEngine,
    group: str,
    topic: str,
    partition: int | None,
    target: Target,
) -> list[Move]:
    tps = await view.partitions(topic)
    if partition is not None:
        tps = [tp for tp in tps if tp.partition == partition]
        if not tps:
            raise ValueError(f"topic {topic} has no partition {partition}")
    goals = await targets(view, tps, target)
    committed = await view.committed(group, tps)
    c = consumer_offsets.c
    async with engine.connect() as conn:
        rows = await conn.execute(
            select(c.partition, c.next_offset).where(c.group_id == group, c.topic == topic)
        )
        stored = {p: o for p, o in rows}
    return [
        Move(tp.partition, stored.get(tp.partition), committed.get(tp), goals[tp]) for tp in tps
    ]


async def apply(
    view: KafkaView, engine: AsyncEngine, group: str, topic: str, moves: list[Move], force: bool
) -> None:
    members = await view.members(group)
    if members and not force:
        names = ", ".join(f"{m.client_id}@{m.host}" for m in members)
        raise ReplayRefused(f"group {group} has {len(members)} live members ({names})")
    c = consumer_offsets.c
    async with engine.begin() as conn:
        for move in moves:
            await conn.execute(
                delete(consumer_offsets).where(
                    c.group_id == group, c.topic == topic, c.partition == move.partition
                )
            )
            await conn.execute(
                dialect_insert(conn, consumer_offsets).values(
                    group_id=group, topic=topic, partition=move.partition, next_offset=move.target
                )
            )
    await view.commit(group, {TopicPartition(topic, m.partition): m.target for m in moves})
