"""A small HTTP server for Prometheus and orchestrators:

- `/metrics`: the process's metrics (`worker.core.metrics`), Prometheus text format;
- `/healthz`: 200 while the process runs (a liveness probe);
- `/readyz`: 200 when the persister has joined its group, the database answers
  and no partition has failed to write for `STUCK_AFTER_S`; else 503 with the
  reasons, one per line.

Both answer from state kept in memory, never by waiting on the database or
Kafka: a probe that hangs with the network would say nothing when it matters
most. `probe_database` keeps the database's part of that state, checking it
every `PROBE_EVERY_S` under a deadline.

Plain asyncio streams: three GET routes do not need a web framework.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from worker.core import metrics

logger = logging.getLogger(__name__)

STUCK_AFTER_S = 120.0
DATABASE_CHECK_TIMEOUT_S = 2.0
PROBE_EVERY_S = 1.0
READ_TIMEOUT_S = 5.0

Response = tuple[int, str, bytes]


async def probe_database(engine: AsyncEngine) -> None:
    """Check the database every PROBE_EVERY_S until cancelled, keeping the
    outcome in `metrics.readiness.database_problem`."""
    while True:
        try:
            async with asyncio.timeout(DATABASE_CHECK_TIMEOUT_S), engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
        except Exception as exc:  # any failure means "not ready", whatever its kind
            metrics.readiness.database_problem = f"database unreachable: {type(exc).__name__}"
        else:
            metrics.readiness.database_problem = None
        await asyncio.sleep(PROBE_EVERY_S)


def readiness_problems(expect_persister: bool) -> list[str]:
    problems = []
    if expect_persister and not metrics.readiness.joined:
        problems.append("not yet a member of the consumer group")
    if metrics.readiness.database_problem is not None:
        problems.append(metrics.readiness.database_problem)
    stuck_s = metrics.readiness.stuck_for()
    if stuck_s >= STUCK_AFTER_S:
        problems.append(f"a partition has failed to write for {stuck_s:.0f} s")
    problems.extend(reason for _, reason in sorted(metrics.readiness.conditions.items()))
    return problems


def router(expect_persister: bool) -> Callable[[str], Awaitable[Response]]:
    async def route(path: str) -> Response:
        if path == "/metrics":
            # Readiness as a series too, for alerting on it.
            problems = readiness_problems(expect_persister)
            metrics.ready.set(0 if problems else 1)
            return 200, CONTENT_TYPE_LATEST, generate_latest(metrics.registry)
        if path == "/healthz":
            return 200, "text/plain", b"ok\n"
        if path == "/readyz":
            problems = readiness_problems(expect_persister)
            body = ("\n".join(problems) or "ready") + "\n"
            return (503 if problems else 200), "text/plain", body.encode()
        return 404, "text/plain", b"not found\n"

    return route


async def serve(
    host: str, port: int, route: Callable[[str], Awaitable[Response]]
) -> asyncio.Server:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(READ_TIMEOUT_S):
                request = await reader.readuntil(b"\r\n\r\n")
            method, path, *_ = request.decode("latin-1").split(" ", 2)
            if method != "GET":
                status, kind, body = 405, "text/plain", b"method not allowed\n"
            else:
                status, kind, body = await route(path.split("?", 1)[0])
            head = (
                f"HTTP/1.1 {status} {'OK' if status == 200 else 'Error'}\r\n"
                f"Content-Type: {kind}\r\nContent-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n"
            )
            writer.write(head.encode() + body)
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError, ValueError):
            pass  # a client that went away or spoke something else
        finally:
            writer.close()

    return await asyncio.start_server(handle, host, port)
