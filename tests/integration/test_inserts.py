"""How a batch goes into PostgreSQL: COPY while no event of the partition is
already stored, the INSERT that skips stored events while they come in runs;
the same rows either way."""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import asyncpg  # type: ignore[import-untyped, unused-ignore]
import orjson
import pytest
from sqlalchemy import event
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.integration.support import counts, settings_for, unique
from tests.records import msgs
from worker.core.errors import ErrorKind, classify
from worker.devtools.loadgen import make_event
from worker.devtools.stack import StackInfo
from worker.pipeline.batching import Record
from worker.pipeline.writer import BatchWriter


@contextmanager
def inserts_seen(engine: AsyncEngine) -> Iterator[list[str]]:
    """The INSERTs into `events` run through the engine (a COPY is not one)."""
    seen: list[str] = []

    def before(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if "INSERT INTO events" in statement:
            seen.append(statement)

    event.listen(engine.sync_engine, "before_cursor_execute", before)
    try:
        yield seen
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", before)


def batch(events: list[dict[str, Any]], first: int) -> list[Record]:
    return list[Record](msgs([orjson.dumps(e) for e in events], topic="copy", first=first))


def resource_rows(events: list[dict[str, Any]]) -> int:
    return sum(1 + len(e["related"]) for e in events)


async def test_batches_go_in_by_copy_and_stored_events_switch_to_insert(
    stack_info: StackInfo, engine: AsyncEngine
) -> None:
    settings = settings_for(stack_info, unique("copy"))
    writer = BatchWriter(settings, engine)
    tp = ("copy", 0)
    rng = random.Random(5)
    # Distinct related resources, so each event has 1 + related resource rows.
    fresh = [[make_event(rng, related=1) for _ in range(50)] for _ in range(4)]
    inserts_per_batch, flagged = [], []
    stored = None
    for number, (events, first) in enumerate(
        [
            (fresh[0], 0),  # new: COPY
            (fresh[0][:20] + fresh[1], 50),  # 20 stored: COPY refused, INSERT
            (fresh[2], 120),  # new, but after duplicates: INSERT straight away
            (fresh[3], 170),  # the one before had none: COPY again
        ]
    ):
        with inserts_seen(engine) as seen:
            written = await writer.write(tp, stored, batch(events, first))
        inserts_per_batch.append(len(seen))
        flagged.append(written.inserted)
        stored = first + len(events)
        new = events[20:] if number == 1 else events
        assert (written.events, written.resources) == (len(new), resource_rows(new))
    assert inserts_per_batch == [0, 1, 1, 0]
    # What persister_insert_batches_total counts.
    assert flagged == [False, True, True, False]
    every = [e for events in fresh for e in events]
    assert await counts(engine) == (200, resource_rows(every), 0)


async def test_every_batch_goes_in_by_insert_on_sqlite(
    stack_info: StackInfo, any_engine: AsyncEngine
) -> None:
    writer = BatchWriter(settings_for(stack_info, unique("copy")), any_engine)
    rng = random.Random(7)
    events = [make_event(rng, related=0) for _ in range(5)]
    written = await writer.write(("copy", 0), None, batch(events, 0))
    assert written.events == 5
    assert written.inserted is (any_engine.dialect.name == "sqlite")


async def test_a_resource_row_already_stored_sends_the_batch_through_insert(
    stack_info: StackInfo, engine: AsyncEngine
) -> None:
    """COPY is refused as a whole when any row of either table is stored; the
    INSERT then writes the events and skips just that row."""
    settings = settings_for(stack_info, unique("copy"))
    writer = BatchWriter(settings, engine)
    rng = random.Random(6)
    events = [make_event(rng, related=0) for _ in range(10)]
    await writer.write(("copy", 0), None, batch(events[:1], 0))
    async with engine.begin() as conn:
        # The first event's row goes, its resource row stays behind.
        await conn.exec_driver_sql("DELETE FROM events")
    with inserts_seen(engine) as seen:
        written = await writer.write(("copy", 0), 1, batch(events, 1))
    assert len(seen) == 1
    assert (written.events, written.resources) == (10, 9)
    assert await counts(engine) == (10, 10, 0)


async def test_a_connection_broken_mid_copy_is_retried_on_a_new_one(
    stack_info: StackInfo, engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = settings_for(stack_info, unique("copy"))
    writer = BatchWriter(settings, engine)
    events = [make_event(random.Random(8), related=0)]

    async def broken(self: asyncpg.Connection, *_args: Any, **_kwargs: Any) -> None:
        self.terminate()
        raise asyncpg.ConnectionDoesNotExistError("closed in the middle of operation")

    monkeypatch.setattr(asyncpg.Connection, "copy_records_to_table", broken)
    with pytest.raises(OperationalError) as raised:
        await writer.write(("copy", 0), None, batch(events, 0))
    assert classify(raised.value) is ErrorKind.TRANSIENT
    monkeypatch.undo()
    written = await writer.write(("copy", 0), None, batch(events, 0))
    assert (written.events, written.resources) == (1, 1)
    assert await counts(engine) == (1, 1, 0)
