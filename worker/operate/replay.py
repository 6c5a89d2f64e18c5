"""Replaying a topic: moving a group's positions back (or forward).

The database's `consumer_offsets` is where workers resume, so a replay moves
those rows; it also commits the same offsets to Kafka so Kafka's tooling
agrees. Writes are idempotent: replaying over rows already stored adds
nothing, and replaying after a trim (or into an empty database) restores what
is still in the topic.

While the group has live members it refuses, unless forced: then it moves
the stored offsets and, in the same transaction, raises the partitions'
`reload` in `partition_controls`; each live owner reloads its stored offset
within about a second (idle partitions too; a write in between fails its
fence and reloads as well) and commits it to Kafka itself. Kafka is not
committed to from outside a live group (it would be refused).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from datetime import datetime

from aiokafka import TopicPartition
from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncEngine

from schemas.tables import consumer_offsets
from worker.core.kafka_admin import KafkaView
from worker.core.sql_dialect import dialect_insert
from worker.pipeline.controls import request_reload


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
    if not tps:
        raise ValueError(f"topic {topic} does not exist")
    if partition is not None:
        tps = [tp for tp in tps if tp.partition == partition]
        if not tps:
            raise ValueError(f"topic {topic} has no partition {partition}")
    goals = await targets(view, tps, target)
    if target.offset is not None:
        ends = await view.ends(tps)
        past = [tp for tp in tps if target.offset > ends[tp]]
        if past:
            listed = ", ".join(f"{tp.topic}[{tp.partition}] ends at {ends[tp]}" for tp in past)
            raise ValueError(f"--to-offset {target.offset} is past the log end ({listed})")
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
) -> int:
    """Move; returns how many live members were told to reload."""
    members = await view.members(group)
    if members and not force:
        names = ", ".join(m.client_id for m in members)
        raise ReplayRefused(f"group {group} has {len(members)} live members ({names})")
    c = consumer_offsets.c
    async with engine.begin() as conn:
        await request_reload(conn, group, topic, [m.partition for m in moves])
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
    if not members:
        await view.commit(group, {TopicPartition(topic, m.partition): m.target for m in moves})
    return len(members)


async def followed(
    view: KafkaView, group: str, topic: str, moves: list[Move], timeout_s: float
) -> dict[int, int]:
    """Kafka's committed offsets of the moved partitions once the live
    workers have committed the targets, or as they are at the deadline."""
    tps = [TopicPartition(topic, m.partition) for m in moves]
    wanted = {m.partition: m.target for m in moves}
    deadline = time.monotonic() + timeout_s
    while True:
        committed = {tp.partition: o for tp, o in (await view.committed(group, tps)).items()}
        if committed == wanted or time.monotonic() >= deadline:
            return committed
        await asyncio.sleep(0.2)
