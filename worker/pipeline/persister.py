"""Group membership, fetching and flushing: the persister's main loop.

Order for every batch (see `worker.pipeline.storage`): write rows and the fenced offset
in one database transaction, and only after it commits, commit the same offset
to Kafka (best effort; the database copy is the truth and is where a newly
assigned partition resumes from).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Iterable

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from worker.core import metrics
from worker.core.conditions import Conditions
from worker.core.retry import backoff_s
from worker.core.settings import Settings
from worker.core.topic_partition import TP
from worker.pipeline.batching import Accumulator, Record, Triggers
from worker.pipeline.control_follower import ControlFollower
from worker.pipeline.dead_letter_sender import DeadLetterPublisher
from worker.pipeline.fetching import Fetching, new_consumer, seek_stored
from worker.pipeline.missing_topics import MissingTopics
from worker.pipeline.partitions import RETRY_BASE_S, RETRY_CAP_S, Owned, Stats, fields, names
from worker.pipeline.progress import Progress, report_write
from worker.pipeline.storage import FenceError, load_offsets
from worker.pipeline.writer import BatchWriter

logger = logging.getLogger(__name__)

LEAVE_TIMEOUT_S = 5.0
# Joining while the brokers are unreachable: 2 s, 4 s, ... up to 30 s, jittered.
CONNECT_BASE_S = 1.0
KAFKA_COMMIT_EVERY_S = 1.0


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, persister: Persister) -> None:
        self.persister = persister

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        await self.persister.on_revoked([(tp.topic, tp.partition) for tp in revoked])

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        self.persister.on_assigned([(tp.topic, tp.partition) for tp in assigned])


class Persister:
    def __init__(self, settings: Settings, engine: AsyncEngine) -> None:
        self.settings = settings
        self.engine = engine
        self.stats = Stats()
        self.progress = Progress()
        self.writer = BatchWriter(settings, engine)
        self.dead_letters = DeadLetterPublisher(settings, engine)
        self._over_bound = False
        self._revoked_at: float | None = None
        self._inflight: dict[TP, asyncio.Task[None]] = {}
        self._crashed: BaseException | None = None
        # Offsets written to the database but not yet committed to Kafka.
        self._uncommitted: dict[TP, int] = {}
        self._committed_at = 0.0
        self.owned: dict[TP, Owned] = {}
        self.accumulator = Accumulator(
            Triggers(
                settings.batch_size,
                settings.max_batch_bytes,
                settings.flush_every_s,
                settings.flush_when_caught_up,
            )
        )
        self.consumer = self._new_consumer()
        self.connecting = Conditions("kafka")
        self.missing_topics = MissingTopics(settings)
        self.controls = ControlFollower(engine, settings.group_id, self.accumulator)
        self.fetching = Fetching(
            self.accumulator, self.owned, lambda: self.consumer, settings.fetch_retry_s
        )

    def _new_consumer(self) -> AIOKafkaConsumer:
        return new_consumer(self.settings, _Listener(self))

    async def _connect(self, stopping: asyncio.Event) -> bool:
        """Start consuming, waiting out an unreachable broker (aiokafka gives
        up after its request timeout). False if stopped before it succeeded."""
        failures = 0
        while not stopping.is_set():
            try:
                await self.consumer.start()
                await self.dead_letters.start()
                self.connecting.clear("start", "connected to Kafka")
                return True
            except KafkaError as exc:
                failures += 1
                delay_s = backoff_s(failures, CONNECT_BASE_S, RETRY_CAP_S)
                self.connecting.raise_(
                    "start", f"cannot consume yet: {exc!r}; retrying", logging.WARNING
                )
                with contextlib.suppress(KafkaError):
                    await self.consumer.stop()
                    await self.dead_letters.stop()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stopping.wait(), delay_s)
                if not stopping.is_set():
                    self.consumer = self._new_consumer()
        return False

    async def run(self, stopping: asyncio.Event, started: asyncio.Event | None = None) -> None:
        """Consume until `stopping` is set, then flush what is buffered and leave."""
        s = self.settings
        if not await self._connect(stopping):
            return
        if started is not None:
            started.set()
        logger.info("consuming %s as group %r", s.topic_pattern or ",".join(s.topics), s.group_id)
        try:
            while not stopping.is_set():
                for crashed in (self._crashed, self.dead_letters.crashed):
                    if crashed is not None:
                        raise crashed
                await self.controls.follow(self.owned, self._inflight)
                await self.missing_topics.check(self.consumer)
                await self._prepare_assigned()
                await self._poll()
                self._start_due_flushes()
                self._apply_pauses()
                await self._commit_kafka()
        finally:
            try:
                if self._crashed is None:  # else writing again would fail again
                    await self._drain()
                    await self._commit_kafka(force=True)
            finally:
                await self._leave()  # even after a crash: no client left open

    def _start_due_flushes(self) -> None:
        """Start a flush task for each due partition that has none running,
        so fetching goes on while batches are written. A partition's task
        writes its batches one after the other while it stays due."""
        now = time.monotonic()
        for tp in self.accumulator.due(now):
            state = self.owned.get(tp)
            if tp in self._inflight or state is None or not state.ready or state.retry_at > now:
                continue
            task = asyncio.create_task(self._flush_partition(tp, force=False))
            self._inflight[tp] = task
            task.add_done_callback(functools.partial(self._flush_done, tp))

    def _flush_done(self, tp: TP, task: asyncio.Task[None]) -> None:
        if self._inflight.get(tp) is task:
            del self._inflight[tp]
        if not task.cancelled() and task.exception() is not None:
            # Expected failures are handled inside; this is a bug: stop loudly.
            self._crashed = task.exception()

    async def _leave(self) -> None:
        try:
            await asyncio.wait_for(self.consumer.stop(), LEAVE_TIMEOUT_S)
            await asyncio.wait_for(self.dead_letters.stop(), LEAVE_TIMEOUT_S)
        except TimeoutError:
            logger.warning("could not leave group %r cleanly", self.settings.group_id)
        else:
            logger.info("left group %r", self.settings.group_id)

    async def _poll(self) -> None:
        now = time.monotonic()
        # Wake when a partition that can be flushed becomes due, or when one
        # waiting to retry may try again; not before (no busy loop in outages).
        waiting = {tp for tp, o in self.owned.items() if not o.ready or o.retry_at > now}
        due_in = self.accumulator.next_due_in(now, exclude=self._inflight.keys() | waiting)
        retry_in = min(
            (o.retry_at - now for o in self.owned.values() if o.retry_at > now), default=None
        )
        waits = [w for w in (due_in, retry_in) if w is not None]
        wait_s = min([*waits, 1.0]) if waits else self.settings.flush_every_s
        await self.fetching.poll(wait_s)

    def _apply_pauses(self) -> None:
        """The one place deciding which partitions are fetched (see
        `Owned.should_pause`); all buffers together are over the bound from
        `max_buffered_bytes` until they drop below half of it."""
        total = self.accumulator.buffered_bytes
        bound = self.settings.max_buffered_bytes
        if not self._over_bound and total >= bound:
            logger.info("buffers hold %d bytes, the bound; pausing partitions with data", total)
            self._over_bound = True
        elif self._over_bound and total < bound // 2:
            self._over_bound = False
        now = time.monotonic()
        two_batches = 2 * self.accumulator.triggers.batch_size
        assigned = self.consumer.assignment()
        held_back = self.controls.held_back(self.owned)
        paused: list[TopicPartition] = []
        fetching: list[TopicPartition] = []
        for tp, state in self.owned.items():
            held = self.accumulator.buffered(tp)
            stop = state.should_pause(held, two_batches, self._over_bound, now) or tp in held_back
            ktp = TopicPartition(*tp)
            if ktp in assigned:  # it may be mid-rebalance
                (paused if stop else fetching).append(ktp)
        self.consumer.pause(*paused)
        self.consumer.resume(*fetching)
        self.progress.report(self.consumer, self.owned, len(paused), self.stats.events)

    async def _prepare_assigned(self) -> None:
        """Seek newly assigned partitions to the offsets stored in the database."""
        now = time.monotonic()
        pending = [tp for tp, o in self.owned.items() if not o.ready and o.retry_at <= now]
        if not pending:
            return
        try:
            async with self.engine.connect() as conn:
                stored = await load_offsets(conn, self.settings.group_id, pending)
        except (SQLAlchemyError, OSError) as exc:
            for tp in pending:
                self._failed(tp, "loading offsets", exc)
            return
        for tp in pending:
            state = self.owned.get(tp)
            if state is None:
                continue
            offset = stored.get(tp)
            try:
                await seek_stored(self.consumer, TopicPartition(*tp), offset, self.settings)
            except KafkaError as exc:  # revoked while the offsets were loading
                logger.info("%s[%d]: seek skipped: %r", *tp, exc)
                continue
            state.stored, state.ready, state.failures = offset, True, 0
            self.accumulator.reset(tp, offset)
            if offset is not None and self.controls.reloaded(tp):
                self._uncommitted[tp] = offset  # Kafka's committed offset follows
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

    async def _flush(self, partitions: list[TP], force: bool = False) -> None:
        now = time.monotonic()
        ready = [
            tp
            for tp in partitions
            if (o := self.owned.get(tp)) is not None and o.ready and o.retry_at <= now
        ]
        if ready:
            await asyncio.gather(*(self._flush_partition(tp, force) for tp in ready))

    async def _flush_partition(self, tp: TP, force: bool) -> None:
        state = self.owned[tp]
        async with state.lock:
            while self.owned.get(tp) is state and state.ready:
                if not (force or self.accumulator.is_due(tp, time.monotonic())):
                    return
                generation = self.accumulator.generation(tp)
                batch = self.accumulator.peek(tp)
                next_offset = self.accumulator.next_offset(tp, batch)
                if next_offset is None or (not batch and next_offset == state.stored):
                    self.accumulator.consume(tp, 0, next_offset)
                    return
                if not await self._write(tp, state, batch, next_offset):
                    return
                # A rewind meanwhile (an offset reset) replaced the buffer.
                self.accumulator.consume(tp, len(batch), next_offset, generation)
                self._uncommitted[tp] = next_offset

    async def _write(self, tp: TP, state: Owned, batch: list[Record], next_offset: int) -> bool:
        started = time.monotonic()
        try:
            written = await self.writer.write(tp, state.stored, batch, next_offset)
        except FenceError as exc:
            self.stats.fence_failures += 1
            logger.warning("%s; reloading its offset", exc)
            state.ready = False
            self.accumulator.reset(tp, None)
            return False
        except (SQLAlchemyError, OSError) as exc:
            self.stats.write_failures += 1
            metrics.write_failures.inc()
            self._failed(tp, "writing a batch", exc)
            return False
        report_write(tp, state, batch, written, next_offset, time.monotonic() - started)
        state.stored, state.failures, state.retry_at = next_offset, 0, 0.0
        state.failing_since = None
        self.fetching.stored(tp, next_offset)
        if written.dead_letters:
            self.dead_letters.request(tp)
        self.stats.batches += 1
        self.stats.events += written.events
        self.stats.resources += written.resources
        self.stats.dead_letters += written.dead_letters
        self.stats.isolation_attempts += written.isolation_attempts
        return True

    def _failed(self, tp: TP, doing: str, exc: BaseException) -> None:
        state = self.owned.get(tp)
        if state is None:
            return
        state.failures += 1
        if state.failing_since is None:
            state.failing_since = time.monotonic()
        delay_s = backoff_s(state.failures, RETRY_BASE_S, RETRY_CAP_S)
        state.retry_at = time.monotonic() + delay_s
        logger.warning(
            "%s[%d]: %s failed (attempt %d, retry in %.1fs): %s: %s",
            *tp,
            doing,
            state.failures,
            delay_s,
            type(exc).__name__,
            str(exc).splitlines()[0],
            extra=fields(tp, attempt=state.failures, retry_in_s=round(delay_s, 1)),
        )

    async def _commit_kafka(self, force: bool = False) -> None:
        """Commit the offsets written since the last call to Kafka, all in one
        request, at most every KAFKA_COMMIT_EVERY_S. For tooling only (lag,
        group listings): a failure loses nothing, the database holds them."""
        now = time.monotonic()
        if not self._uncommitted or (not force and now - self._committed_at < KAFKA_COMMIT_EVERY_S):
            return
        offsets = {TopicPartition(*tp): o for tp, o in self._uncommitted.items()}
        self._uncommitted.clear()
        self._committed_at = now
        try:
            await self.consumer.commit(offsets)
        except KafkaError as exc:
            logger.info("Kafka offset commit skipped: %r", exc)

    def on_assigned(self, partitions: list[TP]) -> None:
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
        """Flush what the revoked partitions hold, then let them go. What cannot
        be flushed in time is dropped: the next owner re-reads it."""
        self._revoked_at = time.monotonic()
        mine = [tp for tp in partitions if tp in self.owned]
        try:
            await asyncio.wait_for(
                self._flush(mine, force=True), self.settings.rebalance_flush_timeout_s
            )
        except TimeoutError:
            logger.warning("revoke: flush did not finish in time; the next owner re-reads")
        await self._commit_kafka(force=True)
        timeout_s = self.settings.rebalance_flush_timeout_s
        await asyncio.gather(*(self.dead_letters.release(tp, timeout_s) for tp in mine))
        for tp in mine:
            if (task := self._inflight.get(tp)) is not None:
                task.cancel()
            del self.owned[tp]
            self.accumulator.forget(tp)
            self.fetching.forget(tp)
            with contextlib.suppress(KeyError):
                metrics.lag.remove(tp[0], str(tp[1]))
        if mine:
            logger.info("revoked %s", names(mine))

    async def _drain(self) -> None:
        try:
            async with asyncio.timeout(self.settings.shutdown_grace_s):
                await asyncio.gather(*self._inflight.values(), return_exceptions=True)
                await self._flush(self.accumulator.partitions(), force=True)
        except TimeoutError:
            logger.warning("shutdown: flush did not finish in time; the next owner re-reads")
