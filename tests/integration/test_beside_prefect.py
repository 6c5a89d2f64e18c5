"""One PostgreSQL database shared with a real Prefect server, in both orders.

Prefect's server (the pinned Prefect, its defaults: it migrates its database
on start) and the worker (`PERSISTER_EVENT_TABLES=prefect`, real `persister`
processes) share a fresh database. The events are built by Prefect's own
`ReceivedEvent` and sent to Kafka as Prefect serialises them; Prefect's REST
API must return each one field for field, count them as the database does,
and answer its other routes; each side's migrations must still run after the
other's; the worker's trimmer trims the shared tables. What the worker cannot
write, and a database it must not migrate, are refused with one line.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import inspect, text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.integration.support import (
    create_topic,
    end_offsets,
    fresh_database,
    send,
    stored_offsets,
    unique,
    wait_persisted,
    wait_until,
)
from tests.integration.test_prefect_readback import ALL_TIME, BASE, N, prefect_side, specs
from tests.integration.workers import WorkerPool, run_command, worker_env
from worker.devtools.prefect_server import PREFECT_BIN, PrefectServer, database_upgrade, prefect_env
from worker.devtools.stack import StackInfo
from worker.pipeline.connections import create_engine

ROUTES = ("/flows/filter", "/flow_runs/filter", "/deployments/filter", "/work_pools/filter")
WAITING = "database not usable yet"
# Events at BASE + i hours; a cutoff half an hour before the 20th keeps 20.
KEPT_FROM_HOUR = 20


@pytest.fixture
async def shared(stack_info: StackInfo) -> AsyncIterator[tuple[str, AsyncEngine]]:
    async with fresh_database(stack_info.database_url) as url:
        engine = create_engine(url, pool_size=1)
        try:
            yield url, engine
        finally:
            await engine.dispose()


def persister(info: StackInfo, url: str, *args: str, **settings: str) -> tuple[int, str, str]:
    env = {"DATABASE_URL": url, "PERSISTER_EVENT_TABLES": "prefect"}
    env |= {f"PERSISTER_{k.upper()}": v for k, v in settings.items()}
    return run_command(info, *args, env=env, timeout_s=120)


def migrate(info: StackInfo, url: str, event_tables: str = "prefect") -> tuple[int, str, str]:
    return persister(info, url, "migrate", event_tables=event_tables)


async def tables(engine: AsyncEngine) -> set[str]:
    async with engine.connect() as conn:
        return await conn.run_sync(lambda c: set(inspect(c).get_table_names()))


async def scalar(engine: AsyncEngine, sql: str) -> Any:
    async with engine.connect() as conn:
        return (await conn.execute(text(sql))).scalar_one()


def normal(event: dict[str, Any]) -> dict[str, Any]:
    """An event with its timestamps in one form (UTC, ISO)."""
    out = dict(event)
    for key in ("occurred", "received"):
        out[key] = datetime.fromisoformat(out[key]).astimezone(UTC).isoformat()
    return out


def read_all(server: PrefectServer) -> list[dict[str, Any]]:
    """Every event over the whole window through `POST /api/events/filter`,
    page by page, as Prefect's UI reads them."""
    body = {"filter": {"occurred": ALL_TIME, "order": "ASC"}, "limit": 50}
    status, page = server.request("POST", "/events/filter", body)
    assert status == 200, page
    total, found = page["total"], list(page["events"])
    while page["next_page"]:
        status, page = server.request("GET", page["next_page"])
        assert status == 200, page
        found += page["events"]
    assert len(found) == total
    return found


async def check_prefect_reads(
    server: PrefectServer, engine: AsyncEngine, built: dict[str, Any]
) -> None:
    assert server.request("GET", "/health") == (200, True)
    for route in ROUTES:
        status, body = server.request("POST", route, {})
        assert status == 200, (route, body)
    found = await asyncio.to_thread(read_all, server)
    produced = {e["id"]: normal(e) for e in built["events"]}
    assert len(found) == len(produced)
    for event in found:
        served = normal(event)
        assert {k: served.get(k) for k in produced[event["id"]]} == produced[event["id"]]
    status, counts = server.request(
        "POST", "/events/count-by/event", {"filter": {"occurred": ALL_TIME}}
    )
    assert status == 200, counts
    assert sum(c["count"] for c in counts) == await scalar(engine, "SELECT count(*) FROM events")


