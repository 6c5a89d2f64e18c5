"""The service that consumes the event topics and writes them to the
database (`worker.pipeline.persister`), and drains on request."""

from __future__ import annotations

import asyncio
import logging

from worker.core import metrics
from worker.core.settings import Settings
from worker.pipeline import event_tables
from worker.pipeline.connections import create_engine, dispose
from worker.pipeline.database_wait import PERSISTER_NEEDS, wait_for_database
from worker.pipeline.persister import FlushAbandoned, Persister
from worker.services.service import DISPOSE_TIMEOUT_S, Service

logger = logging.getLogger(__name__)


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
