"""The persister's watchdog: every WATCH_EVERY_S it reports stalls (see
`worker.pipeline.stalls`) and the age of each partition's oldest unfinished
write, from a task of its own, so that both show even while the consume
loop or a flush waits on the network."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Mapping

from aiokafka import AIOKafkaConsumer, TopicPartition

from worker.core import metrics
from worker.core.topic_partition import TP
from worker.pipeline.fetching import key
from worker.pipeline.stalls import FETCHING, WRITING, Stalls

logger = logging.getLogger(__name__)

WATCH_EVERY_S = 1.0


class Watchdog:
    def __init__(
        self,
        stalls: Stalls,
        consumer: Callable[[], AIOKafkaConsumer],
        owned: Mapping[TP, object],
        group_id: str,
    ) -> None:
        self.stalls = stalls
        self._consumer = consumer
        self._owned = owned
        self._group_id = group_id
        # When each partition was last resumed for fetching: its fetch
        # answers are awaited from then.
        self._fetching_since: dict[TP, float] = {}
        self._polled_at = 0.0

    def polled(self, now: float) -> None:
        self._polled_at = now

    def fetched(self, paused: list[TopicPartition], fetching: list[TopicPartition]) -> None:
        now = time.monotonic()
        for ktp in paused:
            self._fetching_since.pop((ktp.topic, ktp.partition), None)
        for ktp in fetching:
            self._fetching_since.setdefault((ktp.topic, ktp.partition), now)

    def forget(self, tp: TP) -> None:
        self._fetching_since.pop(tp, None)
        self.stalls.forget(key(tp), time.monotonic())
        with contextlib.suppress(KeyError):
            metrics.oldest_unfinished_write.remove(tp[0], str(tp[1]))

    @contextlib.contextmanager
    def waiting(self, step: str) -> Iterator[None]:
        """Around a step of the consume loop, itself under a deadline."""
        self.stalls.begin(step, self._group_id, time.monotonic())
        try:
            yield
        finally:  # failed or not, it is over
            self.stalls.end(step, self._group_id, time.monotonic())

    async def run(self, crashed: Callable[[BaseException], None]) -> None:
        """Until cancelled. A bug here stops the worker loudly (`crashed`)
        rather than leaving it unwatched."""
        try:
            while True:
                await asyncio.sleep(WATCH_EVERY_S)
                self.check(time.monotonic(), time.time())
        except Exception as exc:
            logger.exception("the stall watchdog failed")
            crashed(exc)

    def check(self, now: float, wall: float) -> None:
        # Fetch answers come every fetch wait (0.5 s) even with nothing new,
        # for the partitions fetched while the loop polls.
        fetching: dict[str, float] = {}
        if now - self._polled_at < 2 * WATCH_EVERY_S:
            consumer = self._consumer()
            assigned = consumer.assignment()
            for tp, resumed in list(self._fetching_since.items()):
                ktp = TopicPartition(*tp)
                if ktp not in assigned:  # e.g. its topic deleted, before the revoke
                    del self._fetching_since[tp]
                    continue
                answered_ms = consumer.last_poll_timestamp(ktp)
                last = resumed if answered_ms is None else now - (wall - answered_ms / 1000)
                fetching[key(tp)] = max(resumed, last)
        self.stalls.observe(FETCHING, fetching, now)
        self.stalls.check(now)
        for tp in self._owned:
            age_s = self.stalls.oldest_s(WRITING, key(tp), now)
            metrics.oldest_unfinished_write.labels(tp[0], str(tp[1])).set(age_s)
