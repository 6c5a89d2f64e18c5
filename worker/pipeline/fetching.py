"""Fetching records into the per-partition buffers, and what a failed fetch
does to each partition (see `worker.pipeline.fetch_errors` for the kinds).

No failed fetch loses a record: a failed call of the client can take records
of other partitions down with it (their positions have moved on), so after
any failure every partition is sought back to the next offset its buffer
accepts, and fetched again from there.

Per kind:

- RETRY: one WARNING while it lasts, and a line when fetching works again.
- STOP (a batch that cannot be read): the partition at fault is paused, one
  ERROR names its topic, partition and offset, `/readyz` shows it, and it is
  fetched again every `fetch_retry_s`: it goes on by itself once the broker
  serves that batch intact (e.g. from a new leader), or once an operator
  moves the stored offset past it (`persister replay`). The others go on.
- OUT_OF_RANGE, one rule: the partition goes on from the log start. If the
  stored offset is past the log end (topic recreated, log truncated) the log
  is read again from its start, and idempotent writes store only what is
  new; if it is below the log start, the records in between were deleted by
  Kafka before they were stored, and the ERROR says how many. `/readyz` shows
  it until the partition has caught up with the log end seen at the reset.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError

from worker.core import metrics
from worker.core.conditions import Conditions
from worker.core.settings import Settings
from worker.core.topic_partition import TP
from worker.pipeline.batching import Accumulator, Record
from worker.pipeline.fetch_errors import FetchErrorKind, describe, kind_of, named_partitions
from worker.pipeline.partition_state import Owned

logger = logging.getLogger(__name__)

# How long fetching each partition alone, to find the one a fetch error came
# from, may take in all.
FIND_BUDGET_S = 1.0
FIND_RECORDS_PER_PARTITION = 1000


def new_consumer(settings: Settings, listener: ConsumerRebalanceListener) -> AIOKafkaConsumer:
    """The group's consumer: manual offsets, read committed, subscribed."""
    consumer = AIOKafkaConsumer(
        **settings.kafka_options(),
        group_id=settings.group_id,
        group_instance_id=settings.group_instance_id,
        client_id=settings.kafka_client_id(),
        enable_auto_commit=False,
        # Never reposition silently: `Fetching` decides what an offset out
        # of range means (the setting is for partitions with no stored
        # offset, which the persister seeks itself).
        auto_offset_reset="none",
        isolation_level="read_committed",
        **group_timing(settings),
        metadata_max_age_ms=int(settings.metadata_max_age_s * 1000),
        max_partition_fetch_bytes=max(1_048_576, settings.max_message_bytes + 1024),
    )
    # Topics by name are subscribed as a pattern matching exactly them: the
    # client's start-up waits for every topic named in a list to exist (and
    # then fails, logging many lines a second meanwhile); with a pattern it
    # starts without them and takes each up once it exists.
    names = "|".join(re.escape(topic) for topic in settings.topics)
    pattern = settings.topic_pattern or f"^(?:{names})$"
    consumer.subscribe(pattern=pattern, listener=listener)
    return consumer


def group_timing(settings: Settings) -> dict[str, int]:
    """The consumer's group timeouts, in milliseconds. A member hears of a
    rebalance at its next heartbeat (or offset commit), and the group
    waits for every member to rejoin, so the heartbeat bounds how long the
    others stand still; it stays within a third of the session timeout, as
    Kafka wants. The coordinator waits for a rejoin up to the session
    timeout (aiokafka's rebalance timeout), which the revoke-time flush
    stays under."""
    session_ms = int(settings.session_timeout_s * 1000)
    return {
        "session_timeout_ms": session_ms,
        "heartbeat_interval_ms": int(min(settings.heartbeat_interval_s * 1000, session_ms / 3)),
        "max_poll_interval_ms": int(settings.max_poll_interval_s * 1000),
        "rebalance_timeout_ms": session_ms,
    }


async def seek_stored(
    consumer: AIOKafkaConsumer, ktp: TopicPartition, offset: int | None, settings: Settings
) -> None:
    """Position an assigned partition at its stored offset, or, with none
    stored, where PERSISTER_AUTO_OFFSET_RESET says."""
    if offset is not None:
        consumer.seek(ktp, offset)
    elif settings.auto_offset_reset == "earliest":
        await consumer.seek_to_beginning(ktp)
    else:
        await consumer.seek_to_end(ktp)


