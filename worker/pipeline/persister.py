"""Group membership, fetching and flushing: the persister's main loop.

Order for every batch (see `worker.pipeline.writer`): write rows and the fenced offset
in one database transaction, and only after it commits, commit the same offset
to Kafka (best effort; the database copy is the truth and is where a newly
assigned partition resumes from).

Every wait on the network has a deadline (PERSISTER_DATABASE_TIMEOUT_S,
PERSISTER_KAFKA_TIMEOUT_S); one that passes it is a failure like any other,
retried with the one backoff policy. A watchdog task reports waits longer
than PERSISTER_STALL_WARN_S (`worker.pipeline.stalls`) even while they hang.
Stopping and revoking each run under one budget (the shutdown grace, the
rebalance flush timeout): what does not fit is abandoned, never committed,
and rewritten by the partition's next owner.
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
from worker.core.errors import OperatorNeeded, needs_operator
from worker.core.retry import backoff_s
from worker.core.settings import Settings
from worker.core.startup import clock
from worker.core.topic_partition import TP
from worker.pipeline.batching import Accumulator, Record, Triggers
from worker.pipeline.control_follower import ControlFollower
from worker.pipeline.dead_letters import DeadLetterPublisher
from worker.pipeline.fetching import Fetching, key, new_consumer
from worker.pipeline.kafka_commits import KafkaCommits
from worker.pipeline.kafka_login import refuse_bad_login, refused_line
from worker.pipeline.missing_topics import MissingTopics
from worker.pipeline.offset_fence import FenceError
from worker.pipeline.ownership import Ownership
from worker.pipeline.partition_state import RETRY_CAP_S, Owned, Stats, names
from worker.pipeline.progress import Progress, report_write
from worker.pipeline.retries import Retries
from worker.pipeline.stalls import LISTING_TOPICS, READING_CONTROLS, WRITING, Stalls
from worker.pipeline.watchdog import Watchdog
from worker.pipeline.writer import BatchWriter

logger = logging.getLogger(__name__)

LEAVE_TIMEOUT_S = 5.0
# Shares of the shutdown grace: the last flush, the Kafka commit, leaving the
# group; the rest closes the database connections.
DRAIN_SHARE = 0.5
COMMIT_SHARE = 0.1
LEAVE_SHARE = 0.15
# Joining while the brokers are unreachable: 2 s, 4 s, ... up to 30 s, jittered.
CONNECT_BASE_S = 1.0


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, persister: Persister) -> None:
        self.persister = persister

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        await self.persister.on_revoked([(tp.topic, tp.partition) for tp in revoked])

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        self.persister.on_assigned([(tp.topic, tp.partition) for tp in assigned])


class FlushAbandoned(Exception):
    """Stopping: the last flush of these partitions did not finish within
    the grace. Nothing of it was committed; their next owner rewrites it."""


class Persister(Ownership):
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
        self.retries = Retries()
        # Set when stopping gave up the last flush of these partitions.
        self.abandoned: list[TP] = []
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
        self.stalls = Stalls(settings.stall_warn_s)
        self.watchdog = Watchdog(self.stalls, lambda: self.consumer, self.owned, settings.group_id)
        self.commits = KafkaCommits(
            lambda: self.consumer,
            self.owned,
            self.stalls,
            settings.group_id,
            settings.kafka_timeout_s,
        )

    def _new_consumer(self) -> AIOKafkaConsumer:
        return new_consumer(self.settings, _Listener(self))

    async def _connect(self, stopping: asyncio.Event) -> bool:
        """Start consuming, waiting out an unreachable broker (aiokafka gives
        up after its request timeout). False if stopped before it succeeded.
        Raises `OperatorNeeded` if Kafka refuses the login or access: no
        retry mends that."""
        failures = 0
        while not stopping.is_set():
            try:
                await refuse_bad_login(self.settings)
                clock.joining(self.settings.group_id)
                await self.consumer.start()
                await self.dead_letters.start()
                self.connecting.clear("start", "connected to Kafka")
                return True
            except (KafkaError, OperatorNeeded) as exc:
                with contextlib.suppress(KafkaError):
                    await self.consumer.stop()
                    await self.dead_letters.stop()
                if isinstance(exc, OperatorNeeded):
                    raise
                if needs_operator(exc):
                    line = refused_line(exc, self.settings.kafka_bootstrap_servers)
                    raise OperatorNeeded(line) from exc
                failures += 1
                delay_s = backoff_s(failures, CONNECT_BASE_S, RETRY_CAP_S)
                self.connecting.raise_(
                    "start", f"cannot consume yet: {exc!r}; retrying", logging.WARNING
                )
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
        watchdog = asyncio.create_task(self.watchdog.run(self._crash), name="stall watchdog")
        consuming = asyncio.create_task(self._consume(stopping), name="consume")
        stopped = asyncio.create_task(stopping.wait())
        try:
            await asyncio.wait((consuming, stopped), return_when=asyncio.FIRST_COMPLETED)
            if consuming.done():
                consuming.result()  # a crash
        finally:
            # The loop may be waiting on the network: stopping does not wait
            # for that (a flush task is not the loop, and is drained below).
            for task in (consuming, stopped):
                task.cancel()
            await asyncio.gather(consuming, stopped, return_exceptions=True)
            try:
                await self._stop()
            finally:
                watchdog.cancel()

    async def _consume(self, stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            for crashed in (self._crashed, self.dead_letters.crashed):
                if crashed is not None:
                    raise crashed
            with self.watchdog.waiting(READING_CONTROLS):
                await self.controls.follow(self.owned, self._inflight)
            with self.watchdog.waiting(LISTING_TOPICS):
                await self.missing_topics.check(self.consumer)
            await self._prepare_assigned()
            await self._poll()
            self.watchdog.polled(time.monotonic())
            self._start_due_flushes()
            self._apply_pauses()
            self.commits.due()

    def _crash(self, exc: BaseException) -> None:
        self._crashed = exc

    async def _stop(self) -> None:
        """Flush what is buffered, commit it to Kafka and leave, all within
        PERSISTER_SHUTDOWN_GRACE_S whatever the network does (the rest of
        the grace closes the database connections)."""
        grace_s = self.settings.shutdown_grace_s
        started = time.monotonic()
        if self._crashed is None:  # else writing again would fail again
            await self._drain(grace_s * DRAIN_SHARE)
            commit_s = min(self.settings.kafka_timeout_s, grace_s * COMMIT_SHARE)
            await asyncio.gather(self.commits.now(commit_s), self.dead_letters.finish(commit_s))
        await self._leave(started + grace_s * (DRAIN_SHARE + COMMIT_SHARE + LEAVE_SHARE))

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

    async def _leave(self, deadline: float) -> None:
        # Dead letters still on their way land before the group is left: the
        # next owner looks on the topic once, on taking a partition.
        problems: list[str] = []
        for stop, share in ((self.dead_letters.stop, 0.5), (self.consumer.stop, 1.0)):
            timeout_s = max(0.1, min(LEAVE_TIMEOUT_S, deadline - time.monotonic()) * share)
            try:
                await asyncio.wait_for(stop(), timeout_s)
            except Exception as exc:  # a deadline, or the network: reported, not raised
                problems.append(repr(exc))
        if problems:
            logger.warning(
                "could not leave group %r cleanly: %s", self.settings.group_id, "; ".join(problems)
            )
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
        self.watchdog.fetched(paused, fetching)
        self.progress.report(self.consumer, self.owned, len(paused), self.stats.events)

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
                self.commits.written(tp, next_offset)

    async def _write(self, tp: TP, state: Owned, batch: list[Record], next_offset: int) -> bool:
        started = time.monotonic()
        self.stalls.begin(WRITING, key(tp), started)
        try:
            written = await self.writer.write(tp, state.stored, batch, next_offset)
        except FenceError as exc:
            self.stalls.end(WRITING, key(tp), time.monotonic())
            self.stats.fence_failures += 1
            logger.warning("%s; reloading its offset", exc)
            self.dead_letters.recheck(tp)  # those it sent may be written again
            state.ready = False
            self.accumulator.reset(tp, None)
            return False
        except (SQLAlchemyError, OSError) as exc:
            self.stats.write_failures += 1
            metrics.write_failures.inc()
            self._failed(tp, "writing a batch", exc)
            return False
        report_write(tp, state, batch, written, next_offset, time.monotonic() - started)
        self.stalls.end(WRITING, key(tp), time.monotonic())
        self.retries.succeeded(tp)
        clock.stored()
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
        if (state := self.owned.get(tp)) is not None:
            self.retries.failed(tp, state, doing, exc)

    async def _drain(self, timeout_s: float) -> None:
        started = time.monotonic()
        try:
            async with asyncio.timeout(timeout_s):
                await asyncio.gather(*self._inflight.values(), return_exceptions=True)
                await self._flush(self.accumulator.partitions(), force=True)
        except TimeoutError:
            pass
        # Written or not, what a failed write left is still buffered.
        self.abandoned = sorted(tp for tp in self.accumulator.partitions() if self._unwritten(tp))
        if self.abandoned:
            logger.warning(
                "shutdown: the last flush of %s abandoned after %.1f s (the database did not "
                "take it in time); nothing of it was committed: the next owner rewrites it",
                names(self.abandoned),
                time.monotonic() - started,
            )

    def _unwritten(self, tp: TP) -> bool:
        state = self.owned.get(tp)
        batch = self.accumulator.peek(tp)
        return bool(batch) or (
            state is not None
            and self.accumulator.next_offset(tp, batch) not in (None, state.stored)
        )
