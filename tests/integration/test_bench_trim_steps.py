"""The trim-steps benchmark, small: both ways of trimming delete exactly what
each step's cutoff expired, and nothing else. Its trims drop the partitions
older than its day, so the test puts them back for the tests after it."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy.ext.asyncio import AsyncEngine

from worker.core.settings import Settings
from worker.devtools.bench.trim_steps import CURRENT, FROM_OLDEST, parse_args, run, summary
from worker.devtools.stack import StackInfo
from worker.services.table_partitions import ensure_for

# 4 s apart, so each cutoff falls exactly on an event (kept: not older).
EVENTS = 21_600
STEPS = 5


async def test_each_step_trims_what_its_cutoff_expired(
    stack_info: StackInfo, engine: AsyncEngine
) -> None:
    args = parse_args(["--events", str(EVENTS), "--steps", str(STEPS), "--runs", "1"])
    try:
        rows = await run(stack_info.database_url, args)
    finally:
        await ensure_for(engine, Settings(), datetime.now(UTC))
    left = [EVENTS - k * EVENTS // STEPS for k in range(1, STEPS)]
    for way in (CURRENT, FROM_OLDEST):
        steps = [r for r in rows if r["way"] == way]
        assert [r["events_left"] for r in steps] == left
        assert [r["resources_left"] for r in steps] == [2 * n for n in left]
    assert len(summary(rows)) == 2 + 2
