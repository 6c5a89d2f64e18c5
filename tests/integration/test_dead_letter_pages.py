"""The dead-letter outbox is read a bounded page at a time, through the
partial index of the rows not yet published."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import event, func, insert, select, update
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncEngine

from schemas.tables import dead_letters
from worker.pipeline.dead_letters.records import unpublished_pages, unpublished_query

GROUP = "g"


def letters(topic: str, partition: int, offsets: range) -> list[dict[str, Any]]:
    # Ids given, unique per (topic, partition, offset): the table's sequence
    # stays where the other tests expect it.
    first_id = (ord(topic[0]) * 10 + partition) * 100_000
    return [
        {
            "id": first_id + offset,
            "group_id": GROUP,
            "topic": topic,
            "partition": partition,
            "offset": offset,
            "key": None,
            "value": b"x" * 100,
            "error_class": "InvalidJson",
            "error": "<message>: not JSON",
        }
        for offset in offsets
    ]


async def add(engine: AsyncEngine, rows: list[dict[str, Any]], published: bool) -> None:
    async with engine.begin() as conn:
        await conn.execute(
            insert(dead_letters).values(published=func.now() if published else None), rows
        )


@contextmanager
def reads_seen(engine: AsyncEngine) -> Iterator[list[str]]:
    seen: list[str] = []

    def before(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if "FROM persister_dead_letters" in statement and statement.startswith("SELECT"):
            seen.append(statement)

    event.listen(engine.sync_engine, "before_cursor_execute", before)
    try:
        yield seen
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", before)


async def test_every_unpublished_dead_letter_is_read_once_a_page_at_a_time(
    any_engine: AsyncEngine,
) -> None:
    # 250 waiting on partition 0, among 40 published; others elsewhere.
    await add(any_engine, letters("t", 0, range(0, 40)), published=True)
    await add(any_engine, letters("t", 0, range(40, 290)), published=False)
    await add(any_engine, letters("t", 1, range(0, 30)), published=False)
    await add(any_engine, letters("u", 0, range(0, 30)), published=False)
    sizes, offsets = [], []
    c = dead_letters.c
    with reads_seen(any_engine) as reads:
        async for page in unpublished_pages(any_engine, GROUP, ("t", 0), limit=100):
            sizes.append(len(page))
            offsets += [row.offset for row in page]
            # As the sender does: each page is marked once sent.
            async with any_engine.begin() as conn:
                ids = [row.id for row in page]
                await conn.execute(
                    update(dead_letters).where(c.id.in_(ids)).values(published=func.now())
                )
    assert sizes == [100, 100, 50]
    assert offsets == list(range(40, 290))
    assert len(reads) == 3 and all("LIMIT" in r for r in reads)
    async with any_engine.connect() as conn:
        waiting = select(c.topic, c.partition, func.count()).where(c.published.is_(None))
        found = (await conn.execute(waiting.group_by(c.topic, c.partition))).all()
    assert sorted(found) == [("t", 1, 30), ("u", 0, 30)]
    # Nothing left: one read that finds nothing.
    with reads_seen(any_engine) as reads:
        assert [p async for p in unpublished_pages(any_engine, GROUP, ("t", 0))] == []
    assert len(reads) == 1


async def test_the_read_uses_the_partial_index_of_unpublished_rows(engine: AsyncEngine) -> None:
    """A long history of published dead letters and a few waiting: the
    page is read from the partial index, never from the table as a whole."""
    for start in range(0, 20_000, 5_000):
        await add(engine, letters("t", 0, range(start, start + 5_000)), published=True)
    await add(engine, letters("t", 0, range(20_000, 20_300)), published=False)
    query = unpublished_query(GROUP, ("t", 0), 20_100, 100)
    compiled = query.compile(dialect=postgresql.dialect(), compile_kwargs={"literal_binds": True})  # type: ignore[no-untyped-call]
    async with engine.connect() as conn:
        await conn.exec_driver_sql("ANALYZE persister_dead_letters")
        plan = "\n".join((await conn.exec_driver_sql(f"EXPLAIN {compiled}")).scalars())
    assert "ix_persister_dead_letters__unpublished" in plan, plan
    assert "Seq Scan" not in plan, plan