def workers(info: StackInfo, url: str, topic: str, tmp_path: Path) -> WorkerPool:
    """`persister run` processes of one group, beside Prefect on `url`. The
    events are dated from BASE, weeks back, and every one must stay for
    Prefect's API to read: the trimmer keeps ten years, where its default
    (7 days) would delete them as it starts."""
    kept = f"{int(timedelta(days=3650).total_seconds())}s"
    env = worker_env(info, topic, f"group-{topic}", event_tables="prefect", retention=kept)
    env |= {"DATABASE_URL": url}
    return WorkerPool(env, tmp_path / "workers")


async def produced(info: StackInfo, tmp_path: Path, topic: str) -> tuple[dict[str, Any], Any]:
    built = await prefect_side("build", specs(), tmp_path, info.database_url)
    await create_topic(info, topic, 2)
    await send(info, topic, [w.encode() for w in built["wire"]])
    ends = await end_offsets(info, topic, 2)
    assert sum(ends.values()) == N
    return built, ends


async def test_prefect_first_then_the_worker_then_prefect_again(
    stack_info: StackInfo, shared: tuple[str, AsyncEngine], tmp_path: Path
) -> None:
    url, engine = shared
    home = tmp_path / "prefect-home"
    topic = unique("beside")
    built, ends = await produced(stack_info, tmp_path, topic)
    with PrefectServer(url, home) as server:
        prefect_tables = await tables(engine)
        assert {"events", "event_resources", "flow_run", "alembic_version"} <= prefect_tables

        code, _, err = await asyncio.to_thread(migrate, stack_info, url)
        assert code == 0, err
        own = await tables(engine) - prefect_tables
        assert own == {
            "persister_alembic_version",
            "persister_consumer_offsets",
            "persister_dead_letters",
            "persister_leader_leases",
            "persister_partition_controls",
            "persister_seen_messages",
        }
        async with workers(stack_info, url, topic, tmp_path) as pool:
            await asyncio.to_thread(pool.start)
            await wait_persisted(engine, f"group-{topic}", topic, ends, timeout_s=90)
            # Prefect's events are keyed by id: the same id at another time
            # is not stored again.
            again = json.loads(built["wire"][0])
            again["occurred"] = (
                datetime.fromisoformat(again["occurred"]) + timedelta(minutes=1)
            ).isoformat()
            await send(stack_info, topic, [json.dumps(again).encode()], partition=0)
            ends = await end_offsets(stack_info, topic, 2)
            await wait_persisted(engine, f"group-{topic}", topic, ends, timeout_s=90)
            assert await asyncio.to_thread(pool.stop_all) == [0]
        assert sum(ends.values()) == N + 1
        assert await scalar(engine, "SELECT count(*) FROM events") == N
        assert await scalar(engine, "SELECT count(*) FROM events WHERE recorded IS NULL") == 0
        assert await scalar(engine, "SELECT count(*) FROM persister_dead_letters") == 0
        await check_prefect_reads(server, engine, built)

        upgraded = await asyncio.to_thread(database_upgrade, url, home)
        assert upgraded.returncode == 0, upgraded.stdout + upgraded.stderr
        code, _, err = await asyncio.to_thread(migrate, stack_info, url)
        assert code == 0, err

    with PrefectServer(url, home) as server:
        await check_prefect_reads(server, engine, built)
        await trimmed_and_counted(stack_info, url, server, engine)


