"""Leader election for the trimmer with real worker processes on PostgreSQL."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from schemas.tables import events, leader_leases
from tests.integration.support import count, wait_until
from tests.integration.test_retention import store
from tests.integration.workers import WorkerPool
from worker.devtools.stack import StackInfo

TTL_S = 3.0
RENEW_S = TTL_S / 3


def trimmer_env(info: StackInfo, retention: str) -> dict[str, str]:
    """Only the trimmer runs; small batches make a trim last long enough to
    be interrupted."""
    return {
        "KAFKA_BOOTSTRAP_SERVERS": info.kafka_bootstrap_servers,
        "DATABASE_URL": info.database_url,
        "PERSISTER_SERVICES__EVENT_PERSISTER__ENABLED": "false",
        "PERSISTER_SERVICES__METRICS_SERVER__ENABLED": "false",
        "PERSISTER_RETENTION": retention,
        "PERSISTER_LEASE_TTL": f"{TTL_S}s",
        "PERSISTER_TRIM_EVERY": "1s",
        "PERSISTER_TRIM_BATCH_SIZE": "100",
    }


async def holder(engine: AsyncEngine) -> tuple[int, int] | None:
    """(pid, epoch) of the current lease holder, if the lease is unexpired."""
    c = leader_leases.c
    async with engine.connect() as conn:
        row = (await conn.execute(select(c.holder, c.epoch, c.expires))).first()
    if row is None or row.expires.timestamp() < time.time():
        return None
    return int(row.holder.split(":")[1]), int(row.epoch)


async def wait_for_holder(
    engine: AsyncEngine, pids: set[int], epoch: int, timeout_s: float
) -> tuple[int, float]:
    """Wait until one of `pids` holds the lease with `epoch`; (pid, seconds)."""
    found: list[int] = []

    async def held() -> bool:
        now = await holder(engine)
        if now is not None and now[0] in pids and now[1] == epoch:
            found.append(now[0])
            return True
        return False

    took = await wait_until(held, timeout_s, f"one of {pids} to lead with epoch {epoch}")
    return found[-1], took


async def test_one_leader_takeover_and_a_paused_leader_deletes_nothing(
    stack_info: StackInfo, engine: AsyncEngine, tmp_path: Path
) -> None:
    if os.environ.get("DATABASE_URL"):
        pytest.skip("asserts on the lease table of the throwaway database")
    # The first leader keeps 7 days; the standbys keep 30, so whatever is
    # deleted from 10-day-old rows is deleted by the first leader.
    async with (
        WorkerPool(trimmer_env(stack_info, "7d"), tmp_path / "first") as first,
        WorkerPool(trimmer_env(stack_info, "30d"), tmp_path / "standby") as standby,
    ):
        first.start(1)
        leader_pid = first.pid(0)
        assert leader_pid is not None
        await wait_for_holder(engine, {leader_pid}, epoch=1, timeout_s=30)
        standby.start(2)
        standby_pids = {pid for i in (0, 1) if (pid := standby.pid(i)) is not None}

        await store(engine, timedelta(days=10), 30_000)

        async def trimming() -> bool:
            return await count(engine, events) < 29_000

        await wait_until(trimming, 30, "the leader to start trimming")
        os.kill(leader_pid, signal.SIGSTOP)
        try:
            new_pid, took = await wait_for_holder(engine, standby_pids, epoch=2, timeout_s=15)
            # Expired after the TTL, taken at the standby's next renewal.
            assert took <= TTL_S + RENEW_S + 1.0, took
            left = await count(engine, events)
            assert 0 < left < 29_000
        finally:
            os.kill(leader_pid, signal.SIGCONT)

        async def gave_up() -> bool:
            return bool(first.grep("no longer leading retention trimming"))

        await wait_until(gave_up, 15, "the paused leader to notice it lost the lease")
        assert await count(engine, events) == left
        assert await holder(engine) == (new_pid, 2)

        assert await asyncio.to_thread(first.terminate, 0) == 0
        # Kill the new leader: the other standby takes over in TTL + renewal.
        survivor = (standby_pids - {new_pid}).pop()
        standby.kill(next(i for i in (0, 1) if standby.pid(i) == new_pid))
        _, took = await wait_for_holder(engine, {survivor}, epoch=3, timeout_s=15)
        assert took <= TTL_S + RENEW_S + 1.0, took
        assert await count(engine, events) == left
        leading = first.grep("leading retention trimming (epoch")
        leading += standby.grep("leading retention trimming (epoch")
        assert len(leading) == 3, leading  # epochs 1, 2, 3: never two at once
