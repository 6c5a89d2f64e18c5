"""A tiny service framework: each long-running part of the worker is a
`Service` that can be switched off by its own environment variable, and
`run_services` runs the enabled ones until cancelled or until one fails.

A service's `start()` runs until `stop()` is called; it sets `started_event`
once it is doing its work, so callers can wait for readiness instead of time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import ClassVar

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from worker.core import metrics
from worker.core.conditions import Conditions
from worker.core.errors import OperatorNeeded
from worker.core.leader import Lease, acquire, release
from worker.core.settings import ENV_PREFIX, ServiceToggle, Settings, replica_id
from worker.pipeline import event_tables
from worker.pipeline.connections import create_engine, dispose
from worker.pipeline.database_wait import (
    PERSISTER_NEEDS,
    TRIMMER_NEEDS,
    Needs,
    check_before_start,
    wait_for_database,
)
from worker.pipeline.persister import FlushAbandoned, Persister
from worker.services.group_lag import publish_while_leading
from worker.services.health_server import probe_database, router, serve
from worker.services.retention import Trimmed, trim

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


class EventPersister(Service):
    """Consumes the event topics and writes them to the database."""

    name = "event_persister"
    needs = PERSISTER_NEEDS

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self._leaving = asyncio.Event()

    def drain(self) -> None:
        """Flush, commit and leave the group, but keep the process (its
        metrics, its trimmer) up until stopped."""
        if not self._leaving.is_set():
            logger.info("draining: flushing, committing and leaving the consumer group")
        self._leaving.set()

    async def stop(self) -> None:
        await super().stop()
        self._leaving.set()

    async def start(self) -> None:
        s = self.settings
        # One connection more than the writers take: offset loads and control
        # reads never wait behind a slow batch (and time out for it).
        pool_size = s.database_pool_size + 1
        engine = create_engine(s.database_url, pool_size, timeout_s=s.database_timeout_s)
        try:
            if await wait_for_database(engine, self._leaving, s.event_tables):
                await event_tables.check(engine, s)
                persister = Persister(s, engine)
                await persister.run(self._leaving, self.started_event)
                if persister.abandoned:
                    raise FlushAbandoned(persister.abandoned)
        finally:
            await dispose(engine, min(DISPOSE_TIMEOUT_S, s.shutdown_grace_s * 0.1))
        if not self._stopping.is_set():
            metrics.readiness.joined = False
            metrics.readiness.conditions["persister:drained"] = (
                "drained: left the consumer group; restart the process to rejoin"
            )
            logger.info("drained: the process stays up (metrics, trimmer) until SIGTERM")
            await self._stopping.wait()


class RetentionTrimmer(Service):
    """Trims events older than the retention period, on the one replica that
    holds the `retention` lease (see worker.core.leader, worker.services.retention)."""

    name = "retention_trimmer"
    lease_name = "retention"
    needs = TRIMMER_NEEDS

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        # The replica, as its consumer's client id names it, and a suffix
        # that tells apart two trimmers of one process (tests).
        self.holder = f"{replica_id()}:{uuid.uuid4().hex[:8]}"
        self.renewal = Conditions("lease", unready=False)
        self.lease: Lease | None = None
        self.last_trim: Trimmed | None = None
        self._trimming: asyncio.Task[Trimmed] | None = None

    async def stop(self) -> None:
        await super().stop()
        # A trim under way is given up (its current batch rolls back; the
        # next leader trims again): stopping keeps the shutdown grace.
        if self._trimming is not None:
            self._trimming.cancel()

    async def start(self) -> None:
        # Three connections: the lease, a trim, the group's lag. A leader
        # paused mid-batch past half its lease has that batch rolled
        # back by the server: by the time another replica leads, it is gone.
        ttl_s = self.settings.lease_ttl.total_seconds()
        engine = create_engine(
            self.settings.database_url,
            pool_size=3,
            idle_in_transaction_s=ttl_s / 2,
            timeout_s=self.settings.database_timeout_s,
        )
        # Cancelled, not stopped: a call to an unreachable broker may hang.
        lag = asyncio.create_task(
            publish_while_leading(
                self.settings, engine, lambda: self.lease is not None, self.lease_name
            )
        )
        try:
            self.started_event.set()
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self._keep_lease(engine))
                tasks.create_task(self._trim_while_leading(engine))
        finally:
            lag.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await lag
            if self.lease is not None:
                with contextlib.suppress(SQLAlchemyError, OSError):  # TimeoutError too
                    async with asyncio.timeout(DISPOSE_TIMEOUT_S):
                        await release(engine, self.lease)
                    logger.info("handed the retention lease back")
            await dispose(engine, DISPOSE_TIMEOUT_S)

    async def _keep_lease(self, engine: AsyncEngine) -> None:
        ttl = self.settings.lease_ttl
        while True:
            try:
                lease = await acquire(engine, self.lease_name, self.holder, ttl)
            except (SQLAlchemyError, OSError) as exc:
                self.renewal.raise_(
                    "renew", f"could not renew the retention lease: {exc!r}", logging.WARNING
                )
                held = self.lease
                lease = held if held and held.expires > datetime.now(UTC) else None
            else:
                self.renewal.clear("renew", "the retention lease can be renewed again")
            if lease is not None and self.lease is None:
                logger.info("leading retention trimming (epoch %d)", lease.epoch)
            elif lease is None and self.lease is not None:
                logger.info("no longer leading retention trimming")
            self.lease = lease
            metrics.leader.set(1 if lease else 0)
            if await self.pause(ttl.total_seconds() / 3):
                return

    async def _trim_while_leading(self, engine: AsyncEngine) -> None:
        s = self.settings
        while True:
            lease = self.lease
            if lease is None:
                wait_s = s.lease_ttl.total_seconds() / 3
            else:
                wait_s = s.trim_every.total_seconds()
                started = time.monotonic()
                self._trimming = asyncio.create_task(trim(engine, s, lease))
                try:
                    self.last_trim = await self._trimming
                except asyncio.CancelledError:
                    if self._trimming.cancelled() and self._stopping.is_set():
                        logger.info("stopping: the trim under way is given up")
                        return
                    raise
                except (SQLAlchemyError, OSError) as exc:
                    logger.warning("trim failed: %r; next try in %.0f s", exc, wait_s)
                else:
                    took_s = time.monotonic() - started
                    metrics.observe_trim(self.last_trim.events, self.last_trim.resources, took_s)
                    logger.info(
                        "trimmed %d events and %d resource rows in %.1f s",
                        self.last_trim.events,
                        self.last_trim.resources,
                        took_s,
                    )
            if await self.pause(wait_s):
                return


class MetricsServer(Service):
    """Serves /metrics, /healthz and /readyz (see worker.services.health_server)."""

    name = "metrics_server"
    starts_first = True

    async def start(self) -> None:
        s = self.settings
        engine = create_engine(s.database_url, pool_size=1, timeout_s=s.database_timeout_s)
        expect_persister = EventPersister.enabled(s)
        probe = asyncio.create_task(probe_database(engine), name="database probe")
        try:
            try:
                route = router(expect_persister)
                server = await serve(s.metrics_host, s.metrics_port, route)
            except OSError as exc:
                raise CannotStart(
                    f"cannot serve metrics on {s.metrics_host}:{s.metrics_port} "
                    f"({exc.strerror or exc}); set PERSISTER_METRICS_PORT to a free port "
                    "(or PERSISTER_METRICS_HOST)"
                ) from None
            self.port = int(server.sockets[0].getsockname()[1])
            logger.info("serving metrics on http://%s:%d/metrics", s.metrics_host, self.port)
            async with server:
                self.started_event.set()
                await self._stopping.wait()
        finally:
            probe.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await probe
            await dispose(engine, DISPOSE_TIMEOUT_S)
