"""A tiny service framework: each long-running part of the worker is a
`Service` that can be switched off by its own environment variable, and
`run_services` runs the enabled ones until cancelled or until one fails.

A service's `start()` runs until `stop()` is called; it sets `started_event`
once it is doing its work, so callers can wait for readiness instead of time.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import ClassVar

from worker.core.errors import OperatorNeeded
from worker.core.settings import ENV_PREFIX, ServiceToggle, Settings
from worker.pipeline import event_tables
from worker.pipeline.connections import create_engine, dispose
from worker.pipeline.database_wait import Needs, check_before_start
from worker.pipeline.persister import FlushAbandoned

logger = logging.getLogger(__name__)

# Closing a pool over a silent network: after this, the OS closes them.
DISPOSE_TIMEOUT_S = 3.0


class CannotStart(Exception):
    """A service cannot start with these settings (the message says which)."""


class Service(ABC):
    name: ClassVar[str]
    # Started, and running, before the others start (e.g. a port to bind
    # before the persister joins its group).
    starts_first: ClassVar[bool] = False
    # The services `running` runs now (for signals such as drain).
    current: ClassVar[list[Service]] = []
    # The database tables and privileges its statements need (checked once
    # before any service that needs some starts).
    needs: ClassVar[Needs] = {}

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.started_event = asyncio.Event()
        self._stopping = asyncio.Event()

    @classmethod
    def all_services(cls) -> list[type[Service]]:
        return [s for s in cls.__subclasses__() if not getattr(s, "__abstractmethods__", None)]

    @classmethod
    def environment_variable_name(cls) -> str:
        return f"{ENV_PREFIX}SERVICES__{cls.name.upper()}__ENABLED"

    @classmethod
    def service_settings(cls, settings: Settings) -> ServiceToggle:
        toggle: ServiceToggle = getattr(settings.services, cls.name)
        return toggle

    @classmethod
    def enabled(cls, settings: Settings) -> bool:
        return cls.service_settings(settings).enabled

    @classmethod
    def enabled_services(cls, settings: Settings) -> list[type[Service]]:
        return [s for s in cls.all_services() if s.enabled(settings)]

    @classmethod
    async def run_services(cls, settings: Settings) -> None:
        """Run every enabled service until cancelled, or until one fails (its
        error is raised here, after the others have stopped)."""
        async with cls.running(settings) as tasks:
            if tasks:
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    task.result()

    @classmethod
    @asynccontextmanager
    async def running(cls, settings: Settings) -> AsyncIterator[list[asyncio.Task[None]]]:
        """Start the enabled services on entry; stop them, and wait, on exit."""
        enabled = sorted(cls.enabled_services(settings), key=lambda s: not s.starts_first)
        services = [s(settings) for s in enabled]
        cls.current = services
        tasks: list[asyncio.Task[None]] = []
        try:
            checked = False
            for service in services:
                if not (service.starts_first or checked):
                    checked = True
                    await _check_database(settings, services)
                tasks.append(asyncio.create_task(service.start(), name=service.name))
                if service.starts_first:
                    await service.started_or_failed(tasks[-1])
            yield tasks
        finally:
            raising = sys.exc_info()[1]
            for service in services:
                await service.stop()
            results = await asyncio.gather(*tasks, return_exceptions=True)
            for service, result in zip(services, results, strict=False):
                quiet = (
                    asyncio.CancelledError
                    | CannotStart
                    | event_tables.Unwritable
                    | OperatorNeeded
                    | FlushAbandoned
                )
                failed = isinstance(result, BaseException) and not isinstance(result, quiet)
                if failed and result is not raising:
                    logger.error("service %s failed: %r", service.name, result)
            # Stopping by signal raises CancelledError here; an abandoned
            # flush must still reach the command, which exits 4 for it.
            for result in results:
                if isinstance(result, FlushAbandoned) and result is not raising:
                    raise result

    async def started_or_failed(self, task: asyncio.Task[None]) -> None:
        """Wait until started; raise what `task` raised if it ended first."""
        started = asyncio.create_task(self.started_event.wait())
        await asyncio.wait([task, started], return_when=asyncio.FIRST_COMPLETED)
        started.cancel()
        if task.done():
            task.result()

    @abstractmethod
    async def start(self) -> None:
        """Do the work until `stop()`; set `started_event` once running."""

    async def stop(self) -> None:
        self._stopping.set()

    def drain(self) -> None:  # noqa: B027 - most services have nothing to give up
        """Give up shared work but keep running (see `EventPersister`)."""

    async def pause(self, seconds: float) -> bool:
        """Wait `seconds` or until stopped; True if stopped."""
        try:
            await asyncio.wait_for(self._stopping.wait(), seconds)
        except TimeoutError:
            return False
        return True


async def _check_database(settings: Settings, services: list[Service]) -> None:
    """Refuse to start, with one line, what no waiting mends (a refused
    login, a table not migrated, a privilege not granted), before a service
    logs its own retries of it."""
    needs: dict[str, tuple[str, ...]] = {}
    for service in services:
        for table, privileges in service.needs.items():
            needs[table] = tuple(dict.fromkeys((*needs.get(table, ()), *privileges)))
    if not needs:
        return
    engine = create_engine(settings.database_url, pool_size=1)
    try:
        await check_before_start(engine, needs, settings.event_tables)
    finally:
        await dispose(engine, DISPOSE_TIMEOUT_S)
