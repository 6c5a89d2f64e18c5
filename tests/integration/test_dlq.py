"""The dead-letter workflow: list (80 columns, newest first, pages), stats,
resolve and purge, with exact counts."""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime, timedelta

from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncEngine

from schemas.tables import dead_letters
from tests.integration.support import unique
from tests.integration.test_cli import cli
from worker.devtools.stack import StackInfo

ROW = re.compile(r"^\s*(\d+)\s.*\S\[\d+\]@\d+")


async def seed(engine: AsyncEngine, group: str) -> list[int]:
    """45 dead letters of `group`: on topic a, 20 InvalidJson (the first 5
    recorded 10 days ago) and 10 InvalidEnvelope; on topic b, 15 Tombstone.
    Their ids, oldest first."""
    now = datetime.now(UTC)
    kinds = [("a", "InvalidJson")] * 20 + [("a", "InvalidEnvelope")] * 10
    kinds += [("b", "Tombstone")] * 15
    rows = [
        {
            "group_id": group,
            "topic": f"{group}-{topic}",
            "partition": i % 3,
            "offset": i,
            "key": None,
            "value": b"secret value",
            "error_class": error_class,
            "error": f"{error_class} at {i}: " + "x" * 120,
            "recorded": now - timedelta(days=10) if i < 5 else now,
        }
        for i, (topic, error_class) in enumerate(kinds)
    ]
    async with engine.begin() as conn:
        ids = (
            await conn.execute(insert(dead_letters).returning(dead_letters.c.id), rows)
        ).scalars()
        return sorted(ids)


def dlq(env: dict[str, str], *args: str) -> tuple[int, str]:
    return cli("dlq", *args, env=env)


def listed_ids(out: str) -> list[int]:
    return [int(m.group(1)) for line in out.splitlines() if (m := ROW.match(line))]


async def test_list_pages_newest_first_at_80_columns(
    stack_info: StackInfo, engine: AsyncEngine
) -> None:
    group = unique("dlq-list")
    ids = await seed(engine, group)
    env = {"DATABASE_URL": stack_info.database_url, "COLUMNS": "80"}

    pages: list[list[int]] = []
    before: list[str] = []
    for _ in range(3):
        code, out = await asyncio.to_thread(dlq, env, "list", "--group", group, *before)
        assert code == 0, out
        assert all(len(line) <= 80 for line in out.splitlines()), out
        assert "45 unresolved dead letters" in out, out
        assert "secret value" not in out
        pages.append(listed_ids(out))
        # One line per dead letter, each naming where it came from.
        assert len([line for line in out.splitlines() if f"{group}-" in line]) == len(pages[-1])
        more = re.search(r"--before-id (\d+)", out)
        before = ["--before-id", more.group(1)] if more else []
    assert [len(page) for page in pages] == [20, 20, 5]
    assert [i for page in pages for i in page] == ids[::-1]
    assert not before, "the last page points to no further one"

    code, out = await asyncio.to_thread(
        dlq, env, "list", "--group", group, "--limit", "3", "--wide"
    )
    assert code == 0, out
    assert listed_ids(out) == ids[:-4:-1]
    assert "Tombstone at 44: " in out and group in out


async def test_stats_resolve_and_purge_count_exactly(
    stack_info: StackInfo, engine: AsyncEngine
) -> None:
    group = unique("dlq-work")
    ids = await seed(engine, group)
    env = {"DATABASE_URL": stack_info.database_url, "COLUMNS": "80"}

    code, out = await asyncio.to_thread(dlq, env, "stats", "--group", group)
    assert code == 0, out
    assert "45 dead letters" in out, out
    counts = re.findall(r"^\s*(\w+)\s+(\S+)\s+(\d+)\s+(\d+)\s*$", out, re.MULTILINE)
    assert counts == [
        ("InvalidJson", f"{group}-a", "20", "0"),
        ("Tombstone", f"{group}-b", "15", "0"),
        ("InvalidEnvelope", f"{group}-a", "10", "0"),
    ], out

    resolve = ("resolve", "--group", group, "--error-class", "InvalidEnvelope")
    code, out = await asyncio.to_thread(dlq, env, *resolve)
    assert (code, out.strip()) == (0, "resolved 10 dead letters")
    code, out = await asyncio.to_thread(dlq, env, *resolve)
    assert (code, out.strip()) == (0, "resolved 0 dead letters")
    code, out = await asyncio.to_thread(dlq, env, "list", "--group", group)
    assert "35 unresolved dead letters" in out, out
    code, out = await asyncio.to_thread(dlq, env, "list", "--group", group, "--all")
    assert "45 dead letters" in out and "resolved" in out, out
    code, out = await asyncio.to_thread(dlq, env, "stats", "--group", group)
    assert re.search(rf"InvalidEnvelope\s+{group}-a\s+0\s+10\s*$", out, re.MULTILINE), out

    purge = ("purge", "--group", group, "--older-than", "7d")
    code, out = await asyncio.to_thread(dlq, env, *purge)
    assert (code, out.strip()) == (0, "purged 5 dead letters")
    code, out = await asyncio.to_thread(
        dlq, env, "purge", "--id", str(ids[-1]), "--id", str(ids[-2])
    )
    assert (code, out.strip()) == (0, "purged 2 dead letters")
    code, out = await asyncio.to_thread(dlq, env, "list", "--group", group, "--all")
    assert "38 dead letters" in out, out

    code, out = await asyncio.to_thread(dlq, env, "purge", "--group", group)
    assert code == 2 and len(out.strip().splitlines()) == 1, out
    assert "--id, --error-class or --older-than" in out, out
    code, out = await asyncio.to_thread(dlq, env, "resolve", "--older-than", "soon")
    assert code == 2 and "'soon' is not a duration" in out, out
