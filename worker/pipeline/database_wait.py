"""Before taking work, the database must be usable: a replica that cannot
write must not hold partitions other replicas could write.

Two kinds of "not usable" are told apart. What time mends (a database
unreachable, restarting, or, beside Prefect, Prefect's `events` tables not
made yet) is waited for: one WARNING, `/readyz` 503, and a look again with a
backoff. What only a person mends (a refused login, a missing database, a
table of the worker's own not migrated, a privilege not granted) stops the
command with one line and exit 4: waiting would never end, and the
orchestrator shows an exited process where it would hide a waiting one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from sqlalchemy import bindparam, inspect, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from worker.core import database_url
from worker.core.conditions import Conditions
from worker.core.errors import OperatorNeeded, describe, needs_operator, sqlstate
from worker.core.retry import backoff_s
from worker.pipeline.partition_state import RETRY_CAP_S

CHECK_TIMEOUT_S = 5.0
# 1 s, 2 s, ... up to 30 s between checks, jittered.
BASE_S = 0.5

OWN_TABLE = "persister_consumer_offsets"
PREFECT_TABLES = ("events", "event_resources")
HINTS = {
    "persister": "run `persister migrate`",
    "prefect": "run `persister migrate`, and start the Prefect server or run "
    "`prefect server database upgrade` to make its events tables",
}
# Table -> the privileges a service's statements need on it.
Needs = Mapping[str, tuple[str, ...]]
WRITES = ("SELECT", "INSERT", "UPDATE")
PERSISTER_NEEDS: Needs = {
    OWN_TABLE: WRITES,
    "persister_dead_letters": WRITES,
    "persister_partition_controls": ("SELECT",),
    "events": ("SELECT", "INSERT"),
    "event_resources": ("SELECT", "INSERT"),
}
TRIMMER_NEEDS: Needs = {"persister_leader_leases": WRITES}

# Per (table, privilege): NULL when the table is not there. Any column's
# privilege counts: a grant on the columns the worker writes is enough, and
# a refusal the worker does not need would stop a replica that could work.
PRIVILEGES_SQL = text(
    "SELECT current_user, n.name, n.privilege, "
    "has_any_column_privilege(to_regclass(n.name), n.privilege) "
    "FROM unnest(CAST(:names AS text[]), CAST(:privileges AS text[])) AS n(name, privilege)"
).bindparams(bindparam("names"), bindparam("privileges"))


@dataclass
class Findings:
    """What one look at the database found."""

    role: str = ""
    missing: list[str] = field(default_factory=list)
    # Table -> the privileges the role lacks on it.
    lacking: dict[str, list[str]] = field(default_factory=dict)


async def ping(engine: AsyncEngine, tables: tuple[str, ...] = (OWN_TABLE,)) -> None:
    """Raise what the database raises if it cannot be used."""
    async with asyncio.timeout(CHECK_TIMEOUT_S), engine.connect() as conn:
        for table in tables:
            # Names are this module's constants.
            await conn.execute(text(f"SELECT 1 FROM {table} LIMIT 1"))  # noqa: S608


async def _privileges(conn: AsyncConnection, needs: Needs) -> Findings:
    pairs = [(table, privilege) for table, privileges in needs.items() for privilege in privileges]
    params = {"names": [t for t, _ in pairs], "privileges": [p for _, p in pairs]}
    found = Findings()
    for role, table, privilege, granted in await conn.execute(PRIVILEGES_SQL, params):
        found.role = str(role)
        if granted is None:
            if table not in found.missing:
                found.missing.append(str(table))
        elif not granted:
            found.lacking.setdefault(str(table), []).append(str(privilege))
    return found


async def look(engine: AsyncEngine, needs: Needs) -> Findings:
    """Which of the needed tables are missing, and which privileges the
    role lacks (PostgreSQL; SQLite has no privileges). Raises what the
    database raises when it cannot be asked."""
    async with asyncio.timeout(CHECK_TIMEOUT_S), engine.connect() as conn:
        if conn.dialect.name == "postgresql":
            return await _privileges(conn, needs)
        present = await conn.run_sync(lambda c: set(inspect(c).get_table_names()))
        return Findings(missing=[table for table in needs if table not in present])


def waits_for(table: str, event_tables: str) -> bool:
    """Whether a missing `table` is waited for: beside Prefect, Prefect's
    migrations make the events tables, maybe after the worker starts."""
    return event_tables == "prefect" and table in PREFECT_TABLES


def refusal(
    found: Findings, event_tables: str, where: str, variable: str = database_url.VARIABLES
) -> str | None:
    """The one line for what a person must fix, or None; `variable`: what
    the URL was read from. Pure."""
    missing = [t for t in found.missing if not waits_for(t, event_tables)]
    if missing:
        return f"database {where} has no table {', '.join(missing)}; run `persister migrate`"
    if found.lacking:
        lacks = "; ".join(f"{', '.join(p)} on {t}" for t, p in found.lacking.items())
        return (
            f'database {where} refused: role "{found.role}" lacks {lacks}; grant them, or '
            f"set {variable} to a role that has them"
        )
    return None


def refused_line(exc: BaseException, where: str, variable: str = database_url.VARIABLES) -> str:
    """The one line for an error `needs_operator` says no retry mends."""
    # The server's words, as the other commands say them: the SQLSTATE aside.
    reason = describe(exc)[1].removeprefix(f"SQLSTATE {sqlstate(exc)}: ")
    return f"database {where} refused: {reason}; check {variable}"


def _where(engine: AsyncEngine) -> str:
    return database_url.shown(engine.url.render_as_string(hide_password=True))


async def _usable(engine: AsyncEngine, needs: Needs, event_tables: str) -> str | None:
    """None if the worker can start; else why it waits. Raises
    `OperatorNeeded` for what waiting does not mend."""
    try:
        found = await look(engine, needs)
    except (SQLAlchemyError, OSError, TimeoutError) as exc:
        if needs_operator(exc):
            variable = database_url.variable_set(os.environ)
            raise OperatorNeeded(refused_line(exc, _where(engine), variable)) from exc
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        if hosts := database_url.tried(engine.url):
            # The driver raised the last host's error only.
            first = f"no host could be used (tried {', '.join(hosts)}; the last: {first})"
        return f"{type(exc).__name__}: {first}"
    line = refusal(found, event_tables, _where(engine), database_url.variable_set(os.environ))
    if line is not None:
        raise OperatorNeeded(line)
    if found.missing:
        return "; ".join(f'relation "{table}" does not exist' for table in found.missing)
    return None


async def check_before_start(engine: AsyncEngine, needs: Needs, event_tables: str) -> None:
    """One look before the services start: raise `OperatorNeeded` if a
    person must act. Anything else (unreachable, Prefect's tables not there
    yet) is left to the services, which wait for it."""
    await _usable(engine, needs, event_tables)


async def wait_for_database(
    engine: AsyncEngine,
    stopping: asyncio.Event,
    event_tables: str = "persister",
    needs: Needs = PERSISTER_NEEDS,
) -> bool:
    """Until the database is usable (True) or `stopping` is set (False).
    While it is not, one WARNING, `/readyz` 503 and persister_conditions{kind=
    "database"} 1; a line when it is. Raises `OperatorNeeded` (see
    `check_before_start`), also when the database answers only later."""
    conditions = Conditions("database")
    failures = 0
    while not stopping.is_set():
        why = await _usable(engine, needs, event_tables)
        if why is None:
            conditions.clear("start", "the database answers; joining the consumer group")
            return True
        failures += 1
        conditions.raise_(
            "start",
            f"database not usable yet ({why}); not joining the consumer group until it "
            f"answers (check the database URL, {HINTS[event_tables]})",
            logging.WARNING,
        )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), backoff_s(failures, BASE_S, RETRY_CAP_S))
    return False
