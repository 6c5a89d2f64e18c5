"""A tiny service framework: each long-running part of the worker is a
`Service` that can be switched off by its own environment variable, and
`run_services` runs the enabled ones until cancelled or until one fails.

A service's `start()` runs until `stop()` is called; it sets `started_event`
once it is doing its work, so callers can wait for readiness instead of time.
"""

from __future__ import annotations

import asyncio
import logging
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import ClassVar

from worker.consumer import Persister
from worker.settings import ENV_PREFIX, ServiceToggle, Settings
from worker.storage import create_engine

logger = logging.getLogger(__name__)


class Service(ABC):
    name: ClassVar[str]

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
        services = [s(settings) for s in cls.enabled_services(settings)]
        tasks = [asyncio.create_task(s.start(), name=s.name) for s in services]
        try:
            yield tasks
        finally:
            for service in services:
                await service.stop()
            results = await asyncio.gather(*tasks, return_exceptions=True)
            for service, result in zip(services, results, strict=True):
                if isinstance(result, BaseException) and not isinstance(
                    result, asyncio.CancelledError
                ):
                    logger.error("service %s failed: %r", service.name, result)

    @abstractmethod
    async def start(self) -> None:
        """Do the work until `stop()`; set `started_event` once running."""

    async def stop(self) -> None:
        self._stopping.set()


class EventPersister(Service):
    """Consumes the event topics and writes them to the database."""

    name = "event_persister"

    async def start(self) -> None:
        s = self.settings
        engine = create_engine(s.database_url, s.database_pool_size)
        try:
            persister = Persister(s, engine)
            await persister.run(self._stopping, self.started_event)
        finally:
            await engine.dispose()
