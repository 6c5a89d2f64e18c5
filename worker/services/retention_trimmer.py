"""The service that trims expired events on the one replica holding the
`retention` lease (`worker.services.retention` does a trim), and publishes
the group's lag while it leads."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from datetime import UTC, datetime

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from worker.core import metrics
from worker.core.conditions import Conditions
from worker.core.leader import Lease, acquire, release
from worker.core.settings import Settings, replica_id
from worker.pipeline.connections import create_engine, dispose
from worker.pipeline.database_wait import TRIMMER_NEEDS
from worker.services.group_lag import publish_while_leading
from worker.services.retention import Trimmed, trim
from worker.services.service import DISPOSE_TIMEOUT_S, Service

logger = logging.getLogger(__name__)


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
