"""What a persister does as partitions come and go: on assignment, load
their stored offsets and seek there (under the database's and Kafka's
deadlines); on revocation, flush them, hand their dead letters over and
commit, all within one budget, then forget them."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from worker.core import metrics
from worker.core.settings import Settings
from worker.core.startup import clock
from worker.core.topic_partition import TP
from worker.pipeline.batching import Accumulator
from worker.pipeline.control_follower import ControlFollower
from worker.pipeline.dead_letters import DeadLetterPublisher
from worker.pipeline.fetching import Fetching, key, seek_stored
from worker.pipeline.kafka_commits import KafkaCommits
from worker.pipeline.offset_fence import load_offsets
from worker.pipeline.partition_state import Owned, Stats, fields, names
from worker.pipeline.retries import Retries
from worker.pipeline.stalls import LOADING, Stalls
from worker.pipeline.watchdog import Watchdog

logger = logging.getLogger(__name__)


class Ownership:
    """Part of `worker.pipeline.persister.Persister`: its partitions' comings and goings."""

    settings: Settings
    engine: AsyncEngine
    consumer: AIOKafkaConsumer
    owned: dict[TP, Owned]
    accumulator: Accumulator
    stats: Stats
    fetching: Fetching
    controls: ControlFollower
    dead_letters: DeadLetterPublisher
    commits: KafkaCommits
    retries: Retries
    stalls: Stalls
    watchdog: Watchdog
    _inflight: dict[TP, asyncio.Task[None]]
    _revoked_at: float | None

    async def _flush(self, partitions: list[TP], force: bool = False) -> None:
        raise NotImplementedError

    def _failed(self, tp: TP, doing: str, exc: BaseException) -> None:
        raise NotImplementedError

    async def _prepare_assigned(self) -> None:
        """Seek newly assigned partitions to the offsets stored in the database."""
        now = time.monotonic()
        pending = [tp for tp, o in self.owned.items() if not o.ready and o.retry_at <= now]
        if not pending:
            return
        for tp in pending:
            self.stalls.begin(LOADING, key(tp), now)
        try:
            async with asyncio.timeout(self.settings.database_timeout_s):
                async with self.engine.connect() as conn:
                    stored = await load_offsets(conn, self.settings.group_id, pending)
        except (SQLAlchemyError, OSError) as exc:
            for tp in pending:
                self._failed(tp, "loading offsets", exc)
            return
        # One deadline for all the seeks (only a partition with no stored
        # offset asks the broker): a silent one holds the loop up once.
        deadline = asyncio.get_running_loop().time() + self.settings.kafka_timeout_s
        for tp in pending:
            state = self.owned.get(tp)
            if state is None:
                continue
            offset = stored.get(tp)
            ktp = TopicPartition(*tp)
            try:
                async with asyncio.timeout_at(deadline):
                    await seek_stored(self.consumer, ktp, offset, self.settings)
            except (TimeoutError, KafkaError) as exc:
                if isinstance(exc, TimeoutError) or ktp in self.consumer.assignment():
                    self._failed(tp, "seeking to the stored offset", exc)
                else:  # revoked while the offsets were loading
                    logger.info("%s[%d]: seek skipped: %r", *tp, exc)
                    self.stalls.end(LOADING, key(tp), time.monotonic())
                continue
            self.stalls.end(LOADING, key(tp), time.monotonic())
            self.retries.succeeded(tp)
            state.stored, state.ready, state.failures = offset, True, 0
            self.accumulator.reset(tp, offset)
            if offset is not None and self.controls.reloaded(tp):
                self.commits.moved(tp, offset)  # Kafka's committed offset follows
            self.dead_letters.request(tp)
            if offset is None:
                logger.info(
                    "%s[%d]: no stored offset; starting at the %s offset",
                    *tp,
                    self.settings.auto_offset_reset,
                    extra=fields(tp),
                )
            else:
                logger.info(
                    "%s[%d]: resuming at stored offset %d",
                    *tp,
                    offset,
                    extra=fields(tp, offset=offset),
                )

    def on_assigned(self, partitions: list[TP]) -> None:
        clock.joined()  # the first assignment ends the start's group join
        self.stats.rebalances += 1
        metrics.rebalances.inc()
        metrics.readiness.joined = True
        for tp in partitions:
            self.owned[tp] = Owned()
            self.accumulator.reset(tp, None)
            # Nothing is fetched until the stored offset is known.
            self.consumer.pause(TopicPartition(*tp))
        paused_s = time.monotonic() - self._revoked_at if self._revoked_at else 0.0
        self.stats.rebalance_pause_s += paused_s
        if self._revoked_at is not None:
            metrics.rebalance_pause_seconds.observe(paused_s)
        self._revoked_at = None
        logger.info(
            "rebalance %d: assigned %s (consumption paused %.1f s)",
            self.stats.rebalances,
            names(partitions),
            paused_s,
        )

    async def on_revoked(self, partitions: list[TP]) -> None:
        """Flush what the revoked partitions hold, hand their dead letters
        over and commit, all within PERSISTER_REBALANCE_FLUSH_TIMEOUT_S (the
        coordinator drops a member slower than the session timeout), then
        let them go. What cannot be flushed in time is dropped: the next
        owner re-reads it."""
        self._revoked_at = time.monotonic()
        deadline = self._revoked_at + self.settings.revoke_budget_s
        mine = [tp for tp in partitions if tp in self.owned]
        try:
            # Two thirds for the flush; dead letters and the commit share the rest.
            async with asyncio.timeout(self.settings.revoke_budget_s * 2 / 3):
                await self._flush(mine, force=True)
        except TimeoutError:
            logger.warning("revoke: flush did not finish in time; the next owner re-reads")
        left_s = max(0.0, deadline - time.monotonic())
        await asyncio.gather(
            self.commits.now(left_s),
            *(self.dead_letters.release(tp, left_s) for tp in mine),
        )
        for tp in mine:
            if (task := self._inflight.get(tp)) is not None:
                task.cancel()
            del self.owned[tp]
            self.accumulator.forget(tp)
            self.fetching.forget(tp)
            self.retries.succeeded(tp)
            self.watchdog.forget(tp)
            self.commits.forget(tp)
            with contextlib.suppress(KeyError):
                metrics.lag.remove(tp[0], str(tp[1]))
        if mine:
            logger.info("revoked %s", names(mine))
