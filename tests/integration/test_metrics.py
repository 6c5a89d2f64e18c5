"""/metrics counts what the database holds; /readyz follows the database."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.integration.support import (
    counts,
    create_topic,
    end_offsets,
    send,
    unique,
    wait_persisted,
    wait_until,
)
from tests.integration.workers import worker_env
from worker.devtools.loadgen import messages
from worker.devtools.stack import LocalStack, StackInfo


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:
        return 0, ""


def start_worker(env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "worker", "run"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def metric(text: str, name: str, labels: str = "") -> float:
    found = re.search(rf"^{name}{re.escape(labels)} (\S+)$", text, flags=re.MULTILINE)
    return float(found.group(1)) if found else 0.0


async def test_metrics_match_the_database_and_readyz_follows_it(
    local_stack: LocalStack, stack_info: StackInfo, engine: AsyncEngine
) -> None:
    if os.environ.get("DATABASE_URL"):
        pytest.skip("needs the throwaway PostgreSQL to stop it; DATABASE_URL is set")
    topic = unique("metrics")
    group = f"group-{topic}"
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    await create_topic(stack_info, topic, 2)
    await send(stack_info, topic, messages(1_000, seed=71, invalid_every=100))
    ends = await end_offsets(stack_info, topic, 2)
    env = {**os.environ, **worker_env(stack_info, topic, group, metrics_port=str(port))}
    proc = start_worker(env)
    try:
        await wait_persisted(engine, group, topic, ends)

        async def scraped() -> str:
            return (await asyncio.to_thread(get, f"{base}/metrics"))[1]

        text = await scraped()
        n_events, n_resources, n_dead = await counts(engine)
        assert metric(text, "persister_events_persisted_total") == n_events == 990
        assert metric(text, "persister_resource_rows_total") == n_resources
        by_class = sum(
            metric(text, "persister_dead_letters_total", f'{{error_class="{kind}"}}')
            for kind in ("Tombstone", "InvalidJson", "InvalidEnvelope")
        )
        assert by_class == n_dead == 10
        assert metric(text, "persister_lag_records", f'{{partition="0",topic="{topic}"}}') == 0
        assert metric(text, "persister_rebalances_total") >= 1
        assert await asyncio.to_thread(get, f"{base}/healthz") == (200, "ok\n")
        assert await asyncio.to_thread(get, f"{base}/readyz") == (200, "ready\n")

        local_stack.stop_postgres()
        try:
            # The database is probed every second in the background.
            async def unready() -> bool:
                status, body = await asyncio.to_thread(get, f"{base}/readyz")
                return status == 503 and "database unreachable" in body

            await wait_until(unready, 5, "/readyz to say the database is unreachable")
            assert (await asyncio.to_thread(get, f"{base}/healthz"))[0] == 200
        finally:
            local_stack.start_postgres()

        async def ready() -> bool:
            return (await asyncio.to_thread(get, f"{base}/readyz"))[0] == 200

        await wait_until(ready, 30, "/readyz to turn ready again")
        assert proc.poll() is None
    finally:
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(proc.wait, 30)
    assert code == 0
