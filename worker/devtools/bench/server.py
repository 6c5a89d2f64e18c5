"""The PostgreSQL server under the benchmark: its CPU time and its settings.

CPU time is that of the whole server (postmaster, backends, checkpointer,
WAL writer, autovacuum), read from /proc: the live processes' own time plus
what the postmaster collected from the children that have exited, so a
backend that came and went within a phase is counted too.
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import psutil

from schemas.migrate import upgrade
from worker.devtools.bench import db
from worker.devtools.stack import SERVER_SETTINGS, LocalStack

log = logging.getLogger(__name__)

# PostgreSQL's defaults for the settings the local stack changes: the server
# the previous schema was measured on.
DEFAULT_SETTINGS = {
    "wal_compression": "off",
    "max_wal_size": "1GB",
    "checkpoint_timeout": "5min",
    "checkpoint_completion_target": "0.9",
}
CURRENT_SETTINGS = dict(SERVER_SETTINGS)
APPLY_TIMEOUT_S = 10.0


class ServerCpu:
    """User + system CPU seconds of one PostgreSQL server, all processes."""

    def __init__(self, postmaster_pid: int) -> None:
        self.postmaster = psutil.Process(postmaster_pid)

    @classmethod
    async def of(cls, conn: db.Connection) -> ServerCpu:
        backend = int(await conn.fetchval("SELECT pg_backend_pid()"))
        return cls(psutil.Process(backend).ppid())

    def seconds(self) -> float:
        times = self.postmaster.cpu_times()
        total = times.user + times.system + times.children_user + times.children_system
        for child in self.postmaster.children():
            try:
                own = child.cpu_times()
            except psutil.NoSuchProcess:
                # Exited meanwhile: its time is now in children_* above, or
                # will be once reaped; too small to matter either way.
                continue
            total += own.user + own.system
        return total


async def apply(database_url: str, settings: Mapping[str, str]) -> None:
    """ALTER SYSTEM and reload; returns once a new session sees every value."""
    async with db.connect(database_url) as conn:
        for name, value in settings.items():
            # ALTER SYSTEM takes no parameters; names and values are this
            # module's constants.
            await conn.execute(f"ALTER SYSTEM SET {name} = '{value}'")
        await conn.execute("SELECT pg_reload_conf()")
    deadline = time.monotonic() + APPLY_TIMEOUT_S
    while True:
        async with db.connect(database_url) as conn:
            shown = {name: await conn.fetchval(f"SHOW {name}") for name in settings}
        if shown == dict(settings):
            log.info("server settings: %s", shown)
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"server settings not applied: want {settings}, have {shown}")
        await asyncio.sleep(0.1)


@contextmanager
def fresh(prefix: str) -> Iterator[tuple[str, Path]]:
    """A throwaway stack whose PostgreSQL runs the current settings (set with
    ALTER SYSTEM, so a phase can switch to the defaults and back) and has the
    current schema: (its database URL, its directory); stopped on exit."""
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        stack = LocalStack(Path(tmp), database_url=None, server_settings={})
        try:
            url = stack.start().database_url
            asyncio.run(apply(url, CURRENT_SETTINGS))
            upgrade(url)
            yield url, Path(tmp)
        finally:
            stack.stop()
