"""How a batch goes into PostgreSQL: COPY while no event of the partition is
already stored, the INSERT that skips stored events while they come in runs;
the same rows either way."""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import asyncpg  # type: ignore[import-untyped, unused-ignore]
import orjson
import pytest
from sqlalchemy import event, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine

from schemas.tables import event_resources
from schemas.tables import events as events_table
from tests.integration.support import counts, settings_for, unique
from tests.records import msgs
from worker.core.errors import ErrorKind, classify
from worker.core.settings import Limits
from worker.devtools.loadgen import make_event
from worker.devtools.stack import StackInfo
from worker.pipeline.batching import Record
from worker.pipeline.decoding import to_rows
from worker.pipeline.writer import BatchWriter, write_batch


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


async def stored_after(engine: AsyncEngine, batches: list[list[dict[str, Any]]], copy: bool) -> Any:
    """Empty the tables, write `batches` one after the other as one
    partition's, and return the stored (events, resource rows)."""
    async with engine.begin() as conn:
        for table in ("event_resources", "events", "persister_consumer_offsets"):
            await conn.exec_driver_sql(f"DELETE FROM {table}")  # noqa: S608 - fixed names
    stored = None
    for events in batches:
        first = stored or 0
        rows = to_rows(batch(events, first), Limits(), 10**6)
        await write_batch(engine, "g", ("copy", 0), stored, first + len(events), rows, copy=copy)
        stored = first + len(events)
    async with engine.connect() as conn:
        found = await conn.execute(
            select(events_table.c.id, events_table.c.occurred, events_table.c.event)
        )
        r = event_resources.c
        resources = await conn.execute(
            select(r.event_id, r.occurred, r.resource_role, r.resource_id)
        )
        return (
            sorted((i, utc(o), name) for i, o, name in found),
            sorted((i, utc(o), role, rid) for i, o, role, rid in resources),
        )


def utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


@pytest.mark.parametrize("copy", [True, False], ids=["copy", "insert"])
async def test_one_id_at_two_times_in_one_batch_is_stored_as_in_two_batches(
    any_engine: AsyncEngine, copy: bool
) -> None:
    """The key is (id, occurred): an event with the id of an earlier one but
    another `occurred` is a row of its own in the same batch too; one with
    the same id and `occurred` adds nothing, whatever else it says."""
    at = datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC)
    first = make_event(random.Random(9), related=1, occurred=at)
    moved = {**first, "occurred": (at + timedelta(hours=1)).isoformat(), "event": "moved"}
    moved["related"] = [{"prefect.resource.id": "r2", "prefect.resource.role": "tag"}]
    again = {**first, "event": "again", "related": []}
    values = [first, moved, again]
    one = await stored_after(any_engine, [values], copy)
    two = await stored_after(any_engine, [values[:1], values[1:]], copy)
    ident, primary = UUID(first["id"]), first["resource"]["prefect.resource.id"]
    later = at + timedelta(hours=1)
    assert (
        one
        == two
        == (
            sorted([(ident, at, first["event"]), (ident, later, "moved")]),
            sorted(
                [
                    (ident, at, "", primary),
                    (ident, at, "flow", first["related"][0]["prefect.resource.id"]),
                    (ident, later, "", primary),
                    (ident, later, "tag", "r2"),
                ]
            ),
        )
    )
