"""The dead-letter topic, fed from the `dead_letters` table (an outbox).

Order: a dead letter is first committed to the table in the batch's
transaction; only then is it sent to the topic, and marked `published` as
soon as the broker acknowledges it. The partition's owner does the sending,
so there is one sender per dead letter. A crash between sending and marking
(or a send whose outcome is unknown) leaves rows unmarked that may already be
on the topic; the next attempt reads the topic's recent records for that
partition and marks those instead of sending them twice.

Each dead letter goes to partition (source partition mod partition count) of
`<topic>.dlq` (the `dead_letter_topic` setting), whole if it fits the topic,
else reduced (`worker.pipeline.dead_letters.records`). One that fails does not hold
back the others: each is marked on its own, and the failed one is retried.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterator
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import (
    KafkaError,
    MessageSizeTooLargeError,
    OutOfOrderSequenceNumber,
    RecordListTooLargeError,
)
from sqlalchemy import Row, func, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from schemas.tables import dead_letters
from worker.core.conditions import Conditions
from worker.core.retry import backoff_s
from worker.core.settings import Settings
from worker.core.topic_partition import TP
from worker.pipeline.dead_letters.doubt import Doubts
from worker.pipeline.dead_letters.outcome import (
    RETRY_BASE_S,
    RETRY_CAP_S,
    Inflight,
    Outcome,
    report,
    unfit_reason,
)
from worker.pipeline.dead_letters.producer import new_producer, retire, started
from worker.pipeline.dead_letters.records import dead_letter_topic, fitted, unpublished_pages
from worker.pipeline.dead_letters.topic import Target, already_sent, prepare

logger = logging.getLogger(__name__)

SEND_TIMEOUT_S = 10.0
# A send unanswered this long means its producer is stuck (an idempotent
# producer retries without end): it is replaced, and what it held is looked
# for on the topic before being sent again.
STUCK_S = 3 * SEND_TIMEOUT_S
# Whatever an attempt waits on (metadata, the topic scan, a new producer),
# it ends by then, is reported, and is retried.
ATTEMPT_TIMEOUT_S = 60.0
# The broker refused the record for its size: next time it goes reduced.
TOO_LARGE = (MessageSizeTooLargeError, RecordListTooLargeError)
# After these the record is certainly not on the topic. They also leave a
# gap in the idempotent producer's sequence for that topic partition, which
# fails every later send there until a new producer starts a new sequence.
REFUSED = (*TOO_LARGE, OutOfOrderSequenceNumber)


def _retrieved(future: asyncio.Future[Any]) -> None:
    """Retrieve a send's error, so that one no attempt awaits is not logged
    as never retrieved (e.g. when the partition was revoked meanwhile)."""
    if not future.cancelled():
        future.exception()


class DeadLetterPublisher:
    """Sends dead letters in the background, one sender task per source
    partition, so neither fetching nor writing ever waits on the topic."""

    def __init__(self, settings: Settings, engine: AsyncEngine) -> None:
        self.settings = settings
        self.engine = engine
        self.published = 0
        self.reduced = 0
        # Attempts that left some dead letter unsent, to be retried.
        self.failed_attempts = 0
        # An unexpected error in a sender, for the main loop to raise.
        self.crashed: BaseException | None = None
        self.conditions = Conditions("dead_letter_topic")
        self._producer: AIOKafkaProducer | None = None
        self._targets: dict[str, Target] = {}
        self._senders: dict[TP, asyncio.Task[None]] = {}
        self._wanted: set[TP] = set()
        # Partitions whose leftovers from a previous owner were checked.
        self._checked: set[TP] = set()
        # Partitions being revoked: their sender hands nothing more to the producer.
        self._letting_go: set[TP] = set()
        # What this worker sent of each partition, and what is in doubt.
        self.doubts = Doubts()
        # Dead letters the broker refused whole: they go reduced next time.
        self._reduce: set[int] = set()
        # Sends whose answer no attempt has handled yet, by dead letter id.
        self._inflight: dict[int, Inflight] = {}
        # How many producers were replaced: an attempt during which one was
        # cannot be sure what reached the topic.
        self._renewals = 0

    def request(self, tp: TP) -> None:
        """Send `tp`'s unsent dead letters soon (also what a previous owner
        left, the first time)."""
        if self._producer is None:
            return
        self.doubts.began(tp)
        self._wanted.add(tp)
        sender = self._senders.get(tp)
        # A sender that has just finished is still listed until its done
        # callback runs; it would never see this request.
        if sender is None or sender.done():
            task = asyncio.create_task(self._send_while_wanted(tp))
            self._senders[tp] = task
            task.add_done_callback(functools.partial(self._sender_done, tp))

    def recheck(self, tp: TP) -> None:
        """The partition's stored offset was not what this worker wrote (a
        fence): the database may have lost dead letters already sent, which
        the worker is about to write again unmarked. Those are looked for on
        the topic before being sent (see `worker.pipeline.dead_letters.doubt`)."""
        self.doubts.recheck(tp)

    async def finish(self, timeout_s: float) -> None:
        """Stopping: give the senders at work up to `timeout_s` to send what
        they were asked to (what they do not is sent by the next owner)."""
        if running := [task for task in self._senders.values() if not task.done()]:
            await asyncio.wait(running, timeout=timeout_s)

    async def release(self, tp: TP, timeout_s: float) -> None:
        """The partition is being revoked: let its sender finish (so the next
        owner does not send the same records), or stop it at the deadline;
        then wait until what it handed to the producer is answered."""
        self._wanted.discard(tp)
        self._letting_go.add(tp)
        try:
            task = self._senders.get(tp)
            if task is not None:
                with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                    await asyncio.wait_for(asyncio.shield(task), timeout_s)
                # Gone before returning: a sender still cancelling would take the
                # place of the one an immediate re-assignment starts.
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
            await self._settle(tp)
        finally:
            self._letting_go.discard(tp)
            # Not before the sender is gone (it marks the partition checked as
            # it ends): the next owners may send without marking, so a
            # partition taken again is looked for on the topic first.
            self._checked.discard(tp)
            self.doubts.release(tp)
        self._wanted.discard(tp)
        # Its problems are the next owner's to report.
        self.conditions.clear_where(f"{tp[0]}[{tp[1]}] ")

    async def _settle(self, tp: TP) -> None:
        """A send handed to the producer reaches the topic even after its
        sender is cancelled. The next owner looks on the topic once, on
        taking the partition: a record landing after that look would be
        sent twice. So the partition is let go only once its sends are
        answered, or their producer replaced (which drops what it holds)."""
        mine = {row_id: s for row_id, s in self._inflight.items() if s.tp == tp}
        for row_id in mine:
            del self._inflight[row_id]
        futures = [s.future for s in mine.values()]
        if not futures:
            return
        _, unanswered = await asyncio.wait(futures, timeout=SEND_TIMEOUT_S)
        if unanswered and self._producer is not None:
            logger.warning(
                "%s[%d]: %d dead letters unanswered at revocation; replacing the "
                "dead-letter producer so that none reaches the topic after the next "
                "owner looked there",
                *tp,
                len(unanswered),
            )
            await self._replace(self._producer, Outcome())

    async def _send_while_wanted(self, tp: TP) -> None:
        failures = 0
        while tp in self._wanted:
            self._wanted.discard(tp)
            renewals = self._renewals
            outcome = await self.publish_pending(tp, recovering=tp not in self._checked)
            if outcome.unsure or self._renewals != renewals:
                self._checked.discard(tp)
            else:
                self._checked.add(tp)
            failures = 0 if outcome.done else failures + 1
            if not outcome.done:
                self._wanted.add(tp)
                await asyncio.sleep(backoff_s(failures, RETRY_BASE_S, RETRY_CAP_S))

    def _sender_done(self, tp: TP, task: asyncio.Task[None]) -> None:
        if self._senders.get(tp) is task:
            del self._senders[tp]
        if not task.cancelled() and task.exception() is not None:
            self.crashed = task.exception()

    @property
    def enabled(self) -> bool:
        return bool(self.settings.dead_letter_topic)

    def _new_producer(self) -> AIOKafkaProducer:
        return new_producer(self.settings, SEND_TIMEOUT_S)

    async def start(self) -> None:
        if self.enabled:
            self._producer = self._new_producer()
            await self._producer.start()

    async def stop(self) -> None:
        for task in list(self._senders.values()):
            task.cancel()
        await asyncio.gather(*self._senders.values(), return_exceptions=True)
        if self._producer is not None:
            await self._producer.stop()
        self.conditions.clear_where("")

    async def publish_pending(self, tp: TP, recovering: bool) -> Outcome:
        """Send this partition's unmarked dead letters to the topic, marking
        each once acknowledged. With `recovering`, or for rows in doubt (see
        `recheck`), first mark those already on the topic instead of sending
        them. What failed is reported and retried on the next call: the table
        already holds every dead letter, so nothing waits on the topic."""
        outcome = Outcome()
        topic = dead_letter_topic(self.settings.dead_letter_topic, tp[0])
        producer = self._producer
        if topic is None or producer is None:
            return outcome
        try:
            async with asyncio.timeout(ATTEMPT_TIMEOUT_S):
                await self._attempt(producer, topic, tp, recovering, outcome)
        except TimeoutError:
            outcome.failed(f"an attempt took over {ATTEMPT_TIMEOUT_S:.0f} s", unsure=True)
            outcome.stuck = True
        except (KafkaError, SQLAlchemyError, OSError) as exc:
            outcome.failed(repr(exc), unsure=True)
            # E.g. raised by send() once the producer's sender died of it.
            outcome.refused = outcome.refused or isinstance(exc, REFUSED)
        if outcome.refused or outcome.stuck:
            await self._replace(producer, outcome)
        if not outcome.done:
            self.failed_attempts += 1
            # The topic may have changed (created, resized, reconfigured).
            self._targets.pop(topic, None)
        self.published += outcome.sent
        self.reduced += outcome.reduced
        report(self.conditions, tp, topic, outcome)
        return outcome

    async def _attempt(
        self,
        producer: AIOKafkaProducer,
        topic: str,
        tp: TP,
        recovering: bool,
        outcome: Outcome,
    ) -> None:
        # A page at a time, through the index of unpublished rows: a long
        # outage of the topic never loads the whole outbox, values included.
        async for rows in self._pages(tp):
            if tp in self._letting_go:  # the next owner sends the rest
                return
            await self._attempt_page(producer, topic, tp, recovering, outcome, rows)
            if outcome.error is not None:  # the rest waits for the next attempt
                return

    async def _attempt_page(
        self,
        producer: AIOKafkaProducer,
        topic: str,
        tp: TP,
        recovering: bool,
        outcome: Outcome,
        rows: list[Row[Any]],
    ) -> None:
        target = await self._target(topic)
        partition = tp[1] % target.partitions
        since = self.doubts.look_back(tp, rows)
        if recovering or since is not None:
            back_to = {} if since is None else {"back_to": since}
            found = await already_sent(self.settings, topic, partition, rows, **back_to)
            self.doubts.sent(tp, found)
            await self._mark([row.id for row in rows if row.offset in found])
            rows = [row for row in rows if row.offset not in found]
            if tp in self._letting_go:
                return
        group = self.settings.group_id
        pending = []
        for row in rows:
            if row.id in self._inflight:  # sent before, no answer yet: not again
                pending.append((row, self._inflight[row.id]))
                continue
            record = fitted(row, group, target.limit, reduce=row.id in self._reduce)
            if record is None:
                outcome.unfit = outcome.unfit or unfit_reason(row, group, topic, target.limit)
                continue
            future = await producer.send(
                topic, record.value, key=record.key, partition=partition, headers=record.headers
            )
            sent = Inflight(tp, record, future, asyncio.get_running_loop().time())
            self._inflight[row.id] = sent
            self.doubts.tried(tp, row.offset)
            future.add_done_callback(_retrieved)
            pending.append((row, sent))
        await self._acknowledged(tp, pending, outcome)

    async def _acknowledged(
        self, tp: TP, pending: list[tuple[Row[Any], Inflight]], outcome: Outcome
    ) -> None:
        """Wait for each send in turn, marking what the broker acknowledged
        before waiting for an answer still to come. A send unanswered by the
        deadline is awaited again next time, not repeated, unless it has been
        waiting STUCK_S: then its producer is replaced (see `_renew`)."""
        acked: list[int] = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + SEND_TIMEOUT_S
        for row, sent in pending:
            if acked and not sent.future.done():
                await self._mark(acked)
                acked = []
            try:
                left_s = max(0.0, deadline - loop.time())
                await asyncio.wait_for(asyncio.shield(sent.future), left_s)
            except TimeoutError:
                stuck = loop.time() - sent.sent_at >= STUCK_S
                outcome.stuck = outcome.stuck or stuck
                outcome.failed(f"no answer within {SEND_TIMEOUT_S:.0f} s", unsure=stuck)
                continue
            except KafkaError as exc:
                self._inflight.pop(row.id, None)
                if isinstance(exc, TOO_LARGE):
                    self._reduce.add(row.id)
                outcome.refused = outcome.refused or isinstance(exc, REFUSED)
                outcome.failed(f"{exc!r} at offset {row.offset}", not isinstance(exc, REFUSED))
                continue
            self._inflight.pop(row.id, None)
            self.doubts.sent(tp, [row.offset])
            acked.append(row.id)
            self._reduce.discard(row.id)
            outcome.sent += 1
            if sent.record.reduced:
                outcome.reduced += 1
                logger.info(
                    "%s[%d]: dead letter of offset %d sent reduced (its %d bytes are in "
                    "the persister_dead_letters table)",
                    *tp,
                    row.offset,
                    len(row.value or b""),
                )
        if acked:
            await self._mark(acked)

    async def _replace(self, used: AIOKafkaProducer, outcome: Outcome) -> None:
        try:
            async with asyncio.timeout(ATTEMPT_TIMEOUT_S):
                await self._renew(used)
        except (KafkaError, TimeoutError) as exc:
            outcome.failed(f"no new producer: {exc!r}", unsure=True)

    async def _renew(self, used: AIOKafkaProducer) -> None:
        """Replace a producer whose sequence has a gap (see REFUSED) or which
        is stuck (see STUCK_S). What it still holds may reach the topic or
        not, so every partition looks on the topic before sending again."""
        if self._producer != used:  # (identity) another sender did already
            return
        self._producer = await started(self._new_producer())
        self._renewals += 1
        self._inflight.clear()
        self._checked.clear()
        await retire(used, SEND_TIMEOUT_S)

    def _pages(self, tp: TP) -> AsyncIterator[list[Row[Any]]]:
        return unpublished_pages(self.engine, self.settings.group_id, tp)

    async def _mark(self, ids: list[int]) -> None:
        if not ids:
            return
        async with self.engine.begin() as conn:
            await conn.execute(
                update(dead_letters).where(dead_letters.c.id.in_(ids)).values(published=func.now())
            )

    async def _target(self, topic: str) -> Target:
        if topic not in self._targets:
            assert self._producer is not None
            self._targets[topic] = await prepare(self.settings, self._producer, topic)
        return self._targets[topic]
