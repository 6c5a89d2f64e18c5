"""Database engines for the worker, and closing them, with a deadline on
every wait on the network (see `create_engine`)."""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any

import asyncpg
import orjson
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from worker.pipeline import moment_codec

logger = logging.getLogger(__name__)


def _json(value: Any) -> str:
    return orjson.dumps(value).decode()


SQLITE_BUSY_TIMEOUT_S = 30
DEFAULT_CONNECT_TIMEOUT_S = 60.0  # asyncpg's
# TCP keepalive on database connections: an idle connection whose peer
# vanished without a reset is found out in about 10 + 3 * 5 s.
KEEPALIVE_IDLE_S = 10
KEEPALIVE_INTERVAL_S = 5
KEEPALIVE_COUNT = 3


def create_engine(
    database_url: str,
    pool_size: int,
    idle_in_transaction_s: float | None = None,
    timeout_s: float | None = None,
) -> AsyncEngine:
    """An engine for the worker. `idle_in_transaction_s` (PostgreSQL) has the
    server abort a transaction whose client went quiet that long, e.g. a
    process paused mid-transaction: it can then never commit late.

    `timeout_s` (PostgreSQL) bounds every wait on the database from both
    ends: the server's `statement_timeout`, `idle_in_transaction_session_timeout`
    and `lock_timeout` (half of it, so a lock wait fails before the
    statement); the client's wait for a connection and for each statement's
    answer (asyncpg's `command_timeout`), after which the connection is
    discarded; and TCP's user timeout, so data the network does not
    acknowledge fails the connection rather than waiting for hours."""
    if database_url.startswith("sqlite"):
        engine = create_async_engine(
            database_url,
            json_serializer=_json,
            # SQLite has one writer at a time: others wait for it, not fail.
            connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S},
        )
        event.listen(engine.sync_engine, "connect", _sqlite_wal)
        return engine
    server_settings: dict[str, str] = {}
    connect_args: dict[str, Any] = {"server_settings": server_settings}
    if idle_in_transaction_s is not None:
        server_settings["idle_in_transaction_session_timeout"] = _ms(idle_in_transaction_s)
    if timeout_s is not None:
        server_settings.setdefault("idle_in_transaction_session_timeout", _ms(timeout_s))
        server_settings["statement_timeout"] = _ms(timeout_s)
        server_settings["lock_timeout"] = _ms(timeout_s / 2)
        connect_args["timeout"] = timeout_s
        connect_args["command_timeout"] = timeout_s
    engine = create_async_engine(
        database_url,
        pool_size=pool_size,
        max_overflow=0,
        pool_pre_ping=True,
        json_serializer=_json,
        json_deserializer=orjson.loads,
        connect_args=connect_args,
    )
    # Each host of a failover URL gets its own try (see `_each_host`).
    event.listen(engine.sync_engine, "do_connect", _each_host_connects)
    user_timeout_ms = int((timeout_s or 0) * 1000)
    event.listen(engine.sync_engine, "connect", lambda conn, _: _on_connect(conn, user_timeout_ms))
    return engine


def _on_connect(dbapi_connection: Any, user_timeout_ms: int) -> None:
    _tcp_deadlines(dbapi_connection, user_timeout_ms)
    dbapi_connection.run_async(moment_codec.install)


def _each_host_connects(_dialect: Any, _record: Any, _cargs: Any, cparams: dict[str, Any]) -> None:
    cparams["async_creator_fn"] = _each_host


async def _each_host(**params: Any) -> Any:
    """Connect to the first host of the URL that answers as asked
    (`target_session_attrs`), each within its share of the connect timeout.
    asyncpg tries them in turn under one deadline, so a primary gone silent
    (no reset) would use all of it and the promoted standby would never be
    tried. The error is the last host's, as asyncpg's."""
    hosts, ports = params.get("host"), params.get("port")
    if not isinstance(hosts, list) or len(hosts) < 2:
        return await asyncpg.connect(**params)
    if not isinstance(ports, list):
        ports = [ports] * len(hosts)
    share_s = params.get("timeout", DEFAULT_CONNECT_TIMEOUT_S) / len(hosts)
    last: BaseException | None = None
    for host, port in zip(hosts, ports, strict=True):
        try:
            return await asyncpg.connect(
                **{**params, "host": host, "port": port, "timeout": share_s}
            )
        except (OSError, asyncpg.TargetServerAttributeNotMatched) as exc:  # TimeoutError too
            last = exc
    assert last is not None
    raise last


def _ms(seconds: float) -> str:
    return str(int(seconds * 1000))


def _tcp_deadlines(dbapi_connection: Any, user_timeout_ms: int) -> None:
    """Keepalive, and TCP's user timeout, on a new connection's socket. asyncpg
    takes no socket options: its transport's socket is the only way in."""
    transport = getattr(dbapi_connection.driver_connection, "_transport", None)
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return  # a Unix socket: no network in between
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in (
        ("TCP_KEEPIDLE", KEEPALIVE_IDLE_S),
        ("TCP_KEEPINTVL", KEEPALIVE_INTERVAL_S),
        ("TCP_KEEPCNT", KEEPALIVE_COUNT),
        ("TCP_USER_TIMEOUT", user_timeout_ms),
    ):
        option = getattr(socket, name, None)  # Linux has them all
        if option is not None and value > 0:
            sock.setsockopt(socket.IPPROTO_TCP, option, value)


async def dispose(engine: AsyncEngine, timeout_s: float) -> None:
    """Close the engine's connections, giving up after `timeout_s`: over a
    silent network each graceful close waits for an answer."""
    try:
        await asyncio.wait_for(engine.dispose(), timeout_s)
    except TimeoutError:
        logger.warning("closing database connections took over %.0f s; left to the OS", timeout_s)


def _sqlite_wal(dbapi_connection: Any, _record: Any) -> None:
    # Readers (status, tests) never block the writer, nor it them.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.close()
