"""The dead-letter sender of a partition keeps going through the two things
that stopped it before: a partition given back and taken again at once, and
a producer whose sends are never answered."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any, cast

import pytest
from sqlalchemy import Row
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.unit.pipeline.dead_letters.memory_outbox import MemoryOutbox
from worker.core.settings import Settings
from worker.pipeline.dead_letters import sender
from worker.pipeline.dead_letters.outcome import Outcome
from worker.pipeline.dead_letters.sender import DeadLetterPublisher

TP = ("events", 3)
# The fake producers' sender tasks, stopped after each test: one left pending
# is reported ("Task was destroyed but it is pending!") whenever it is
# collected, in whichever test runs then.
_SENDER_TASKS: list[asyncio.Task[Any]] = []


@pytest.fixture(autouse=True)
async def _sender_tasks_stopped() -> AsyncIterator[None]:
    yield
    for task in _SENDER_TASKS:
        task.cancel()
    await asyncio.gather(*_SENDER_TASKS, return_exceptions=True)
    _SENDER_TASKS.clear()


class Blocking(DeadLetterPublisher):
    """Each attempt waits until `go` is set; counts the attempts."""

    def __init__(self) -> None:
        super().__init__(Settings(), cast(AsyncEngine, None))
        self._producer = SimpleNamespace()
        self.attempts = 0
        self.go = asyncio.Event()

    async def publish_pending(self, tp: tuple[str, int], recovering: bool) -> Outcome:
        self.attempts += 1
        await self.go.wait()
        return Outcome()


async def settled(publisher: DeadLetterPublisher) -> None:
    await asyncio.gather(*publisher._senders.values())
    assert not publisher._senders


async def test_a_partition_taken_again_at_once_gets_a_sender_again() -> None:
    publisher = Blocking()
    publisher.request(TP)
    await asyncio.sleep(0)
    assert publisher.attempts == 1
    # The attempt outlives the revoke deadline; the partition comes straight back.
    await publisher.release(TP, timeout_s=0.01)
    publisher.request(TP)
    publisher.go.set()
    await asyncio.wait_for(settled(publisher), 5)
    assert publisher.attempts == 2
    assert publisher.crashed is None


class Quick(DeadLetterPublisher):
    """Each attempt returns at once; counts them."""

    def __init__(self) -> None:
        super().__init__(Settings(), cast(AsyncEngine, None))
        self._producer = SimpleNamespace()
        self.attempts = 0

    async def publish_pending(self, tp: tuple[str, int], recovering: bool) -> Outcome:
        self.attempts += 1
        return Outcome()


async def test_a_request_as_the_sender_finishes_gets_a_sender() -> None:
    publisher = Quick()
    publisher.request(TP)
    await asyncio.sleep(0)
    # The sender is done, but its done callback has not run yet.
    assert publisher._senders[TP].done()
    publisher.request(TP)
    await asyncio.wait_for(settled(publisher), 5)
    await asyncio.sleep(0)
    assert publisher.attempts == 2


class FakeProducer:
    """Answers every send at once (`answers`), or never, and then never stops."""

    def __init__(self, answers: bool) -> None:
        self.answers = answers
        self.sent: list[bytes | None] = []
        self.sent_one = asyncio.Event()
        self.client = SimpleNamespace(close=self._close)
        self.closed = False
        sender_task = asyncio.create_task(asyncio.Event().wait())
        _SENDER_TASKS.append(sender_task)
        self._sender = SimpleNamespace(sender_task=sender_task)

    async def start(self) -> None:
        pass

    async def send(self, topic: str, value: bytes | None, **_: Any) -> asyncio.Future[Any]:
        self.sent.append(value)
        self.sent_one.set()
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if self.answers:
            future.set_result(None)
        return future

    async def stop(self) -> None:
        if not self.answers:
            await asyncio.Event().wait()

    async def _close(self) -> None:
        self.closed = True


class Outbox(MemoryOutbox):
    """One unsent dead letter of TP, marked in memory."""

    def __init__(self, producers: list[FakeProducer]) -> None:
        super().__init__()
        self.fresh = iter(producers[1:])
        self._producer = cast(Any, producers[0])
        self.rows = [SimpleNamespace(id=7, offset=70, value=b"{bad", key=None)]
        self.scans = 0

    def _new_producer(self) -> Any:
        return next(self.fresh)


async def test_a_stuck_producer_is_replaced_and_the_topic_looked_at_before_resending(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name, value_s in (("SEND_TIMEOUT_S", 0.05), ("STUCK_S", 0.1), ("RETRY_CAP_S", 0.01)):
        monkeypatch.setattr(sender, name, value_s)
    stuck, fresh = FakeProducer(answers=False), FakeProducer(answers=True)
    publisher = Outbox([stuck, fresh])
    scans: list[int] = []

    async def already_sent(_s: Settings, _t: str, partition: int, rows: list[Any]) -> set[int]:
        scans.append(len(rows))
        return set()

    monkeypatch.setattr(sender, "already_sent", already_sent)
    monkeypatch.setattr(sender, "fitted", lambda row, *_a, **_k: _record(row))
    publisher.request(TP)
    await asyncio.wait_for(settled(publisher), 5)

    assert publisher.rows == []
    assert len(stuck.sent) == 1 and stuck.closed, "the stuck producer was sent to once, then closed"
    assert stuck._sender.sender_task.cancelled()
    assert len(fresh.sent) == 1
    # Once on taking the partition, once more after the replacement.
    assert scans == [1, 1]
    assert publisher.published == 1
    assert publisher.failed_attempts == 2  # unanswered once, stuck once
    assert "events[3] send" not in publisher.conditions


def _record(row: Any) -> Any:
    return SimpleNamespace(value=row.value, key=b"k", headers=[], reduced=False, size=10)


class Hanging(Outbox):
    """The first attempt's database read never returns."""

    def __init__(self, producers: list[FakeProducer]) -> None:
        super().__init__(producers)
        self.reads = 0

    async def _pages(self, tp: tuple[str, int]) -> AsyncIterator[list[Row[Any]]]:
        self.reads += 1
        if self.reads == 1:
            await asyncio.Event().wait()
        async for page in super()._pages(tp):
            yield page


