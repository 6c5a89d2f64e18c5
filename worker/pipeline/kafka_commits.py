"""Offsets written to the database, committed to Kafka after them.

For tooling only (lag, `kafka-consumer-groups`): the database holds the
truth and is where a partition's next owner resumes, so a commit that fails
loses nothing; its offsets go with the next one. Commits run in a task of
their own, under PERSISTER_KAFKA_TIMEOUT_S, so a broker that does not answer
never holds up the consume loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from worker.core.conditions import Conditions
from worker.core.topic_partition import TP
from worker.pipeline.stalls import COMMITTING, Stalls

COMMIT_EVERY_S = 1.0


class KafkaCommits:
    def __init__(
        self,
        consumer: Callable[[], AIOKafkaConsumer],
        owned: Mapping[TP, object],
        stalls: Stalls,
        group_id: str,
        timeout_s: float,
    ) -> None:
        self._consumer = consumer
        self._owned = owned
        self._stalls = stalls
        self._group_id = group_id
        self._timeout_s = timeout_s
        # Offsets written to the database but not yet committed to Kafka.
        self.uncommitted: dict[TP, int] = {}
        # Offsets an operator moved (a replay), each committed in a request
        # of its own before anything written after it: Kafka then shows the
        # move for a commit interval at least, where `persister replay`
        # looks for it, even when the partition's next write comes at once.
        self._moved: dict[TP, int] = {}
        self._committed_at = 0.0
        self._task: asyncio.Task[None] | None = None
        self._failing = Conditions("kafka_commit", unready=False)

    def written(self, tp: TP, offset: int) -> None:
        self.uncommitted[tp] = offset

    def moved(self, tp: TP, offset: int) -> None:
        """`tp` was positioned again at `offset`, where an operator moved it."""
        self.uncommitted.pop(tp, None)
        self._moved[tp] = offset

    def forget(self, tp: TP) -> None:
        self.uncommitted.pop(tp, None)
        self._moved.pop(tp, None)

    def due(self) -> None:
        """Commit what was written, all in one request, at most every
        COMMIT_EVERY_S and one request at a time."""
        now = time.monotonic()
        if (
            not (self.uncommitted or self._moved)
            or now - self._committed_at < COMMIT_EVERY_S
            or (self._task is not None and not self._task.done())
        ):
            return
        self._committed_at = now
        self._task = asyncio.create_task(self._commit(self._timeout_s))

    async def now(self, timeout_s: float) -> None:
        """Commit what is left now (a revoke, stopping), within `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        if self._task is not None and not self._task.done():
            await asyncio.wait({self._task}, timeout=max(0.0, timeout_s))
        if (left_s := deadline - time.monotonic()) > 0 and (
            self._task is None or self._task.done()
        ):
            # The one commit in flight, as `due` starts them: never two at
            # once, so the committed offsets never go back.
            self._task = asyncio.create_task(self._commit(left_s, everything=True))
            await asyncio.wait({self._task})

    async def _commit(self, timeout_s: float, everything: bool = False) -> None:
        """One request: the moved offsets if any (`everything`: with what was
        written since, which wins), else what was written."""
        if self._moved:
            pending = self._moved | self.uncommitted if everything else dict(self._moved)
            self._moved.clear()
            if everything:
                self.uncommitted.clear()
        else:
            pending = dict(self.uncommitted)
            self.uncommitted.clear()
        if not pending:
            return
        self._stalls.begin(COMMITTING, self._group_id, time.monotonic())
        try:
            async with asyncio.timeout(timeout_s):
                offsets = {TopicPartition(*tp): o for tp, o in pending.items()}
                await self._consumer().commit(offsets)
        except (KafkaError, TimeoutError) as exc:
            # Once while it lasts, whatever each failure's words.
            if "commit" not in self._failing:
                self._failing.raise_(
                    "commit",
                    f"Kafka offset commit skipped: {exc!r}; retried with the next one (the "
                    "database holds the offsets)",
                    logging.INFO,
                )
            for tp, offset in pending.items():  # unless newer ones came meanwhile
                if tp in self._owned:
                    self.uncommitted.setdefault(tp, offset)
            if self.uncommitted:
                return
        else:
            self._failing.clear("commit", "Kafka offset commits work again")
        self._stalls.end(COMMITTING, self._group_id, time.monotonic())
