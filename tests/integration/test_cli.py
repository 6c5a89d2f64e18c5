"""The `persister` command as an operator runs it: a real process, real signals."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import orjson
from sqlalchemy import delete
from sqlalchemy.ext.asyncio import AsyncEngine

from schemas.tables import event_resources, events
from tests.integration.support import (
    counts,
    create_topic,
    end_offsets,
    running,
    send,
    settings_for,
    stored_offsets,
    unique,
    wait_persisted,
    wait_until,
)
from tests.integration.workers import worker_env
from worker.devtools.loadgen import make_event, messages
from worker.devtools.stack import StackInfo
from worker.pipeline.persister import Persister


def persister(*args: str, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "worker", *args],
        env={
            **os.environ,
            "PERSISTER_METRICS_HOST": "127.0.0.1",
            "PERSISTER_METRICS_PORT": "0",
            **env,
        },
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_a_missing_codec_library_stops_run_with_one_line_before_connecting(
    tmp_path: Path,
) -> None:
    # A `cramjam` that cannot be imported, as in an installation without it.
    (tmp_path / "cramjam").mkdir()
    (tmp_path / "cramjam" / "__init__.py").write_text("raise ImportError('not installed')\n")
    proc = persister(
        "run",
        env={"PYTHONPATH": str(tmp_path), "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9"},
    )
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert out.strip().splitlines() == [
        "cannot decode snappy-compressed records (NotImplementedError: Snappy codec is not "
        "available); the cramjam package provides snappy, lz4 and zstd: reinstall the worker "
        "with its dependencies"
    ]


def test_bad_setting_exits_2_with_one_clear_line() -> None:
    proc = persister("run", env={"PERSISTER_BATCH_SIZE": "0", "PERSISTER_FLUSH_EVERY_S": "soon"})
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 2
    lines = out.strip().splitlines()
    assert lines == [
        "invalid setting PERSISTER_BATCH_SIZE=0: must be at least 1",
        "invalid setting PERSISTER_FLUSH_EVERY_S=soon: must be a number",
    ]


async def test_run_persists_then_sigterm_exits_0(
    stack_info: StackInfo, engine: AsyncEngine
) -> None:
    topic = unique("cli")
    group = f"group-{topic}"
    await create_topic(stack_info, topic, 3)
    await send(stack_info, topic, messages(900, seed=11, invalid_every=100))
    ends = await end_offsets(stack_info, topic, 3)
    env = worker_env(stack_info, topic, group)
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


def cli(*args: str, env: dict[str, str]) -> tuple[int, str]:
    proc = persister(*args, env=env)
    out, _ = proc.communicate(timeout=60)
    return proc.returncode, out


async def test_replay_restores_trimmed_events(stack_info: StackInfo, engine: AsyncEngine) -> None:
    topic = unique("replay")
    group = f"group-{topic}"
    await create_topic(stack_info, topic, 2)
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": stack_info.kafka_bootstrap_servers,
        "DATABASE_URL": stack_info.database_url,
    }
    await send(stack_info, topic, messages(300, seed=41))
    since = datetime.now(UTC)
    await send(stack_info, topic, messages(200, seed=42))
    ends = await end_offsets(stack_info, topic, 2)
    settings = settings_for(stack_info, topic, group_id=group)
    replay = ("replay", "--group", group, "--topic", topic)

    async with running(Persister(settings, engine)):
        await wait_persisted(engine, group, topic, ends)
        code, out = await asyncio.to_thread(cli, *replay, "--to-earliest", env=env)
        assert code == 3 and "live members" in out, out
    assert await counts(engine) == (500, 500 + sum_related(300, 41) + sum_related(200, 42), 0)

    # Trim everything, as if retention had run.
    async with engine.begin() as conn:
        await conn.execute(delete(event_resources))
        await conn.execute(delete(events))

    code, out = await asyncio.to_thread(
        cli, *replay, "--to-timestamp", since.isoformat(), "--dry-run", env=env
    )
    assert code == 0, out
    assert await stored_offsets(engine, group, topic) == ends  # a dry run moves nothing

    code, out = await asyncio.to_thread(cli, *replay, "--to-timestamp", since.isoformat(), env=env)
    assert code == 0, out
    moved = await stored_offsets(engine, group, topic)
    assert sum(ends[p] - moved[p] for p in ends) == 200

    async with running(Persister(settings, engine)):
        await wait_persisted(engine, group, topic, ends)
    assert await counts(engine) == (200, 200 + sum_related(200, 42), 0)

    # Replaying over what is stored adds nothing.
    code, out = await asyncio.to_thread(cli, *replay, "--to-earliest", env=env)
    assert code == 0, out
    async with running(Persister(settings, engine)):
        await wait_persisted(engine, group, topic, ends)
    assert await counts(engine) == (500, 500 + sum_related(300, 41) + sum_related(200, 42), 0)


def sum_related(count: int, seed: int) -> int:
    return sum(len(orjson.loads(v or b"{}")["related"]) for v in messages(count, seed=seed))


def test_replay_needs_exactly_one_target() -> None:
    code, out = cli("replay", "--group", "g", "--topic", "t", env={})
    assert code == 2
    assert "exactly one of" in out


async def test_status_numbers_match_kafka_and_the_database(
    stack_info: StackInfo, engine: AsyncEngine
) -> None:
    topic = unique("status")
    group = f"group-{topic}"
    await create_topic(stack_info, topic, 3)
    await send(stack_info, topic, messages(300, seed=51, invalid_every=50))
    ends = await end_offsets(stack_info, topic, 3)
    settings = settings_for(stack_info, topic, group_id=group)
    env = worker_env(stack_info, topic, group)
    async with running(Persister(settings, engine)):
        await wait_persisted(engine, group, topic, ends)
        code, out = await asyncio.to_thread(cli, "status", "--json", env=env)
        assert code == 0, out
        live = orjson.loads(out)
    assert len(live["members"]) == 1
    await send(stack_info, topic, messages(30, seed=52), partition=1)

    code, out = await asyncio.to_thread(cli, "status", "--json", env=env)
    assert code == 0, out
    status = orjson.loads(out)
    assert status["members"] == []
    assert status["dead_letters"] == 6
    assert status["lag"] == 30
    by_partition = {p["partition"]: p for p in status["partitions"]}
    assert {p: row["stored"] for p, row in by_partition.items()} == ends
    assert {p: row["end"] for p, row in by_partition.items()} == {
        p: ends[p] + (30 if p == 1 else 0) for p in ends
    }
    assert {p: row["committed"] for p, row in by_partition.items()} == ends

    code, out = await asyncio.to_thread(cli, "status", env=env)
    assert code == 0 and "total lag 30" in out, out


async def test_dlq_replay_after_a_fix_persists_once(
    stack_info: StackInfo, engine: AsyncEngine, tmp_path: Path
) -> None:
    topic = unique("dlq")
    group = f"group-{topic}"
    await create_topic(stack_info, topic, 1)
    too_related = make_event(random.Random(61), related=3)
    fixed = make_event(random.Random(62), related=1)
    await send(stack_info, topic, [orjson.dumps(too_related), b"{broken json"])
    strict = settings_for(stack_info, topic, group_id=group, max_related=2)
    async with running(Persister(strict, engine)):
        await wait_persisted(engine, group, topic, {0: 2})
    assert await counts(engine) == (0, 0, 2)
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": stack_info.kafka_bootstrap_servers,
        "DATABASE_URL": stack_info.database_url,
    }
    code, out = await asyncio.to_thread(cli, "dlq", "list", "--topic", topic, "--json", env=env)
    assert code == 0, out
    listed = orjson.loads(out)
    assert [(d["offset"], d["error_class"]) for d in listed] == [
        (1, "InvalidJson"),
        (0, "InvalidEnvelope"),
    ]
    assert listed[0]["value"] == "{broken json"
    ids = {d["offset"]: d["id"] for d in listed}

    # The fix: the limit is raised (default settings) and the broken one rewritten.
    fixed_file = tmp_path / "fixed.json"
    fixed_file.write_bytes(orjson.dumps(fixed))
    for args in (
        ("--id", str(ids[0])),
        ("--id", str(ids[0])),
        ("--id", str(ids[1]), "--value-file", str(fixed_file)),
    ):
        code, out = await asyncio.to_thread(cli, "dlq", "replay", *args, env=env)
        assert code == 0 and "sent 1" in out, out
    ends = await end_offsets(stack_info, topic, 1)
    assert ends == {0: 5}
    async with running(Persister(settings_for(stack_info, topic, group_id=group), engine)):
        await wait_persisted(engine, group, topic, ends)
    assert await counts(engine) == (2, 1 + 3 + 1 + 1, 2)

    code, out = await asyncio.to_thread(cli, "dlq", "replay", "--id", "999999", env=env)
    assert code == 2 and "no dead letter with id 999999" in out, out
