"""Kafka offset commits never hold anything up: a broker that does not
answer costs at most the deadline, and the offsets go with the next commit."""

from __future__ import annotations

import asyncio
import time
from typing import Any, cast

from aiokafka import AIOKafkaConsumer, TopicPartition

from worker.core.topic_partition import TP
from worker.pipeline.kafka_commits import KafkaCommits
from worker.pipeline.stalls import COMMITTING, Stalls


class Broker:
    """A consumer's `commit`, answering or not."""

    def __init__(self) -> None:
        self.silent = True
        self.committed: list[dict[TopicPartition, int]] = []

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        if self.silent:
            await asyncio.Event().wait()
        self.committed.append(offsets)


def commits_to(broker: Broker, owned: dict[TP, Any], stalls: Stalls) -> KafkaCommits:
    consumer = cast(AIOKafkaConsumer, broker)
    return KafkaCommits(lambda: consumer, owned, stalls, "g", timeout_s=0.1)


async def test_a_silent_broker_costs_the_deadline_and_the_offsets_wait_for_the_next() -> None:
    broker, stalls = Broker(), Stalls(warn_s=0.05)
    owned: dict[TP, Any] = {("t", 0): object(), ("t", 1): object()}
    commits = commits_to(broker, owned, stalls)
    commits.written(("t", 0), 10)
    commits.written(("t", 1), 20)
    started = time.monotonic()
    commits.due()  # in a task of its own: returns at once
    assert time.monotonic() - started < 0.05
    del owned[("t", 1)]  # revoked meanwhile: not committed by this member
    await commits.now(0.3)  # the first one's deadline, then one more try's
    assert 0.1 < time.monotonic() - started < 1.0
    stalls.check(time.monotonic() + 1)
    assert COMMITTING in stalls.conditions
    assert commits.uncommitted == {("t", 0): 10}
    commits.written(("t", 0), 11)
    broker.silent = False
    await commits.now(1.0)
    assert broker.committed == [{TopicPartition("t", 0): 11}]
    assert COMMITTING not in stalls.conditions
    assert commits.uncommitted == {}


async def test_an_offset_an_operator_moved_is_committed_alone_before_later_ones() -> None:
    """A replay moved (t, 0) back to 0; the worker reloaded it and wrote 60
    again within the same second. Kafka shows 0 first, for a commit interval,
    where `persister replay` looks for it; the partitions written meanwhile
    wait for the next request."""
    broker, stalls = Broker(), Stalls(warn_s=1.0)
    broker.silent = False
    owned: dict[TP, Any] = {("t", 0): object(), ("t", 1): object()}
    commits = commits_to(broker, owned, stalls)
    commits.written(("t", 1), 7)
    commits.moved(("t", 0), 0)
    commits.written(("t", 0), 60)
    commits.due()
    commits.due()  # within the interval: nothing more
    await commits.now(1.0)
    assert broker.committed == [
        {TopicPartition("t", 0): 0},
        {TopicPartition("t", 0): 60, TopicPartition("t", 1): 7},
    ]


async def test_stopping_commits_a_moved_offset_with_what_came_after_it() -> None:
    broker, stalls = Broker(), Stalls(warn_s=1.0)
    broker.silent = False
    commits = commits_to(broker, {("t", 0): object()}, stalls)
    commits.moved(("t", 0), 0)
    commits.written(("t", 0), 60)
    await commits.now(1.0)
    assert broker.committed == [{TopicPartition("t", 0): 60}]