async def test_an_attempt_that_hangs_ends_at_its_deadline_reported_and_retried(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    timeouts_s = (("ATTEMPT_TIMEOUT_S", 0.1), ("SEND_TIMEOUT_S", 0.05), ("RETRY_CAP_S", 0.01))
    for name, value_s in timeouts_s:
        monkeypatch.setattr(sender, name, value_s)
    first, fresh = FakeProducer(answers=True), FakeProducer(answers=True)
    publisher = Hanging([first, fresh])
    monkeypatch.setattr(sender, "already_sent", _nothing_sent)
    monkeypatch.setattr(sender, "fitted", lambda row, *_a, **_k: _record(row))
    caplog.set_level(logging.INFO, logger="worker.core.conditions")
    publisher.request(TP)
    await asyncio.wait_for(settled(publisher), 5)

    assert publisher.rows == []
    assert (len(first.sent), len(fresh.sent)) == (0, 1), "sent once, by a new producer"
    lines = [r.getMessage() for r in caplog.records if r.name == "worker.core.conditions"]
    assert lines == [
        "events[3]: dead letters not sent to events.dlq: an attempt took over 0 s; "
        "retrying with a jittered backoff of up to 5 s "
        "(they are in the persister_dead_letters table)",
        "events[3]: dead letters reach events.dlq again",
    ]


async def _nothing_sent(*_: Any) -> set[int]:
    return set()


class LateProducer(FakeProducer):
    """Answers each send `after_s` later."""

    def __init__(self, after_s: float) -> None:
        super().__init__(answers=False)
        self.after_s = after_s
        self.futures: list[asyncio.Future[Any]] = []

    async def send(self, topic: str, value: bytes | None, **_: Any) -> asyncio.Future[Any]:
        future = await super().send(topic, value)
        asyncio.get_running_loop().call_later(self.after_s, future.set_result, None)
        self.futures.append(future)
        return future


async def test_a_revoked_partition_is_let_go_only_once_its_sends_are_answered(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The next owner looks on the topic once: a send answered after the
    # partition was let go could land after that look, and be sent twice.
    late = LateProducer(after_s=0.3)
    publisher = Outbox([late])
    monkeypatch.setattr(sender, "already_sent", _nothing_sent)
    monkeypatch.setattr(sender, "fitted", lambda row, *_a, **_k: _record(row))
    publisher.request(TP)
    await asyncio.wait_for(late.sent_one.wait(), 5)
    await publisher.release(TP, timeout_s=0.01)  # the sender is cancelled at once

    assert [f.done() for f in late.futures] == [True]
    assert publisher._producer is cast(Any, late), "answered: the producer stays"
    assert publisher.rows != [], "left unmarked, for the next owner to find on the topic"


async def test_a_send_unanswered_at_revocation_has_its_producer_replaced(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(sender, "SEND_TIMEOUT_S", 0.05)
    stuck, fresh = FakeProducer(answers=False), FakeProducer(answers=True)
    publisher = Outbox([stuck, fresh])
    monkeypatch.setattr(sender, "already_sent", _nothing_sent)
    monkeypatch.setattr(sender, "fitted", lambda row, *_a, **_k: _record(row))
    publisher.request(TP)
    await asyncio.wait_for(stuck.sent_one.wait(), 5)
    await publisher.release(TP, timeout_s=0.01)

    assert publisher._producer is cast(Any, fresh)
    assert stuck.closed and stuck._sender.sender_task.cancelled(), "what it held is dropped"
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == [
        "events[3]: 1 dead letters unanswered at revocation; replacing the dead-letter "
        "producer so that none reaches the topic after the next owner looked there"
    ]


class Recording(Blocking):
    """Blocking, and records whether each attempt looked on the topic first."""

    def __init__(self) -> None:
        super().__init__()
        self.recovering: list[bool] = []

    async def publish_pending(self, tp: tuple[str, int], recovering: bool) -> Outcome:
        self.recovering.append(recovering)
        return await super().publish_pending(tp, recovering)


async def test_a_partition_taken_again_is_looked_for_on_the_topic_first() -> None:
    # Meanwhile another owner may have sent dead letters and died before
    # marking them: sent again unlooked, they would be on the topic twice.
    publisher = Recording()
    publisher.request(TP)
    await asyncio.sleep(0)
    releasing = asyncio.create_task(publisher.release(TP, timeout_s=5))
    await asyncio.sleep(0)
    publisher.go.set()  # the sender ends well within the revoke deadline
    await releasing
    publisher.request(TP)
    await asyncio.wait_for(settled(publisher), 5)
    assert publisher.recovering == [True, True]
