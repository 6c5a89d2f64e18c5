"""When the database goes back in time (a failover to a standby that had not
received the last commits), dead letters this worker already sent come back
unmarked: written again after a fence, or only their mark lost. The sender
looks for them on the topic, as far back as it began sending the partition's
dead letters, and marks them there instead of sending them a second time;
what it never sent is sent without a look."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any, cast

import pytest

from tests.unit.pipeline.dead_letters.memory_outbox import MemoryOutbox
from worker.pipeline.dead_letters import sender
from worker.pipeline.dead_letters.doubt import LOOK_MARGIN, SENT_KEPT, Doubts

TP = ("events", 1)


class Producer:
    """Acknowledges every send at once; the topic is the list of offsets sent."""

    def __init__(self) -> None:
        self.topic: list[int] = []

    async def send(self, topic: str, value: bytes, **_: Any) -> asyncio.Future[Any]:
        self.topic.append(int(value))
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        future.set_result(None)
        return future


class Table(MemoryOutbox):
    """The dead-letter table in memory: `rows` are the unmarked ones."""

    def __init__(self) -> None:
        super().__init__()
        self.producer = Producer()
        self._producer = cast(Any, self.producer)
        self.next_id = 1
        # The `back_to` of each look on the topic.
        self.looks: list[datetime | None] = []

    def write(self, *offsets: int) -> None:
        """Dead letters at `offsets`, as a batch's transaction writes them."""
        for offset in offsets:
            now = datetime.now(UTC)
            self.rows.append(SimpleNamespace(id=self.next_id, offset=offset, recorded=now))
            self.next_id += 1

    async def settle(self) -> None:
        self.request(TP)
        await asyncio.wait_for(asyncio.gather(*self._senders.values()), 5)


@pytest.fixture
def table(monkeypatch: pytest.MonkeyPatch) -> Iterator[Table]:
    publisher = Table()

    async def already_sent(
        _s: Any, _t: str, _p: int, rows: list[Any], back_to: datetime | None = None
    ) -> set[int]:
        publisher.looks.append(back_to)
        return {row.offset for row in rows if row.offset in publisher.producer.topic}

    def fitted(row: Any, *_: Any, **__: Any) -> Any:
        return SimpleNamespace(value=str(row.offset).encode(), key=None, headers=[], reduced=False)

    monkeypatch.setattr(sender, "already_sent", already_sent)
    monkeypatch.setattr(sender, "fitted", fitted)
    yield publisher


async def test_dead_letters_written_again_after_a_fence_are_not_sent_again(table: Table) -> None:
    table.write(70, 75)
    await table.settle()  # taking the partition: one look (nothing there yet)
    assert table.producer.topic == [70, 75]
    since = table.doubts.look_back(TP, [SimpleNamespace(offset=70)])

    # The failover loses both rows; the fence, then the lost tail written again.
    table.rows = []
    table.recheck(TP)
    table.write(70, 75, 90)
    await table.settle()

    assert table.producer.topic == [70, 75, 90], "each dead letter once on the topic"
    assert table.rows == []
    assert table.looks == [None, since]
    assert since is not None and since <= datetime.now(UTC)


async def test_a_lost_mark_without_a_fence_is_found_on_the_topic(table: Table) -> None:
    table.write(70)
    await table.settle()
    table.write(70)  # its mark lost: unmarked again, under a new id
    await table.settle()
    assert table.producer.topic == [70]
    assert table.rows == []
    assert len(table.looks) == 2


async def test_dead_letters_this_worker_never_sent_are_sent_without_a_look(table: Table) -> None:
    table.write(70)
    await table.settle()
    table.recheck(TP)  # a fence, but only offsets up to 70 were sent
    table.write(80, 95)
    await table.settle()
    assert table.producer.topic == [70, 80, 95]
    assert table.looks == [None], "one look, on taking the partition"


async def test_a_partition_taken_again_starts_with_nothing_in_doubt(table: Table) -> None:
    table.write(70)
    await table.settle()
    table.recheck(TP)
    await table.release(TP, 1.0)
    assert table.doubts.look_back(TP, [SimpleNamespace(offset=70)]) is None


def test_what_was_sent_is_remembered_within_bounds() -> None:
    doubts = Doubts()
    doubts.began(TP)
    doubts.sent(TP, range(SENT_KEPT + 1))
    assert doubts.look_back(TP, [SimpleNamespace(offset=SENT_KEPT)]) is not None
    assert doubts.look_back(TP, [SimpleNamespace(offset=0)]) is None
    doubts.release(TP)
    doubts.sent(TP, [5])  # not owned: nothing kept
    assert doubts.look_back(TP, [SimpleNamespace(offset=5)]) is None


def test_a_fence_puts_in_doubt_every_offset_tried_and_no_later_one() -> None:
    doubts = Doubts()
    before = datetime.now(UTC)
    doubts.began(TP)
    doubts.tried(TP, 40)  # handed to the producer, no answer yet
    assert doubts.look_back(TP, [SimpleNamespace(offset=12)]) is None
    doubts.recheck(TP)
    back_to = doubts.look_back(TP, [SimpleNamespace(offset=12), SimpleNamespace(offset=40)])
    assert back_to is not None and before <= back_to <= datetime.now(UTC)
    assert doubts.look_back(TP, [SimpleNamespace(offset=41)]) is None


def test_a_look_for_rows_in_doubt_starts_at_their_first_send() -> None:
    doubts = Doubts()
    doubts.began(TP)
    taken = datetime.now(UTC) - timedelta(days=2)  # owned for two days
    doubts._partitions[TP].since = taken
    doubts.tried(TP, 5)
    first_send = doubts._partitions[TP].tried_at[5]
    doubts.recheck(TP)
    rows = [SimpleNamespace(offset=5), SimpleNamespace(offset=9)]
    assert doubts.look_back(TP, rows) == first_send - LOOK_MARGIN
    # A row in doubt with no send remembered: from when the partition was taken.
    doubts.sent(TP, [3])
    assert doubts.look_back(TP, [SimpleNamespace(offset=3)]) == taken
    assert doubts.look_back(TP, [SimpleNamespace(offset=9)]) is None
