"""The worker's connections store and read `timestamptz` exactly as asyncpg's
own codec does (`worker.pipeline.moment_codec`)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone

import asyncpg  # type: ignore[import-untyped, unused-ignore]
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from worker.devtools.stack import StackInfo

pytestmark = pytest.mark.integration

MOMENTS: list[datetime | date] = [
    datetime(2026, 12, 7, 16, 56, 52, 162_773, tzinfo=UTC),
    datetime(2026, 12, 7, 18, 56, 52, 162_773, tzinfo=timezone(timedelta(hours=2))),
    datetime(1999, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC),
    datetime(1, 1, 1, tzinfo=UTC),
    datetime(2026, 3, 29, 1, 30),  # naive: local time
    date(2026, 3, 29),
    datetime.max,
    datetime.min,
    datetime.max.replace(tzinfo=UTC),
]


async def test_moments_are_stored_and_read_as_asyncpgs_own_codec_does(
    stack_info: StackInfo, engine: AsyncEngine
) -> None:
    direct = await asyncpg.connect(stack_info.direct_database_url.replace("+asyncpg", ""))
    numbered = list(enumerate(MOMENTS))
    try:
        await direct.execute("CREATE TABLE moments (n int, ours timestamptz, theirs timestamptz)")
        # Theirs by asyncpg's codec, by COPY for rows 100 and up; ours the same
        # way through the worker's connections.
        await direct.executemany("INSERT INTO moments (n, theirs) VALUES ($1, $2)", numbered)
        await direct.copy_records_to_table(
            "moments", records=[(n + 100, m) for n, m in numbered], columns=["n", "theirs"]
        )
        async with engine.begin() as conn:
            raw = await conn.get_raw_connection()
            driver = raw.driver_connection
            assert driver is not None
            await driver.copy_records_to_table(
                "moments", records=[(n + 100, m) for n, m in numbered], columns=["n", "ours"]
            )
            await driver.execute(
                "UPDATE moments m SET ours = c.ours FROM moments c "
                "WHERE c.n = m.n AND c.theirs IS NULL"
            )
            await driver.execute("DELETE FROM moments WHERE theirs IS NULL")
            await driver.executemany("UPDATE moments SET ours = $2 WHERE n = $1", numbered)
            ours = await driver.fetch("SELECT n, ours FROM moments ORDER BY n")
        differing = await direct.fetch(
            "SELECT n, ours::text, theirs::text FROM moments WHERE ours IS DISTINCT FROM theirs"
        )
        theirs = await direct.fetch("SELECT n, theirs FROM moments ORDER BY n")
    finally:
        await direct.execute("DROP TABLE IF EXISTS moments")
        await direct.close()

    assert len(ours) == 2 * len(MOMENTS)
    assert [tuple(r) for r in differing] == []
    assert [tuple(r) for r in ours] == [tuple(r) for r in theirs]
    async with engine.connect() as conn:
        assert (await conn.execute(text("SELECT 'infinity'::timestamptz"))).scalar() == (
            datetime.max
        )