def fetch_position(consumer: AIOKafkaConsumer, ktp: TopicPartition) -> int | None:
    """The consumer's position for an assigned partition, or None while it is
    not known. aiokafka's `position()` waits for an unknown one; this is the
    same state, read without waiting (the main loop must not block)."""
    assignment = consumer._subscription.subscription
    if assignment is None or ktp not in assignment.assignment.tps:
        return None
    state = assignment.assignment.state_value(ktp)
    return int(state.position) if state.has_valid_position else None


def log_end(consumer: AIOKafkaConsumer, ktp: TopicPartition) -> int | None:
    """The end of the partition's log as the last fetch saw it: the last
    stable offset (read committed), or the high watermark. None for a
    partition the consumer no longer has: a topic gone from the cluster
    (deleted, recreated) leaves the assignment before the rebalance that
    revokes it from `owned`, and aiokafka asserts on such a partition."""
    if not consumer._subscription.is_assigned(ktp):
        return None
    end = consumer.last_stable_offset(ktp)
    if end is None or end < 0:
        end = consumer.highwater(ktp)
    return None if end is None or end < 0 else int(end)


def key(tp: TP) -> str:
    return f"{tp[0]}[{tp[1]}]"


class Fetching:
    def __init__(
        self,
        accumulator: Accumulator,
        owned: dict[TP, Owned],
        consumer: Callable[[], AIOKafkaConsumer],
        fetch_retry_s: float,
    ) -> None:
        self.accumulator = accumulator
        self.owned = owned
        self._consumer = consumer
        self.fetch_retry_s = fetch_retry_s
        self.unreadable = Conditions("fetch")
        self.resets = Conditions("offset_reset")
        self.broker = Conditions("kafka", unready=False)
        # Partitions re-read after a reset: the log end to catch up with.
        self._catching_up: dict[TP, int] = {}
        # Where the next search for an unreadable batch starts (see `_find`).
        self._find_from = 0

    async def poll(self, wait_s: float) -> None:
        """Fetch for up to `wait_s` and buffer what came."""
        try:
            fetched = await self._consumer().getmany(timeout_ms=max(1, int(wait_s * 1000)))
        except KafkaError as exc:
            if await self.failed(exc) is FetchErrorKind.RETRY:
                await asyncio.sleep(min(1.0, wait_s))
            return
        self.broker.clear("fetch", "fetching works again")
        self._take(fetched)

    def _take(self, fetched: dict[TopicPartition, list[Record]]) -> None:
        consumer, now = self._consumer(), time.monotonic()
        for tp, state in self.owned.items():
            ktp = TopicPartition(*tp)
            # A partition that left the assignment (see `log_end`) waits
            # for its revoke: nothing is known of its log until then.
            if not state.ready or not consumer._subscription.is_assigned(ktp):
                continue
            records = fetched.get(ktp, [])
            end = log_end(consumer, ktp)
            if self.accumulator.add(tp, records, now, fetch_position(consumer, ktp), end):
                self._readable(tp, state, records[0].offset)

    def _readable(self, tp: TP, state: Owned, offset: int) -> None:
        state.fetch_failures, state.fetch_retry_at = 0, 0.0
        self.unreadable.clear(key(tp), f"{key(tp)}: reading again at offset {offset}")

    async def failed(self, exc: KafkaError) -> FetchErrorKind:
        """Handle a failed fetch; returns its kind."""
        kind = kind_of(exc)
        metrics.fetch_errors.labels(type(exc).__name__).inc()
        self._rewind_all()
        ready = {tp for tp, state in self.owned.items() if state.ready}
        named = named_partitions(exc, ready)
        if kind is FetchErrorKind.RETRY:
            self.broker.raise_(
                "fetch", f"fetching failed: {describe(exc)}; retrying", logging.WARNING
            )
        elif kind is FetchErrorKind.UNPOSITIONED:
            for tp in named:
                self.owned[tp].ready = False  # sought again to the stored offset
        elif kind is FetchErrorKind.OUT_OF_RANGE:
            for tp, offset in named.items():
                await self._out_of_range(tp, offset)
        elif named:
            for tp, offset in named.items():
                self._stop(tp, exc, offset)
        else:
            await self._find(exc)
        return kind

    def _rewind_all(self) -> None:
        consumer = self._consumer()
        assigned = consumer.assignment()
        for tp, state in self.owned.items():
            position = self.accumulator.position(tp)
            ktp = TopicPartition(*tp)
            if state.ready and position is not None and ktp in assigned:
                consumer.seek(ktp, position)

    def _stop(self, tp: TP, exc: BaseException, offset: int | None) -> None:
        """Stop fetching `tp` until its next retry."""
        state = self.owned[tp]
        state.fetch_failures += 1
        state.fetch_retry_at = time.monotonic() + self.fetch_retry_s
        at = offset if offset is not None else self.accumulator.position(tp)
        self.unreadable.raise_(
            key(tp),
            f"{key(tp)}: cannot read the records at offset {at} ({describe(exc)}); the "
            f"partition is stopped and tried again every {self.fetch_retry_s:g} s",
        )

    async def _find(self, exc: KafkaError) -> None:
        """The error names no partition (a batch that cannot be decoded):
        fetch each partition alone, one record per call, so that everything
        before the bad batch is kept and the one at fault fails at its
        offset. Those that failed before go first, then the others in turn
        from where the last search stopped, each for at most
        FIND_RECORDS_PER_PARTITION records (the rest of a long backlog is
        kept for the next search): a busy partition cannot hide the one at
        fault for long."""
        consumer = self._consumer()
        paused = consumer.paused()
        deadline = time.monotonic() + FIND_BUDGET_S
        owned = list(self.owned.items())
        self._find_from = self._find_from % len(owned) if owned else 0
        turn = owned[self._find_from :] + owned[: self._find_from]
        for tp, state in sorted(turn, key=lambda item: -item[1].fetch_failures):
            self._find_from += 1
            ktp = TopicPartition(*tp)
            if not state.ready or ktp in paused or state.fetch_retry_at > time.monotonic():
                continue
            for _ in range(FIND_RECORDS_PER_PARTITION):
                wait_s = deadline - time.monotonic()
                if wait_s <= 0:
                    return
                try:
                    fetched = await consumer.getmany(
                        ktp, timeout_ms=int(wait_s * 1000), max_records=1
                    )
                except KafkaError as alone:
                    if kind_of(alone) is FetchErrorKind.STOP:
                        self._stop(tp, alone, None)
                    break
                if not fetched:
                    break
                self._take(fetched)
        logger.debug("after %s, fetched each partition alone", describe(exc))

    async def _out_of_range(self, tp: TP, offset: int | None) -> None:
        consumer, ktp = self._consumer(), TopicPartition(*tp)
        offset = offset if offset is not None else self.accumulator.position(tp)
        try:
            start = (await consumer.beginning_offsets([ktp]))[ktp]
            end = (await consumer.end_offsets([ktp]))[ktp]
        except KafkaError as exc:
            logger.warning("%s: cannot read the log's bounds yet: %s", key(tp), describe(exc))
            return
        if offset is None or start <= offset <= end:
            return  # in range again (e.g. a leader caught up): fetch from there
        if not consumer._subscription.is_assigned(ktp):
            return  # left the assignment while the bounds were read: its revoke comes
        if offset > end:
            kind = "past_end"
            reason = (
                f"{key(tp)}: stored offset {offset} is past the log end {end} (topic recreated "
                f"or log truncated); reading the log again from its start {start}"
            )
        else:
            kind = "before_start"
            reason = (
                f"{key(tp)}: {start - offset} records ({offset}..{start - 1}) were deleted "
                f"from Kafka before they were stored; going on from the log start {start}"
            )
        metrics.offset_resets.labels(kind).inc()
        self.resets.raise_(key(tp), reason)
        self._catching_up[tp] = end
        self.accumulator.rewind(tp, start, time.monotonic())
        consumer.seek(ktp, start)

    def stored(self, tp: TP, offset: int) -> None:
        """A write stored `offset` for `tp`."""
        end = self._catching_up.get(tp)
        if end is not None and offset >= end:
            del self._catching_up[tp]
            self.resets.clear(key(tp), f"{key(tp)}: caught up after the reset, at offset {offset}")

    def forget(self, tp: TP) -> None:
        """`tp` was revoked: its conditions are the next owner's now."""
        self._catching_up.pop(tp, None)
        for conditions in (self.unreadable, self.resets):
            conditions.clear(key(tp))
