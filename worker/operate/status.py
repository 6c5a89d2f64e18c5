"""Where a group stands: per partition, the stored offset (the truth), Kafka's
committed offset, the log end, the lag, which member owns it and whether an
operator paused it; the group's members; who leads the trimmer; how many
dead letters there are; configured topics that do not exist.

With PERSISTER_TOPIC_PATTERN the topics are those of Kafka's topic list that
the pattern matches, as the consumer subscribes to them (`re.match`, internal
topics left out; a dead-letter topic the pattern matches is consumed too)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime

from aiokafka import TopicPartition
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from schemas.tables import consumer_offsets, dead_letters
from worker.core.kafka_admin import KafkaView, Member
from worker.core.leader import Lease, current
from worker.core.settings import Settings
from worker.pipeline.controls import paused_among, read_controls


@dataclass(frozen=True)
class PartitionStatus:
    topic: str
    partition: int
    stored: int | None
    committed: int | None
    end: int
    updated: datetime | None
    member: str | None = None
    paused: bool = False

    @property
    def lag(self) -> int:
        return self.end - (self.stored or 0)


@dataclass(frozen=True)
class Status:
    group: str
    state: str
    partitions: list[PartitionStatus]
    members: list[Member]
    leader: Lease | None
    dead_letters: int
    missing_topics: list[str] = field(default_factory=list)

    @property
    def lag(self) -> int:
        return sum(p.lag for p in self.partitions)

    @property
    def known(self) -> bool:
        """False for a group nothing has heard of: no member, nothing
        stored, nothing committed."""
        return bool(
            self.members
            or self.state != "Dead"
            or any(p.stored is not None or p.committed is not None for p in self.partitions)
        )


def leader_name(holder: str) -> str:
    """A trimmer holder (`<host>:<pid>:<suffix>`) named like a member."""
    parts = holder.split(":")
    return ":".join(parts[:2]) if len(parts) == 3 else holder


async def consumed_topics(view: KafkaView, settings: Settings) -> list[str]:
    """The topics the workers consume: the configured list, or with a
    pattern the existing topics it matches."""
    if settings.topic_pattern is None:
        return list(settings.topics)
    pattern = re.compile(settings.topic_pattern)
    return sorted(t for t in await view.reader.topics() if pattern.match(t))


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
        controls = await read_controls(conn, group)
    names = sorted(set(topics) | {topic for topic, _ in stored})
    tps: list[TopicPartition] = []
    missing = []
    for topic in names:
        found = await view.partitions(topic)
        tps += found
        if not found:
            missing.append(topic)
    ends = await view.ends(tps) if tps else {}
    committed = await view.committed(group, tps) if tps else {}
    described = await view.describe(group)
    owner = {tp: m.client_id for m in described.members for tp in m.partitions}
    paused = paused_among(controls, [(tp.topic, tp.partition) for tp in tps])
    partitions = [
        PartitionStatus(
            tp.topic,
            tp.partition,
            stored.get((tp.topic, tp.partition), (None, None))[0],
            committed.get(tp),
            ends[tp],
            stored.get((tp.topic, tp.partition), (None, None))[1],
            owner.get(tp),
            (tp.topic, tp.partition) in paused,
        )
        for tp in tps
    ]
    return Status(
        group,
        described.state,
        partitions,
        described.members,
        await current(engine, lease_name),
        n_dead,
        missing,
    )
