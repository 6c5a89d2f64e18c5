"""The watchdog reads fetch answers from the consumer's state only: a
partition that left the assignment before its revoke is skipped, never a
crash; one fetched without an answer for long enough is a stall."""

from __future__ import annotations

import time
from typing import Any, cast

from aiokafka import AIOKafkaConsumer, TopicPartition

from worker.core import metrics
from worker.pipeline.stalls import FETCHING, Stalls
from worker.pipeline.watchdog import Watchdog


class Consumer:
    def __init__(self, assigned: set[TopicPartition], answered_ms: int) -> None:
        self.assigned = assigned
        self.answered_ms = answered_ms

    def assignment(self) -> set[TopicPartition]:
        return self.assigned

    def last_poll_timestamp(self, ktp: TopicPartition) -> int:
        # aiokafka asserts the partition is assigned.
        assert ktp in self.assigned
        return self.answered_ms


def test_fetch_answers_of_assigned_partitions_only() -> None:
    a, b = TopicPartition("events", 0), TopicPartition("events", 1)
    consumer = Consumer({a}, answered_ms=int((time.time() - 60) * 1000))
    stalls = Stalls(warn_s=10)
    owned: dict[Any, object] = {("events", 0): object()}
    dog = Watchdog(stalls, lambda: cast(AIOKafkaConsumer, consumer), owned, "g")
    dog.fetched(paused=[], fetching=[a, b])
    now = time.monotonic()
    dog.polled(now + 29.5)  # the loop polls; the broker does not answer
    dog.check(now + 30, time.time() + 30)  # b is no longer assigned: skipped
    assert stalls.stalled(FETCHING, now + 30) == ["events[0]"]
    assert metrics.oldest_unfinished_write.labels("events", "0")._value.get() == 0.0
    consumer.answered_ms = int((time.time() + 30) * 1000)  # an answer came
    dog.polled(now + 30)
    dog.check(now + 30.5, time.time() + 30.5)
    assert FETCHING not in stalls.conditions
    dog.forget(("events", 0))
