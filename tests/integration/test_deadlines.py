"""Deadlines and stalls against the real database: a write that waits on a
lock passes its deadline, is retried and stored once; a stall is reported
once and cleared; a privilege lost while running is one ERROR, `/readyz`
unready and a retry that goes on by itself once it is granted back."""

from __future__ import annotations

import logging
import socket
import time

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.integration.support import (
    counts,
    create_topic,
    end_offsets,
    running,
    send,
    settings_for,
    unique,
    wait_persisted,
    wait_until,
)
from worker.core import database_url, metrics
from worker.devtools.loadgen import messages
from worker.devtools.net_proxy import NetProxy
from worker.devtools.stack import StackInfo
from worker.pipeline.connections import create_engine
from worker.pipeline.persister import Persister

pytestmark = pytest.mark.integration


def messages_of(caplog: pytest.LogCaptureFixture, level: int, part: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == level and part in r.getMessage()]


async def test_a_write_held_by_a_lock_passes_its_deadline_and_is_stored_once(
    stack_info: StackInfo, engine: AsyncEngine, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    topic, group = unique("deadline"), unique("g")
    await create_topic(stack_info, topic, 1)
    settings = settings_for(
        stack_info, topic, group_id=group, database_timeout_s=2.0, stall_warn_s=1.0
    )
    persister_engine = create_engine(
        settings.database_url, 2, timeout_s=settings.database_timeout_s
    )
    first = list(messages(100, seed=1))
    await send(stack_info, topic, first)
    async with running(Persister(settings, persister_engine)):
        await wait_persisted(engine, group, topic, await end_offsets(stack_info, topic, 1))
        # A reader holding the offsets table in a mode that blocks writes:
        # the next batch's transaction waits on the lock past its deadline.
        async with engine.connect() as holder:
            await holder.execute(text("BEGIN"))
            await holder.execute(text("LOCK TABLE persister_consumer_offsets IN EXCLUSIVE MODE"))
            await send(stack_info, topic, list(messages(100, seed=2)))

            async def stalled() -> bool:
                return bool(messages_of(caplog, logging.WARNING, "stalled"))

            await wait_until(stalled, 15, "the stall WARNING")
            assert any("stalled" in r for r in metrics.readiness.conditions.values())
            age_s = metrics.oldest_unfinished_write.labels(topic, "0")._value.get()
            assert age_s >= 1.0
            await holder.execute(text("ROLLBACK"))
        await wait_persisted(engine, group, topic, await end_offsets(stack_info, topic, 1))
    await persister_engine.dispose()
    events_, _, dead = await counts(engine)
    assert (events_, dead) == (200, 0)
    assert len(messages_of(caplog, logging.WARNING, "writing a batch stalled")) == 1
    assert len(messages_of(caplog, logging.INFO, "writing a batch: stall cleared")) == 1
    assert len(messages_of(caplog, logging.WARNING, "writing a batch failed")) == 1


async def test_a_privilege_lost_while_running_is_one_error_and_heals_when_granted(
    stack_info: StackInfo, engine: AsyncEngine, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    caplog.set_level(logging.DEBUG, logger="worker.pipeline.retries")
    topic, group, role = unique("grant"), unique("g"), unique("writer").replace("-", "_")
    await create_topic(stack_info, topic, 2)
    async with engine.begin() as conn:
        await conn.execute(text(f'CREATE ROLE "{role}" LOGIN'))
        await conn.execute(text(f'GRANT ALL ON ALL TABLES IN SCHEMA public TO "{role}"'))
        await conn.execute(text(f'GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO "{role}"'))
    url = make_url(stack_info.database_url).set(username=role).render_as_string(False)
    settings = settings_for(stack_info, topic, group_id=group, database_url=url)
    persister_engine = create_engine(url, 2, timeout_s=settings.database_timeout_s)
    try:
        async with running(Persister(settings, persister_engine)):
            await send(stack_info, topic, list(messages(50, seed=1)))
            await wait_persisted(engine, group, topic, await end_offsets(stack_info, topic, 2))
            async with engine.begin() as conn:
                await conn.execute(text(f'REVOKE INSERT ON events FROM "{role}"'))
            await send(stack_info, topic, list(messages(50, seed=2)))

            async def refused() -> bool:
                return any("permission denied" in r for r in metrics.readiness.conditions.values())

            await wait_until(refused, 30, "the refusal in /readyz")
            # Both partitions retry several times meanwhile: still one line.
            await wait_until(
                lambda: _true_after(caplog, "permission denied", 3), 30, "a few retries"
            )
            async with engine.begin() as conn:
                await conn.execute(text(f'GRANT INSERT ON events TO "{role}"'))
            await wait_persisted(engine, group, topic, await end_offsets(stack_info, topic, 2))
    finally:
        await persister_engine.dispose()
        async with engine.begin() as conn:
            await conn.execute(text(f'DROP OWNED BY "{role}"'))
            await conn.execute(text(f'DROP ROLE "{role}"'))
    errors = messages_of(caplog, logging.ERROR, "permission denied for table events")
    assert len(errors) == 1, errors
    assert errors[0].endswith("until fixed")
    assert messages_of(caplog, logging.INFO, "writing a batch works again") == [
        "writing a batch works again"
    ]
    events_, _, dead = await counts(engine)
    assert (events_, dead) == (100, 0)
    assert not any("permission denied" in r for r in metrics.readiness.conditions.values())


async def _true_after(caplog: pytest.LogCaptureFixture, part: str, attempts: int) -> bool:
    tried = [r for r in caplog.records if r.levelno == logging.DEBUG and part in r.getMessage()]
    return len(tried) >= attempts


async def test_database_connections_carry_the_deadlines(stack_info: StackInfo) -> None:
    engine = create_engine(stack_info.database_url, 1, timeout_s=7.0)
    try:
        async with engine.connect() as conn:
            shown = [
                (await conn.execute(text(f"SHOW {name}"))).scalar_one()
                for name in (
                    "statement_timeout",
                    "lock_timeout",
                    "idle_in_transaction_session_timeout",
                )
            ]
            raw = await conn.get_raw_connection()
            sock = raw.driver_connection._transport.get_extra_info("socket")  # type: ignore[union-attr]
            options = [
                sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
                sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
                sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT),
            ]
    finally:
        await engine.dispose()
    assert shown == ["7s", "3500ms", "7s"]
    assert options == [1, 10, 7000]


async def test_a_failover_url_skips_a_host_gone_silent(stack_info: StackInfo) -> None:
    real = make_url(stack_info.database_url)
    assert real.host is not None and real.port is not None
    with NetProxy((real.host, real.port)) as silent:
        silent.freeze()  # accepts, never answers: a primary whose network dropped
        url = database_url.normalize(
            f"postgresql://{real.username}@127.0.0.1:{silent.port},{real.host}:{real.port}"
            f"/{real.database}?target_session_attrs=read-write"
        )
        engine = create_engine(url, 1, timeout_s=4.0)
        try:
            started = time.monotonic()
            async with engine.connect() as conn:
                port = (await conn.execute(text("SELECT inet_server_port()"))).scalar_one()
            took_s = time.monotonic() - started
        finally:
            await engine.dispose()
    # The silent host had its share of the connect timeout (2 s), not all of it.
    assert port == real.port
    assert 1.5 < took_s < 3.5, took_s