async def trimmed_and_counted(
    info: StackInfo, url: str, server: PrefectServer, engine: AsyncEngine
) -> None:
    """`persister trim --once` deletes the expired events from Prefect's
    tables, with their resource rows; Prefect's API then counts the rest."""
    cutoff = BASE + timedelta(hours=KEPT_FROM_HOUR) - timedelta(minutes=30)
    retention_s = int((datetime.now(UTC) - cutoff).total_seconds())
    old = f"FROM event_resources WHERE occurred < '{cutoff.isoformat()}'"
    expired_resources = await scalar(engine, f"SELECT count(*) {old}")
    all_resources = await scalar(engine, "SELECT count(*) FROM event_resources")
    assert expired_resources > 0

    code, out, err = await asyncio.to_thread(
        persister, info, url, "trim", "--once", retention=str(retention_s)
    )

    assert code == 0, err
    expired = N - (N - KEPT_FROM_HOUR)
    assert out.splitlines()[0] == (
        f"deleted {expired} events and {expired_resources} resource rows"
    )
    assert await scalar(engine, "SELECT count(*) FROM events") == N - expired
    left = await scalar(engine, "SELECT count(*) FROM event_resources")
    assert left == all_resources - expired_resources
    status, counts = server.request(
        "POST", "/events/count-by/event", {"filter": {"occurred": ALL_TIME}}
    )
    assert status == 200, counts
    assert sum(c["count"] for c in counts) == N - expired


async def test_the_worker_first_then_prefect(
    stack_info: StackInfo, shared: tuple[str, AsyncEngine], tmp_path: Path
) -> None:
    """The worker's migrations make only its own tables; it waits, saying so
    once, until Prefect's migrations have made the events tables, then
    writes into them."""
    url, engine = shared
    home = tmp_path / "prefect-home"
    topic = unique("first")
    built, ends = await produced(stack_info, tmp_path, topic)
    code, _, err = await asyncio.to_thread(migrate, stack_info, url)
    assert code == 0, err
    assert all(t.startswith("persister_") for t in await tables(engine))

    async with workers(stack_info, url, topic, tmp_path) as pool:
        await asyncio.to_thread(pool.start)

        async def waiting() -> bool:
            return WAITING in pool.logs(0)

        await wait_until(waiting, 30, "the worker to say it waits for the events tables")
        assert await stored_offsets(engine, f"group-{topic}", topic) == {}

        with PrefectServer(url, home) as server:
            await wait_persisted(engine, f"group-{topic}", topic, ends, timeout_s=90)
            await check_prefect_reads(server, engine, built)
            upgraded = await asyncio.to_thread(database_upgrade, url, home)
            assert upgraded.returncode == 0, upgraded.stdout + upgraded.stderr
            code, _, err = await asyncio.to_thread(migrate, stack_info, url)
            assert code == 0, err
        assert await asyncio.to_thread(pool.stop_all) == [0]
        log = pool.logs(0)
    warnings = [line for line in log.splitlines() if WAITING in line]
    assert len(warnings) == 1, log
    assert 'relation "events" does not exist' in warnings[0]
    assert "prefect server database upgrade" in warnings[0]
    assert log.count("the database answers; joining the consumer group") == 1, log


def one_line(err: str) -> str:
    """The one line that says why: the only line of a command's error output,
    or the last of `run`'s, after nothing but INFO lines."""
    *before, last = err.strip().splitlines()
    assert all(" INFO " in line for line in before), err
    return last


