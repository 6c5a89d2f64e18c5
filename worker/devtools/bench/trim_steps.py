"""`python -m worker.devtools.bench.trim_steps`: trimming the day partition
that straddles the retention cutoff, step after step, as its deleted rows pile
up.

One throwaway PostgreSQL server on the current settings, no Kafka. The
database fills one day partition with `--events` events and two resource rows
each; the cutoff then moves through that day in `--steps` equal steps, and at
each but the last (where the whole day has expired and would be dropped) a
trim deletes what expired. Two ways, each on a freshly filled day,
alternating which goes first over `--runs` runs:

- `current`: the leader's trim (`worker.services.retention.trim`), whose
  batches each start where the previous one ended;
- `from oldest`: the same batches, each from the oldest row of the partition
  (`reference.delete_from_oldest`), as the trimmer ran them before.

Reported per step: the trim's seconds (for `current` including the trim's
partition upkeep: creating ahead, dropping, finding the straddling ones),
the server's CPU seconds, the dead tuples of the day's partitions (read right
after the trim: the statistics lag by up to a second) and the rows left.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from schemas.table_partitions import Range, floor, partition_name
from schemas.tables import event_resources, events
from worker.core.settings import Settings
from worker.devtools.bench import db, server
from worker.devtools.bench.reference import BATCH_ROWS, delete_from_oldest
from worker.devtools.bench.results import write_steps
from worker.devtools.bench.server import ServerCpu
from worker.pipeline.connections import create_engine
from worker.services import retention, table_partitions

log = logging.getLogger(__name__)

CURRENT = "current"
FROM_OLDEST = "from oldest"
DAY = timedelta(days=1)
LOAD_CHUNK = 250_000

FILL_EVENTS = """
INSERT INTO events (id, occurred, event, resource_id, resource, related_resource_ids,
                    related, payload, received)
SELECT gen_random_uuid(),
       CAST(:day AS timestamptz) + make_interval(secs => i * CAST(:step AS float8)),
       'bench.trim', 'r' || (i % 1000), '{}', '[]', '[]', '{"n": 1}', now()
FROM generate_series(CAST(:first AS int), CAST(:last AS int)) AS i
"""
FILL_RESOURCES = """
INSERT INTO event_resources (event_id, resource_role, resource_id, occurred, resource)
SELECT id, '', resource_id, occurred, '{}'::jsonb FROM events
WHERE occurred >= :since AND occurred < :until
UNION ALL
SELECT id, 'flow', 'f' || (abs(hashtext(id::text)) % 500), occurred, '{}'::jsonb FROM events
WHERE occurred >= :since AND occurred < :until
"""
DEAD_SQL = "SELECT coalesce(sum(n_dead_tup), 0) FROM pg_stat_user_tables WHERE relname = ANY($1)"
LEFT_SQL = "SELECT (SELECT count(*) FROM events), (SELECT count(*) FROM event_resources)"


async def fill(engine: AsyncEngine, day: datetime, n: int) -> None:
    """Empty tables, then `n` events spread evenly over `day`, vacuumed."""
    async with engine.begin() as conn:
        await conn.execute(text("TRUNCATE events, event_resources"))
    step_s = DAY.total_seconds() / n
    for first in range(0, n, LOAD_CHUNK):
        last = min(first + LOAD_CHUNK, n) - 1
        since, until = (day + timedelta(seconds=i * step_s) for i in (first, last + 1))
        async with engine.begin() as conn:
            params = {"day": day, "step": step_s, "first": first, "last": last}
            await conn.execute(text(FILL_EVENTS), params)
            await conn.execute(text(FILL_RESOURCES), {"since": since, "until": until})
    async with engine.connect() as conn:
        auto = await conn.execution_options(isolation_level="AUTOCOMMIT")
        await auto.execute(text("VACUUM ANALYZE events, event_resources"))


async def trim_from_oldest(engine: AsyncEngine, cutoff: datetime) -> None:
    """The trim's deletes, each batch from the oldest row of the partition."""
    async with async_sessionmaker(engine)() as session:
        for table in (event_resources, events):
            for target in await table_partitions.straddling(engine, table, cutoff):
                await delete_from_oldest(session, target, target.c.occurred < cutoff)


