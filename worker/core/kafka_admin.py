"""What operator commands ask Kafka: partitions, offsets, group members, and
moving a group's committed offsets."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment
from aiokafka.errors import KafkaError, TopicAlreadyExistsError, for_code
from aiokafka.structs import OffsetAndMetadata

from worker.core.retry import backoff_s
from worker.core.settings import Settings

# How long a retriable error (no group coordinator yet, a leader moving) is
# retried before it is the command's failure.
RETRY_FOR_S = 10.0
RETRY_BASE_S = 0.25
RETRY_CAP_S = 2.0
# Kafka's GROUP_ID_NOT_FOUND: what a coordinator answers for a group it does
# not know (older brokers answer no error and the state "Dead").
GROUP_ID_NOT_FOUND = 69
T = TypeVar("T")


async def retrying(call: Callable[[], Awaitable[T]]) -> T:
    deadline = time.monotonic() + RETRY_FOR_S
    failures = 0
    while True:
        try:
            return await call()
        except KafkaError as exc:
            if not exc.retriable or time.monotonic() > deadline:
                raise
        failures += 1
        await asyncio.sleep(backoff_s(failures, RETRY_BASE_S, RETRY_CAP_S))


# What the topics the worker and its commands create get on a cluster.
REPLICATION = 3
MIN_INSYNC_REPLICAS = 2


@dataclass(frozen=True)
class Member:
    member_id: str
    client_id: str
    host: str
    partitions: tuple[TopicPartition, ...] = ()


@dataclass(frozen=True)
class Group:
    """A group as the coordinator describes it; `state` "Dead" for a group
    Kafka does not know."""

    state: str
    members: list[Member]


class KafkaView:
    """Read-mostly access to topics and groups; use `KafkaView.open(settings)`."""

    def __init__(self, settings: Settings, admin: AIOKafkaAdminClient, reader: AIOKafkaConsumer):
        self.settings = settings
        self.admin = admin
        self.reader = reader

    @classmethod
    @asynccontextmanager
    async def open(cls, settings: Settings) -> AsyncIterator[KafkaView]:
        admin = AIOKafkaAdminClient(**settings.kafka_options())
        # Read committed, as the workers read: a log's end is its last
        # stable offset while a transaction is open.
        reader = AIOKafkaConsumer(
            **settings.kafka_options(), enable_auto_commit=False, isolation_level="read_committed"
        )
        # Stopped also when starting failed: an unstarted client that is
        # never stopped warns about itself when collected.
        try:
            await admin.start()
            await reader.start()
            yield cls(settings, admin, reader)
        finally:
            await reader.stop()
            await admin.close()

    async def partitions(self, topic: str) -> list[TopicPartition]:
        described = await self.admin.describe_topics([topic])
        found = sorted(p["partition"] for p in described[0]["partitions"])
        return [TopicPartition(topic, p) for p in found]

    async def beginnings(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        return dict(await self.reader.beginning_offsets(tps))

    async def ends(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        return dict(await self.reader.end_offsets(tps))

    async def at_time(self, tps: list[TopicPartition], ms: int) -> dict[TopicPartition, int]:
        """The first offset at or after `ms` in each partition (the end if none)."""
        found = await self.reader.offsets_for_times({tp: ms for tp in tps})
        ends = await self.ends(tps)
        return {tp: ends[tp] if found[tp] is None else found[tp].offset for tp in tps}

    async def committed(self, group: str, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        offsets = await retrying(
            lambda: self.admin.list_consumer_group_offsets(group, partitions=tps)
        )
        return {tp: meta.offset for tp, meta in offsets.items() if meta.offset >= 0}

    async def members(self, group: str) -> list[Member]:
        return (await self.describe(group)).members

    async def describe(self, group: str) -> Group:
        responses = await retrying(lambda: self._described(group))
        members: list[Member] = []
        state = "Dead"
        for response in responses:
            for described in response.groups:
                # (error, group, state, protocol type, protocol, members, ...)
                state = str(described[2]) or "Dead"
                for member in described[5]:
                    # (member id, [instance id,] client id, host, metadata, assignment)
                    member_id, client_id, host, assignment = (
                        member[0],
                        member[-4],
                        member[-3],
                        member[-1],
                    )
                    owned = (
                        tuple(ConsumerProtocolMemberAssignment.decode(assignment).partitions())
                        if assignment
                        else ()
                    )
                    members.append(Member(member_id, str(client_id), str(host), owned))
        return Group(state, members)

    async def _described(self, group: str) -> list[Any]:
        """The coordinator's answer; its error, if any, raised (so a
        coordinator that is moving is asked again rather than read as a
        group with no state and no members). A group Kafka does not know is
        an answer: "Dead"."""
        responses: list[Any] = await self.admin.describe_consumer_groups([group])
        for response in responses:
            for described in response.groups:
                code = int(described[0])
                if code not in (0, GROUP_ID_NOT_FOUND):
                    raise for_code(code)(f"describing group {group!r}")
        return responses

    async def commit(self, group: str, offsets: dict[TopicPartition, int]) -> None:
        """Set the group's committed offsets (the group must have no members)."""
        committer = AIOKafkaConsumer(
            **self.settings.kafka_options(),
            group_id=group,
            enable_auto_commit=False,
        )
        await committer.start()
        try:
            committer.assign(list(offsets))
            await committer.commit({tp: OffsetAndMetadata(o, "") for tp, o in offsets.items()})
        finally:
            await committer.stop()


async def create_topic(
    options: Mapping[str, Any],
    topic: str,
    partitions: int,
    configs: Mapping[str, str] | None = None,
) -> bool:
    """Create `topic` unless it exists (True if this call created it), with
    replication min(3, brokers), min.insync.replicas min(2, replication)
    (an acknowledged write is on two brokers whenever there are two) and
    the topic `configs` given, which win. aiokafka returns per-topic errors
    in the response rather than raising them, so they are checked here."""
    admin = AIOKafkaAdminClient(**options)
    await admin.start()
    try:
        brokers = len((await admin.describe_cluster())["brokers"])
        replication = min(REPLICATION, brokers)
        durable = {"min.insync.replicas": str(min(MIN_INSYNC_REPLICAS, replication))}
        topic_configs = durable | dict(configs or {})
        new = NewTopic(topic, partitions, replication, topic_configs=topic_configs)
        response = await admin.create_topics([new])
    finally:
        await admin.close()
    for _name, code, *_message in response.topic_errors:
        if code == TopicAlreadyExistsError.errno:
            return False
        if code != 0:
            raise for_code(code)(f"creating topic {topic}")
    return True


async def topic_config(options: Mapping[str, Any], topic: str, name: str) -> str | None:
    """One setting of `topic` as the broker applies it (its own, or the
    broker's default); None if the broker does not report it."""
    admin = AIOKafkaAdminClient(**options)
    await admin.start()
    try:
        resource = ConfigResource(ConfigResourceType.TOPIC, topic, {name: None})
        responses = await admin.describe_configs([resource])
    finally:
        await admin.close()
    for response in responses:
        for code, _message, _type, _name, entries in response.resources:
            if code != 0:
                raise for_code(code)(f"describing topic {topic}")
            for entry_name, value, *_flags in entries:
                if entry_name == name:
                    return str(value)
    return None