async def test_what_cannot_be_shared_is_refused_with_one_line(
    stack_info: StackInfo, shared: tuple[str, AsyncEngine], tmp_path: Path
) -> None:
    url, engine = shared
    with PrefectServer(url, tmp_path / "prefect-home"):
        pass
    prefect_tables = await tables(engine)

    # The worker's own tables cannot go into a Prefect server's database.
    code, _, err = await asyncio.to_thread(migrate, stack_info, url, "persister")
    assert (code, one_line(err)) == (
        3,
        "refused: the database is a Prefect server's: set PERSISTER_EVENT_TABLES=prefect "
        "to write into Prefect's events tables",
    )
    assert await tables(engine) == prefect_tables

    code, _, err = await asyncio.to_thread(migrate, stack_info, url)
    assert code == 0, err
    topic = unique("refused")
    await create_topic(stack_info, topic, 1)
    await send(stack_info, topic, [b'{"not": "an event"}'])

    def run(url: str, event_tables: str) -> tuple[int, str, str]:
        """`persister run` until it exits by itself."""
        env = worker_env(stack_info, topic, f"group-{topic}", event_tables=event_tables)
        return run_command(stack_info, "run", env=env | {"DATABASE_URL": url}, timeout_s=60)

    # A worker told the tables are its own, on Prefect's.
    code, _, err = await asyncio.to_thread(run, url, "persister")
    assert (code, one_line(err)) == (
        3,
        "refused: events is not the persister's own partitioned table; if it is a Prefect "
        "server's, set PERSISTER_EVENT_TABLES=prefect; nothing was read or written",
    )
    # A column Prefect's events may gain that the worker does not fill.
    async with engine.begin() as conn:
        await conn.execute(text("ALTER TABLE events ADD COLUMN flavour text NOT NULL"))
    code, _, err = await asyncio.to_thread(run, url, "prefect")
    assert (code, one_line(err)) == (
        3,
        "refused: events.flavour needs a value the persister does not write; "
        "nothing was read or written",
    )
    # Told the tables are Prefect's, on the worker's own partitioned ones.
    code, _, err = await asyncio.to_thread(migrate, stack_info, stack_info.database_url)
    assert (code, one_line(err)) == (
        3,
        "refused: events is the persister's own partitioned table, which Prefect's "
        "migrations cannot run on; PERSISTER_EVENT_TABLES=prefect needs a database where "
        "Prefect's migrations make the events tables",
    )
    code, _, err = await asyncio.to_thread(run, stack_info.database_url, "prefect")
    assert (code, one_line(err)) == (
        3,
        "refused: events is the persister's own partitioned table, not Prefect's "
        "(PERSISTER_EVENT_TABLES=prefect); nothing was read or written",
    )
    # Nothing was read: no offset stored, no dead letter.
    assert await stored_offsets(engine, f"group-{topic}", topic) == {}
    assert await scalar(engine, "SELECT count(*) FROM persister_dead_letters") == 0


ENABLED_SERVICES = """
import prefect.server.services.db_vacuum
from prefect.server.services.perpetual_services import get_enabled_perpetual_services
print("\\n".join(c.function.__name__ for c in get_enabled_perpetual_services()))
"""


def test_prefects_event_vacuum_stops_with_its_event_persister(tmp_path: Path) -> None:
    """Prefect's `db_vacuum` deletes old events only while Prefect's event
    persister is enabled: beside the worker, the worker's trimmer is the one."""

    def services(persister: str) -> set[str]:
        env = prefect_env("postgresql+asyncpg://unused@127.0.0.1:9/unused", tmp_path)
        env["PREFECT_SERVER_SERVICES_EVENT_PERSISTER_ENABLED"] = persister
        python = str(PREFECT_BIN.with_name("python"))
        done = subprocess.run(
            [python, "-c", ENABLED_SERVICES], env=env, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stderr
        return set(done.stdout.split())

    assert "schedule_event_vacuum_tasks" in services("true")
    assert "schedule_event_vacuum_tasks" not in services("false")


async def test_prefects_migrations_stop_on_an_events_table_they_did_not_make(
    stack_info: StackInfo, shared: tuple[str, AsyncEngine], tmp_path: Path
) -> None:
    """Why the worker never makes `events` beside Prefect: on a database
    where the worker alone made its tables, Prefect's migrations fail."""
    url, _ = shared
    code, _, err = await asyncio.to_thread(migrate, stack_info, url, "persister")
    assert code == 0, err

    upgraded = await asyncio.to_thread(database_upgrade, url, tmp_path / "prefect-home")

    assert upgraded.returncode != 0
    # Prefect's migration 15768c2ec702 creates event_resources first.
    assert 'relation "event_resources" already exists' in upgraded.stdout + upgraded.stderr