async def trim_steps(url: str, way: str, day: datetime, args: argparse.Namespace) -> list[Any]:
    """Fill the day, then trim it `--steps` times; one row per step."""
    engine = create_engine(url, pool_size=2)
    # Explicit, so that no PERSISTER_* variable of the shell changes one way only.
    settings = Settings(
        retention=DAY, retention_overrides={}, partition_width=DAY, trim_batch_size=BATCH_ROWS
    )
    names = [partition_name(t.name, Range(day, day + DAY)) for t in (events, event_resources)]
    rows = []
    try:
        await fill(engine, day, args.events)
        async with db.connect(url) as conn:
            cpu = await ServerCpu.of(conn)
            for k in range(1, args.steps):
                now = day + DAY + k * DAY / args.steps
                started, cpu_before = time.monotonic(), cpu.seconds()
                if way == CURRENT:
                    await retention.trim(engine, settings, None, now=now)
                else:
                    await trim_from_oldest(engine, now - DAY)
                seconds, cpu_s = time.monotonic() - started, cpu.seconds() - cpu_before
                dead = int(await conn.fetchval(DEAD_SQL, names))
                left = await conn.fetchrow(LEFT_SQL)
                row = {"way": way, "step": k, "trim_s": round(seconds, 3)}
                row |= {"server_cpu_s": round(cpu_s, 3), "dead_tuples": dead}
                rows.append(row | {"events_left": left[0], "resources_left": left[1]})
                log.info("%s", rows[-1])
    finally:
        await engine.dispose()
    return rows


async def run(url: str, args: argparse.Namespace) -> list[Any]:
    """Both ways, `--runs` times each, alternating which goes first."""
    day = floor(datetime.now(UTC), DAY) - 3 * DAY
    engine = create_engine(url, pool_size=1)
    try:
        await table_partitions.ensure_for(engine, Settings(), datetime.now(UTC))
    finally:
        await engine.dispose()
    rows: list[Any] = []
    for n in range(args.runs):
        for way in [CURRENT, FROM_OLDEST][:: 1 if n % 2 == 0 else -1]:
            rows += [r | {"run": n + 1} for r in await trim_steps(url, way, day, args)]
    return rows


def summary(rows: list[Any]) -> list[str]:
    """One line per way and run: the first, middle and last trims, and all."""
    lines = ["| way | run | first trim s | middle s | last s | all trims s | server CPU s |"]
    lines.append("|---|---:|---:|---:|---:|---:|---:|")
    for way, run_no in sorted({(r["way"], r["run"]) for r in rows}):
        steps = [r for r in rows if (r["way"], r["run"]) == (way, run_no)]
        seconds = [r["trim_s"] for r in steps]
        cpu = sum(r["server_cpu_s"] for r in steps)
        middle = seconds[len(seconds) // 2]
        lines.append(
            f"| {way} | {run_no} | {seconds[0]:.2f} | {middle:.2f} | {seconds[-1]:.2f}"
            f" | {sum(seconds):.1f} | {cpu:.1f} |"
        )
    return lines


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m worker.devtools.bench.trim_steps", description=__doc__
    )
    parser.add_argument("--events", type=int, default=2_500_000, help="events in the day")
    parser.add_argument(
        "--steps", type=int, default=25, help="steps the cutoff takes through the day"
    )
    parser.add_argument("--runs", type=int, default=2, help="runs of each way")
    parser.add_argument("--out", type=Path, default=Path("bench-results"), help="output dir")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    with server.fresh("persister-bench-trim-") as (url, _):
        rows = asyncio.run(run(url, args))
    path = write_steps(args, "trim_steps.json", rows)
    print("\n".join(summary(rows)))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
