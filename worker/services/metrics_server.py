"""The service that serves /metrics, /healthz and /readyz
(`worker.services.health_server`); it starts before the others."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from worker.pipeline.connections import create_engine, dispose
from worker.services.event_persister import EventPersister
from worker.services.health_server import probe_database, router, serve
from worker.services.service import DISPOSE_TIMEOUT_S, CannotStart, Service

logger = logging.getLogger(__name__)


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
