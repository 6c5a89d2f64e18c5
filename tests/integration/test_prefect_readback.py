"""Prefect's own code writes the events and reads back what the worker stored.

Events are built with Prefect's `ReceivedEvent` and sent to Kafka as Prefect
serialises them; the worker stores them; Prefect's `read_events` and
`count_events`, on a session of Prefect's database interface, read them back
through its filters; and its ORM loads every row of both tables, which must
equal its own `as_database_row()` and `as_database_resource_rows()`. Prefect
runs in its own venv (`make prefect-venv`), in a subprocess of this test.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from uuid import uuid4

from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text
from sqlalchemy.ext.asyncio import AsyncEngine

from schemas.migrate import alembic_config
from schemas.tables import event_resources, events
from tests.integration.support import (
    create_topic,
    end_offsets,
    running,
    send,
    settings_for,
    unique,
    wait_persisted,
)
from worker.devtools.stack import StackInfo
from worker.pipeline.persister import Persister

ROOT = Path(__file__).parents[2]
SIDE = ROOT / "tests" / "prefect_side"
PREFECT_PYTHON = Path(os.environ.get("PREFECT_VENV", ROOT / ".venv-prefect")) / "bin" / "python"
# The Prefect version the venv pins (its other line is the broker's aiokafka).
[PINNED] = re.findall(r"^prefect==(\S+)$", (SIDE / "requirements.txt").read_text(), re.MULTILINE)

N = 40
BASE = datetime(2026, 11, 1, tzinfo=UTC)
NAMES = [
    "prefect.flow-run.Completed",
    "prefect.flow-run.Failed",
    "prefect.task-run.Completed",
    "custom.thing.happened",
]
UTC_PLUS_2 = timezone(timedelta(hours=2))
# Columns the database fills when the row is written.
WRITE_TIME = {"recorded", "created", "updated"}

Spec = dict[str, Any]


def spec(i: int, previous: str | None) -> Spec:
    """Event i: one hour after event i-1, cycling through names, resources and
    related resources so that each filter below selects a known subset."""
    occurred = BASE + timedelta(hours=i)
    kind = "flow-run" if i % 2 == 0 else "task-run"
    resource = {"prefect.resource.id": f"prefect.{kind}.{i % 5}", "prefect.resource.name": f"r{i}"}
    related = [
        {
            "prefect.resource.id": f"prefect.flow.{i % 3}",
            "prefect.resource.role": "flow",
            "prefect.resource.name": f"flow-{i % 3}",
        }
    ]
    if i % 5 == 0:
        related.append(
            {"prefect.resource.id": "prefect.tag.nightly", "prefect.resource.role": "tag"}
        )
    if i == 7:  # the same (role, id) twice: Prefect writes two rows, the worker one
        related += [{"prefect.resource.id": "prefect.tag.dup", "prefect.resource.role": "tag"}] * 2
    if i == 11:
        related = []
    if i == 13:  # a role label on the primary resource: not kept in its row
        resource["prefect.resource.role"] = "odd"
    if i % 6 == 1:  # another zone, the same instant
        occurred = occurred.astimezone(UTC_PLUS_2)
    return {
        "id": str(uuid4()),
        "occurred": occurred.isoformat(),
        "event": NAMES[i % 4],
        "resource": resource,
        "related": related,
        "payload": {"i": i, "nested": {"list": [1, 2.5, None, True], "text": "é ✓ \n"}},
        "follows": previous if i % 4 == 1 else None,
        "received": (occurred + timedelta(seconds=2)).isoformat(),
    }


def specs() -> list[Spec]:
    built: list[Spec] = []
    for i in range(N):
        built.append(spec(i, built[-1]["id"] if built else None))
    return built


def at(hours: int) -> str:
    return (BASE + timedelta(hours=hours)).isoformat()


ALL_TIME = {"since": at(-1), "until": at(N)}


def related_ids(s: Spec) -> set[tuple[str, str]]:
    return {(r["prefect.resource.id"], r["prefect.resource.role"]) for r in s["related"]}


def hour(s: Spec) -> int:
    return int((datetime.fromisoformat(s["occurred"]) - BASE) / timedelta(hours=1))


# name: (Prefect EventFilter, the events it selects, how many that is)
FILTERS: dict[str, tuple[dict[str, Any], Callable[[Spec], bool], int]] = {
    "all": ({"occurred": ALL_TIME}, lambda s: True, 40),
    "time range": (
        {"occurred": {"since": at(10), "until": at(19)}},
        lambda s: 10 <= hour(s) <= 19,
        10,
    ),
    "name": (
        {"occurred": ALL_TIME, "event": {"name": ["prefect.flow-run.Failed"]}},
        lambda s: s["event"] == "prefect.flow-run.Failed",
        10,
    ),
    "name prefix": (
        {"occurred": ALL_TIME, "event": {"prefix": ["prefect.flow-run."]}},
        lambda s: s["event"].startswith("prefect.flow-run."),
        20,
    ),
    "resource id": (
        {"occurred": ALL_TIME, "resource": {"id": ["prefect.flow-run.2"]}},
        lambda s: s["resource"]["prefect.resource.id"] == "prefect.flow-run.2",
        4,
    ),
    "resource id prefix": (
        {"occurred": ALL_TIME, "resource": {"id_prefix": ["prefect.task-run."]}},
        lambda s: s["resource"]["prefect.resource.id"].startswith("prefect.task-run."),
        20,
    ),
    "resource label": (
        {"occurred": ALL_TIME, "resource": {"labels": {"prefect.resource.name": ["r1*"]}}},
        lambda s: s["resource"]["prefect.resource.name"].startswith("r1"),
        11,
    ),
    "related id": (
        {"occurred": ALL_TIME, "related": {"id": ["prefect.flow.0"]}},
        lambda s: ("prefect.flow.0", "flow") in related_ids(s),
        14,
    ),
    "related role": (
        {"occurred": ALL_TIME, "related": {"role": ["tag"]}},
        lambda s: any(role == "tag" for _, role in related_ids(s)),
        9,
    ),
    "related id in role": (
        {"occurred": ALL_TIME, "related": {"resources_in_roles": [["prefect.tag.nightly", "tag"]]}},
        lambda s: ("prefect.tag.nightly", "tag") in related_ids(s),
        8,
    ),
    "related label": (
        {"occurred": ALL_TIME, "related": {"labels": {"prefect.resource.name": ["flow-1"]}}},
        lambda s: ("prefect.flow.1", "flow") in related_ids(s),
        13,
    ),
    "any resource": (
        {"occurred": ALL_TIME, "any_resource": {"id_prefix": ["prefect.tag."]}},
        lambda s: any(id.startswith("prefect.tag.") for id, _ in related_ids(s)),
        9,
    ),
    "combined": (
        {
            "occurred": {"since": at(10), "until": at(19)},
            "event": {"prefix": ["prefect.flow-run."]},
            "related": {"id": ["prefect.flow.0"], "role": ["flow"]},
        },
        lambda s: (
            10 <= hour(s) <= 19
            and s["event"].startswith("prefect.flow-run.")
            and ("prefect.flow.0", "flow") in related_ids(s)
        ),
        1,
    ),
}


async def prefect_side(command: str, given: Any, tmp_path: Path, database_url: str) -> Any:
    """Run tests/prefect_side/prefect_io.py with Prefect's venv."""
    assert PREFECT_PYTHON.exists(), f"{PREFECT_PYTHON} is missing: run `make prefect-venv`"
    source, target = tmp_path / f"{command}-in.json", tmp_path / f"{command}-out.json"
    source.write_text(json.dumps(given))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(
        PREFECT_HOME=str(tmp_path / "prefect-home"),
        PREFECT_API_DATABASE_CONNECTION_URL=database_url,
        PREFECT_API_DATABASE_MIGRATE_ON_START="false",
    )
    done = await asyncio.to_thread(
        subprocess.run,
        [str(PREFECT_PYTHON), str(SIDE / "prefect_io.py"), command, str(source), str(target)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(target.read_text())
    assert result["prefect"] == PINNED
    return result


async def schema(engine: AsyncEngine) -> tuple[set[str], str]:
    async with engine.connect() as conn:
        tables = await conn.run_sync(lambda c: set(inspect(c).get_table_names()))
        version = (
            await conn.execute(text("SELECT version_num FROM persister_alembic_version"))
        ).scalar_one()
    return tables, version


def by_key(row: dict[str, Any]) -> tuple[str, str, str]:
    return row["event_id"], row["resource_role"], row["resource_id"]


def without(keys: set[str], rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in row.items() if k not in keys} for row in rows]


async def test_prefect_reads_what_the_worker_stored(
    stack_info: StackInfo, engine: AsyncEngine, tmp_path: Path
) -> None:
    url = stack_info.database_url
    produced = specs()
    built = await prefect_side("build", produced, tmp_path, url)
    topic = unique("prefect")
    await create_topic(stack_info, topic, 2)
    before = datetime.now(UTC)
    await send(stack_info, topic, [w.encode() for w in built["wire"]])
    ends = await end_offsets(stack_info, topic, 2)
    assert sum(ends.values()) == N
    settings = settings_for(stack_info, topic)
    async with running(Persister(settings, engine)):
        await wait_persisted(engine, settings.group_id, topic, ends)
    after = datetime.now(UTC)
    tables = await schema(engine)

    read = await prefect_side("read", {name: f[0] for name, f in FILTERS.items()}, tmp_path, url)

    # Prefect created no table and migrated nothing.
    assert await schema(engine) == tables
    assert tables[1] == ScriptDirectory.from_config(alembic_config(url)).get_current_head()

    # Events read by Prefect are the events produced, through every filter,
    # newest first (Prefect's default order); the counts are exact.
    sent = {e["id"]: e for e in built["events"]}
    for name, (_, selects, count) in FILTERS.items():
        expected = sorted(
            (sent[s["id"]] for s in produced if selects(s)),
            key=lambda e: e["occurred"],
            reverse=True,
        )
        found = read["filters"][name]
        assert len(expected) == count, name
        assert found["events"] == expected, name
        assert found["counts"] == dict(Counter(e["event"] for e in expected)), name

    # Prefect's ORM loaded every row; its models have exactly the tables'
    # columns, and those the database filled hold the time of the write.
    stored, stored_resources = read["rows"], read["resource_rows"]
    assert (len(stored), len(stored_resources)) == (N, len(built["resource_rows"]) - 1)
    assert {tuple(sorted(row)) for row in stored} == {tuple(sorted(events.c.keys()))}
    assert {tuple(sorted(row)) for row in stored_resources} == {
        tuple(sorted(event_resources.c.keys()))
    }
    for row in stored + stored_resources:
        for column in WRITE_TIME & row.keys():
            assert before <= datetime.fromisoformat(row[column]) <= after
    assert len({r["id"] for r in stored_resources}) == len(stored_resources)

    # The rows are Prefect's own, but for the time they were written...
    assert sorted(without(WRITE_TIME, stored), key=lambda r: r["id"]) == sorted(
        without(WRITE_TIME, built["rows"]), key=lambda r: r["id"]
    )
    # ...and for a (role, id) repeated in an event's related resources, which
    # is one row here and as many as it appears in Prefect's own storage.
    distinct: dict[tuple[str, str, str], dict[str, Any]] = {}
    for row in built["resource_rows"]:
        distinct.setdefault(by_key(row), row)
    assert len(built["resource_rows"]) - len(distinct) == 1
    assert sorted(without(WRITE_TIME | {"id"}, stored_resources), key=by_key) == sorted(
        distinct.values(), key=by_key
    )
