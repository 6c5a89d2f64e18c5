"""The `persister` command as an operator runs it: a real process, real signals."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time

from sqlalchemy.ext.asyncio import AsyncEngine

from tests.integration.support import (
    counts,
    create_topic,
    end_offsets,
    send,
    stored_offsets,
    unique,
    wait_until,
)
from worker.loadgen import messages
from worker.stack import StackInfo


def persister(*args: str, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "worker", *args],
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_bad_setting_exits_2_with_one_clear_line() -> None:
    proc = persister("run", env={"PERSISTER_BATCH_SIZE": "0", "PERSISTER_FLUSH_EVERY_S": "soon"})
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 2
    lines = out.strip().splitlines()
    assert any(line.startswith("invalid setting batch_size:") for line in lines), out
    assert any(line.startswith("invalid setting flush_every_s:") for line in lines), out
    assert "Traceback" not in out


async def test_run_persists_then_sigterm_exits_0(
    stack_info: StackInfo, engine: AsyncEngine
) -> None:
    topic = unique("cli")
    group = f"group-{topic}"
    await create_topic(stack_info, topic, 3)
    await send(stack_info, topic, messages(900, seed=11, invalid_every=100))
    ends = await end_offsets(stack_info, topic, 3)
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": stack_info.kafka_bootstrap_servers,
        "DATABASE_URL": stack_info.database_url,
        "PERSISTER_TOPICS": topic,
        "PERSISTER_GROUP_ID": group,
        "PERSISTER_SHUTDOWN_GRACE_S": "10",
    }
    proc = persister("run", env=env)
    try:

        async def caught_up() -> bool:
            return await stored_offsets(engine, group, topic) == ends

        await wait_until(caught_up, 60, "the worker process to store every offset")
    finally:
        proc.send_signal(signal.SIGTERM)
        started = time.monotonic()
        out, _ = await asyncio.to_thread(proc.communicate, timeout=30)
    assert proc.returncode == 0, out
    assert time.monotonic() - started < 10
    assert "left group" in out
    events, _, dead = await counts(engine)
    assert (events, dead) == (891, 9)
