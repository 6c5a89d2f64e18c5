"""Where a group stands: per partition, the stored offset (the truth), Kafka's
committed offset, the log end and the lag; the group's members; who leads the
trimmer; how many dead letters there are."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from aiokafka import TopicPartition
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from schemas.tables import consumer_offsets, dead_letters
from worker.kafka_admin import KafkaView, Member
from worker.leader import Lease, current


@dataclass(frozen=True)
class PartitionStatus:
    topic: str
    partition: int
    stored: int | None
    committed: int | None
    end: int
    updated: datetime | None

    @property
    def lag(self) -> int:
        return self.end - (self.stored or 0)


@dataclass(frozen=True)
class Status:
    group: str
    partitions: list[PartitionStatus]
    members: list[Member]
    leader: Lease | None
    dead_letters: int

    @property
    def lag(self) -> int:
        return sum(p.lag for p in self.partitions)


async def gather(
    view: KafkaView, engine: AsyncEngine, group: str, topics: list[str], lease_name: str
) -> Status:
    c = consumer_offsets.c
    async with engine.connect() as conn:
        rows = await conn.execute(
            select(c.topic, c.partition, c.next_offset, c.updated).where(c.group_id == group)
        )
        stored = {(r.topic, r.partition): (r.next_offset, r.updated) for r in rows}
        letters = await conn.execute(select(func.count()).where(dead_letters.c.group_id == group))
        n_dead = int(letters.scalar_one())
    names = sorted(set(topics) | {topic for topic, _ in stored})
    tps: list[TopicPartition] = []
    for topic in names:
        tps += await view.partitions(topic)
    ends = await view.ends(tps) if tps else {}
    committed = await view.committed(group, tps) if tps else {}
    partitions = [
        PartitionStatus(
            tp.topic,
            tp.partition,
            stored.get((tp.topic, tp.partition), (None, None))[0],
            committed.get(tp),
            ends[tp],
            stored.get((tp.topic, tp.partition), (None, None))[1],
        )
        for tp in tps
    ]
    return Status(
        group, partitions, await view.members(group), await current(engine, lease_name), n_dead
    )
