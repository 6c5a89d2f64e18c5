"""What tests ask a Kafka cluster: who leads which partition, whether every
replica is in sync, and a cluster of three for a test module."""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from tests.integration.support import wait_until
from worker.devtools.stack import LocalStack, StackInfo

BROKERS = 3
# Where the group's offsets live: in sync too before the next broker stops.
OFFSETS_TOPIC = "__consumer_offsets"


@contextmanager
def cluster_stack(database_url: str) -> Iterator[LocalStack]:
    """A three-node KRaft cluster beside the session's PostgreSQL (at
    `database_url`); every node is stopped on exit."""
    with tempfile.TemporaryDirectory(prefix="persister-cluster-") as tmp:
        stack = LocalStack(Path(tmp), database_url=database_url, brokers=BROKERS)
        try:
            stack.start()
            yield stack
        finally:
            stack.stop()


async def describe(
    info: StackInfo, topics: list[str], timeout_s: float = 30
) -> list[dict[str, Any]]:
    """The topics' metadata. The admin client asks one node: while a node
    is down it may pick that one, so a retriable error is asked again; a
    node that does not know a new topic yet answers it with an error code
    and no partitions, so that is asked again too, until `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        admin = AIOKafkaAdminClient(bootstrap_servers=info.kafka_bootstrap_servers)
        try:
            await admin.start()
            described: list[dict[str, Any]] = await admin.describe_topics(topics)
            known = all(t["error_code"] == 0 and t["partitions"] for t in described)
            if known or time.monotonic() > deadline:
                return described
        except KafkaError as exc:
            if not exc.retriable or time.monotonic() > deadline:
                raise
        finally:
            await admin.close()
        await asyncio.sleep(0.5)


async def leaders(info: StackInfo, topic: str) -> dict[int, int]:
    """partition -> the node leading it (-1: none right now)."""
    (described,) = await describe(info, [topic])
    return {p["partition"]: p["leader"] for p in described["partitions"]}


async def busiest_leader(info: StackInfo, topic: str) -> tuple[int, list[int]]:
    """The node leading most of `topic`'s partitions, and those partitions."""
    led = await leaders(info, topic)
    node = Counter(led.values()).most_common(1)[0][0]
    return node, sorted(p for p, n in led.items() if n == node)


async def fully_replicated(info: StackInfo, topics: list[str], brokers: int = BROKERS) -> bool:
    """Whether every partition of `topics` has a leader and `brokers` replicas in sync."""
    for described in await describe(info, topics):
        if described["error_code"] != 0 or not described["partitions"]:
            return False
        for p in described["partitions"]:
            if p["leader"] < 0 or len(p["isr"]) != brokers:
                return False
    return True


async def wait_replicated(info: StackInfo, topics: list[str], timeout_s: float = 120) -> float:
    """Wait until every replica of `topics` (and of the group offsets) is in
    sync: the point at which a rolling restart may stop the next broker."""

    async def in_sync() -> bool:
        return await fully_replicated(info, [*topics, OFFSETS_TOPIC])

    return await wait_until(in_sync, timeout_s, f"every replica of {topics} in sync", 0.5)
