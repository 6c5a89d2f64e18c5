"""`persister run` refuses at start-up, with one line and exit 4, what no
waiting mends: a database role that may not write, a refused database login,
the worker's tables not migrated, a refused Kafka login. What time mends (an
unreachable database, Prefect's tables not made yet) is still waited for.

Real processes against the session's PostgreSQL and Kafka: the roles, the
login rule and the databases each test needs are made by it and removed
after it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import orjson
import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from tests.integration.support import fresh_database, unique, wait_until
from tests.integration.workers import WorkerPool, run_command, worker_env
from worker.devtools.stack import SASL_USER, StackInfo

EXIT_UNAVAILABLE = 4
# A worker that retries never exits at all; one that refuses exits as soon
# as it has looked, counted from its first line (importing takes seconds on
# a loaded machine).
GIVE_UP_AFTER_S = 90.0
EXITS_WITHIN_S = 10.0
WRONG_PASSWORD = "wrong-pass-5093"
RIGHT_PASSWORD = "right-pass-7741"


def settings_of(info: StackInfo, topic: str, **extra: str) -> dict[str, str]:
    """A worker's settings; its session timeout the default (none of these
    workers joins a group)."""
    settings = worker_env(info, topic, f"group-{topic}")
    del settings["PERSISTER_SESSION_TIMEOUT_S"]
    return settings | {f"PERSISTER_{name.upper()}": value for name, value in extra.items()}


def run_worker(info: StackInfo, topic: str, **env: str) -> tuple[int, list[str], float]:
    """`persister run` until it exits: (exit code, stderr lines, seconds from
    its first log line to its exit)."""
    settings = settings_of(info, topic) | env
    code, out, err = run_command(info, "run", env=settings, timeout_s=GIVE_UP_AFTER_S)
    ended = datetime.now(UTC)
    assert out == ""
    lines = err.splitlines()
    first = orjson.loads(lines[0])["time"] if lines[0].startswith("{") else lines[0].split()[0]
    return code, lines, (ended - datetime.fromisoformat(first)).total_seconds()


def problems(lines: list[str]) -> list[str]:
    """Text log lines at WARNING or above."""
    return [line for line in lines if " WARNING " in line or " ERROR " in line]


async def admin(info: StackInfo, *statements: str) -> None:
    engine = create_async_engine(info.database_url, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as conn:
            for statement in statements:
                await conn.execute(text(statement))
    finally:
        await engine.dispose()


@pytest.fixture
async def read_only_url(stack_info: StackInfo) -> AsyncIterator[str]:
    """A role that may read every table of the database and write none."""
    role = unique("reader").replace("-", "_")
    await admin(
        stack_info,
        f"CREATE ROLE {role} LOGIN",
        f"GRANT USAGE ON SCHEMA public TO {role}",
        f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role}",
    )
    try:
        yield make_url(stack_info.database_url).set(username=role).render_as_string(False)
    finally:
        await admin(stack_info, f"DROP OWNED BY {role}", f"DROP ROLE {role}")


@pytest.mark.parametrize("log_format", ["text", "json"])
async def test_a_read_only_role_is_refused_once_with_the_table_and_privilege(
    stack_info: StackInfo, read_only_url: str, log_format: str
) -> None:
    role = make_url(read_only_url).username
    topic = unique("read-only")
    code, lines, took_s = await asyncio.to_thread(
        run_worker, stack_info, topic, DATABASE_URL=read_only_url, PERSISTER_LOG_FORMAT=log_format
    )
    shown = make_url(read_only_url).render_as_string(hide_password=True)
    expected = (
        f'database {shown} refused: role "{role}" lacks INSERT, UPDATE on '  # noqa: S608
        "persister_consumer_offsets; INSERT, UPDATE on persister_dead_letters; INSERT on "
        "events; INSERT on event_resources; INSERT, UPDATE on persister_leader_leases; grant "
        "them, or set DATABASE_URL to a role that has them"
    )
    assert code == EXIT_UNAVAILABLE, lines
    assert took_s < EXITS_WITHIN_S
    if log_format == "json":
        records = [orjson.loads(line) for line in lines]
        naming = [r for r in records if "persister_consumer_offsets" in r["message"]]
        assert [(r["level"], r["message"]) for r in naming] == [("ERROR", expected)]
        assert [r for r in records if r["level"] in ("WARNING", "ERROR")] == naming
    else:
        assert lines[-1] == expected
        assert [line for line in lines if "persister_consumer_offsets" in line] == [expected]
        assert problems(lines) == []
    assert not any("consuming" in line or "permission denied" in line for line in lines)


@pytest.fixture
async def password_role(stack_info: StackInfo) -> AsyncIterator[str]:
    """A role that must log in with a password (the session's server trusts
    every other login): a rule for it alone, first in pg_hba.conf."""
    role = unique("secret").replace("-", "_")
    await admin(stack_info, f"CREATE ROLE {role} LOGIN PASSWORD '{RIGHT_PASSWORD}'")
    engine = create_async_engine(stack_info.database_url)
    async with engine.connect() as conn:
        hba = Path(str((await conn.execute(text("SHOW hba_file"))).scalar_one()))
    await engine.dispose()
    original = await asyncio.to_thread(hba.read_text)
    rule = f"host all {role} 127.0.0.1/32 scram-sha-256\n"
    await asyncio.to_thread(hba.write_text, rule + original)
    try:
        await admin(stack_info, "SELECT pg_reload_conf()")
        url = make_url(stack_info.database_url).set(username=role, password=WRONG_PASSWORD)

        async def refused() -> bool:
            try:
                conn = await asyncpg.connect(
                    user=role,
                    password=WRONG_PASSWORD,
                    host=url.host,
                    port=url.port,
                    database=url.database,
                )
            except asyncpg.InvalidPasswordError:
                return True
            await conn.close()
            return False

        await wait_until(refused, 10, "the server to ask the role for its password")
        yield url.render_as_string(hide_password=False)
    finally:
        await asyncio.to_thread(hba.write_text, original)
        await admin(stack_info, "SELECT pg_reload_conf()", f"DROP ROLE {role}")


async def test_a_wrong_database_password_is_one_line(
    stack_info: StackInfo, password_role: str
) -> None:
    topic = unique("db-password")
    code, lines, took_s = await asyncio.to_thread(
        run_worker, stack_info, topic, DATABASE_URL=password_role
    )
    url = make_url(password_role)
    shown = url.render_as_string(hide_password=True)
    expected = (
        f'database {shown} refused: password authentication failed for user "{url.username}"; '
        "check DATABASE_URL"
    )
    assert code == EXIT_UNAVAILABLE, lines
    assert took_s < EXITS_WITHIN_S
    assert lines[-1] == expected
    assert [line for line in lines if "password authentication" in line] == [expected]
    assert problems(lines) == []
    assert WRONG_PASSWORD not in "\n".join(lines)


async def test_the_workers_tables_missing_is_one_line_with_the_hint(
    stack_info: StackInfo,
) -> None:
    async with fresh_database(stack_info.database_url) as url:
        code, lines, took_s = await asyncio.to_thread(
            run_worker, stack_info, unique("unmigrated"), DATABASE_URL=url
        )
    shown = make_url(url).render_as_string(hide_password=True)
    expected = (
        f"database {shown} has no table persister_consumer_offsets, persister_dead_letters, "
        "persister_partition_controls, events, event_resources, persister_leader_leases; run "
        "`persister migrate`"
    )
    assert code == EXIT_UNAVAILABLE, lines
    assert took_s < EXITS_WITHIN_S
    assert lines[-1] == expected
    assert problems(lines) == []


async def test_beside_prefect_its_own_tables_missing_is_refused_too(
    stack_info: StackInfo,
) -> None:
    async with fresh_database(stack_info.database_url) as url:
        code, lines, took_s = await asyncio.to_thread(
            run_worker,
            stack_info,
            unique("unmigrated"),
            DATABASE_URL=url,
            PERSISTER_EVENT_TABLES="prefect",
        )
    assert code == EXIT_UNAVAILABLE, lines
    assert took_s < EXITS_WITHIN_S
    assert lines[-1].endswith(
        "has no table persister_consumer_offsets, persister_dead_letters, "
        "persister_partition_controls, persister_leader_leases; run `persister migrate`"
    )
    assert problems(lines) == []


async def test_beside_prefect_its_events_tables_are_still_waited_for(
    stack_info: StackInfo, tmp_path: Path
) -> None:
    """Prefect's migrations may make `events` after the worker starts: one
    WARNING, no exit, and a clean stop."""
    async with fresh_database(stack_info.database_url) as url:
        env = {"DATABASE_URL": url, "PERSISTER_EVENT_TABLES": "prefect"}
        code, _, err = await asyncio.to_thread(run_command, stack_info, "migrate", env=env)
        assert code == 0, err
        topic = unique("prefect-first")
        settings = settings_of(stack_info, topic, event_tables="prefect")
        async with WorkerPool(settings | {"DATABASE_URL": url}, tmp_path) as pool:
            await asyncio.to_thread(pool.start)

            async def waiting() -> bool:
                return "database not usable yet" in pool.logs(0)

            await wait_until(waiting, 30, "the worker to say it waits for the events tables")
            assert pool.alive() == [0]
            assert await asyncio.to_thread(pool.stop_all) == [0]
        waits = pool.grep("database not usable yet")
        assert len(waits) == 1, pool.tail()
        assert 'database not usable yet (relation "events" does not exist' in waits[0]


async def test_a_wrong_kafka_password_is_one_line(stack_info: StackInfo) -> None:
    topic = unique("sasl-wrong")
    code, lines, took_s = await asyncio.to_thread(
        run_worker,
        stack_info,
        topic,
        KAFKA_BOOTSTRAP_SERVERS=stack_info.kafka_sasl_bootstrap_servers,
        PERSISTER_KAFKA_SECURITY_PROTOCOL="SASL_PLAINTEXT",
        PERSISTER_KAFKA_SASL_MECHANISM="PLAIN",
        PERSISTER_KAFKA_SASL_USERNAME=SASL_USER,
        PERSISTER_KAFKA_SASL_PASSWORD=WRONG_PASSWORD,
    )
    expected = (
        f"Kafka refused the login at {stack_info.kafka_sasl_bootstrap_servers}: [Error 58] "
        "SaslAuthenticationFailed: Authentication failed: Invalid username or password; check "
        "PERSISTER_KAFKA_SASL_USERNAME, PERSISTER_KAFKA_SASL_PASSWORD and "
        "PERSISTER_KAFKA_SASL_MECHANISM"
    )
    assert code == EXIT_UNAVAILABLE, lines
    assert took_s < EXITS_WITHIN_S
    assert lines[-1] == expected
    assert [line for line in lines if "SaslAuthenticationFailed" in line] == [expected]
    # The client warns of PLAIN over a plaintext listener (the test's) at every start.
    assert [line for line in problems(lines) if "in the clear" not in line] == []
    assert WRONG_PASSWORD not in "\n".join(lines)
