"""What a worker's log says: one line per dead letter, JSON fields, JSON to
the end through a crash, and few lines while the broker is down."""

from __future__ import annotations

import asyncio
import os
import re
import sys
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.integration.support import create_topic, end_offsets, send, unique
from tests.integration.test_faults import (
    assert_exact,
    no_crashes,
    tally,
    wait_ready,
    wait_stored,
)
from tests.integration.workers import WorkerPool, worker_env
from worker.devtools.loadgen import messages
from worker.devtools.stack import LocalStack, StackInfo
from worker.services.table_partitions import drop_expired

HARNESS = "=== "


def json_lines(text: str) -> list[dict[str, Any]]:
    """Every line the worker wrote, parsed (the harness's own lines left out)."""
    parsed = []
    for line in text.splitlines():
        if line.startswith(HARNESS):
            continue
        value = orjson.loads(line)
        assert isinstance(value, dict), line
        parsed.append(value)
    return parsed


async def test_json_lines_carry_fields_and_one_line_per_dead_letter(
    stack_info: StackInfo, engine: AsyncEngine, tmp_path: Path
) -> None:
    topic, partitions = unique("json-logs"), 2
    group = f"group-{topic}"
    await create_topic(stack_info, topic, partitions)
    values = list(messages(400, seed=71, invalid_every=40))
    positions = await send(stack_info, topic, values)
    expected = tally(values, positions)
    assert expected.dead_letters == 10
    ends = await end_offsets(stack_info, topic, partitions)
    env = worker_env(stack_info, topic, group, log_format="json", log_level="DEBUG")

    async with WorkerPool(env, tmp_path / "workers") as pool:
        pool.start(1)
        await wait_stored(engine, group, topic, ends, 60, pool.tail)
        no_crashes(pool)
        assert await asyncio.to_thread(pool.stop_all) == [0], pool.tail()
        lines = json_lines(pool.logs(0))

    letters = [line for line in lines if "dead-lettered" in line["message"]]
    assert sorted((line["partition"], line["offset"]) for line in letters) == list(
        expected.bad_positions
    )
    assert all(line["topic"] == topic and line["level"] == "WARNING" for line in letters)
    assert all(line["error_class"] for line in letters)
    starts = [line for line in lines if "no stored offset" in line["message"]]
    assert sorted((line["topic"], line["partition"]) for line in starts) == [
        (topic, 0),
        (topic, 1),
    ]
    wrote = [line for line in lines if " wrote " in line["message"]]
    # Each record is in exactly one committed batch.
    assert sum(line["batch_size"] for line in wrote) == len(values)
    assert {line["offset"] for line in wrote if line["partition"] == 0} >= {ends[0]}
    assert all(line["duration_s"] >= 0 for line in wrote)
    assert all(
        re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", line["time"]) for line in lines
    )


CRASHING_WORKER = """
import sys
import time

from worker.pipeline import writer


async def crash(*args, **kwargs):
    raise RuntimeError("injected crash")


writer.BatchWriter.write = crash
from worker.cli import run_app

sys.exit(run_app(["run"]))
"""


async def test_json_logs_stay_json_through_a_crash(stack_info: StackInfo, tmp_path: Path) -> None:
    topic = unique("json-crash")
    await create_topic(stack_info, topic, 1)
    await send(stack_info, topic, list(messages(5, seed=72)))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PERSISTER_")}
    env.update(worker_env(stack_info, topic, f"group-{topic}", log_format="json"))
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        CRASHING_WORKER,
        env=env,
        cwd=tmp_path,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), 90)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    text = out.decode()
    assert proc.returncode == 1, text
    lines = json_lines(text)
    assert lines[-1]["level"] == "ERROR", text
    assert "RuntimeError: injected crash" in lines[-1]["message"], text
    assert "injected crash" in lines[-1]["exception"], text


def shape(line: str) -> str:
    """A text log line without its time and digits: the same condition
    repeating has one shape."""
    message = line.split(" ", 1)[1] if " " in line else line
    return re.sub(r"\d+", "#", message)


async def test_a_broker_restart_logs_a_handful_of_lines(
    local_stack: LocalStack, stack_info: StackInfo, engine: AsyncEngine, tmp_path: Path
) -> None:
    topic, partitions = unique("quiet-restart"), 2
    group = f"group-{topic}"
    await create_topic(stack_info, topic, partitions)
    env = worker_env(stack_info, topic, group)
    # Expired partitions other tests left would be dropped by this worker's
    # trimmer meanwhile, one line each: not what this test counts.
    await drop_expired(engine, datetime.now(UTC) - timedelta(days=7), None, pause_factor=0)

    async with WorkerPool(env, tmp_path / "workers") as pool:
        pool.start(1)
        await wait_ready(pool, [0], 60, marker="no stored offset")
        before = len(pool.current_log(0).splitlines())
        try:
            await asyncio.to_thread(local_stack.stop_kafka)
            await asyncio.sleep(15)  # the broker is down: what does the worker log?
            assert pool.alive() == [0], pool.tail()
        finally:
            await asyncio.to_thread(local_stack.start_kafka)
        values = list(messages(50, seed=73))
        await send(stack_info, topic, values)
        ends = await end_offsets(stack_info, topic, partitions)
        await wait_stored(engine, group, topic, ends, 90, pool.tail)
        during = pool.current_log(0).splitlines()[before:]
        no_crashes(pool)
        assert await asyncio.to_thread(pool.stop_all) == [0], pool.tail()

    shapes = Counter(shape(line) for line in during if not line.startswith(HARNESS))
    print("\n".join(f"{n:3d} {s}" for s, n in shapes.most_common()))
    assert max(shapes.values()) <= 3, shapes
    assert sum(shapes.values()) <= 30, shapes


async def test_a_missing_topic_is_one_line_and_is_consumed_once_created(
    stack_info: StackInfo, engine: AsyncEngine, tmp_path: Path
) -> None:
    topic, partitions = unique("missing-topic"), 2
    group = f"group-{topic}"
    env = worker_env(stack_info, topic, group, metadata_max_age_s="1")

    async with WorkerPool(env, tmp_path / "workers") as pool:
        pool.start(1)
        await wait_ready(pool, [0], 60, marker="does not exist yet")
        await asyncio.sleep(3)  # three metadata refreshes with the topic still missing
        await create_topic(stack_info, topic, partitions)
        values = list(messages(300, seed=74, invalid_every=30))
        positions = await send(stack_info, topic, values)
        ends = await end_offsets(stack_info, topic, partitions)
        assert sum(ends.values()) == len(values)
        await wait_stored(engine, group, topic, ends, 60, pool.tail)
        no_crashes(pool)
        signalled = time.monotonic()
        assert await asyncio.to_thread(pool.stop_all) == [0], pool.tail()
        assert time.monotonic() - signalled < 10, pool.tail()
        missing = pool.grep(f"topic {topic} does not exist yet")
        created = pool.grep(f"topic {topic} exists now; consuming it")
        errors = pool.grep(" ERROR ")

    assert len(missing) == 1, pool.tail()
    assert len(created) == 1, pool.tail()
    assert errors == []
    await assert_exact(engine, group, topic, tally(values, positions), ends)


async def test_a_worker_without_its_topic_stops_at_once_on_sigterm(
    stack_info: StackInfo, tmp_path: Path
) -> None:
    topic = unique("never-created")
    env = worker_env(stack_info, topic, f"group-{topic}")

    async with WorkerPool(env, tmp_path / "workers") as pool:
        pool.start(1)
        await wait_ready(pool, [0], 60, marker="does not exist yet")
        signalled = time.monotonic()
        assert await asyncio.to_thread(pool.terminate, 0) == 0, pool.tail()
        assert time.monotonic() - signalled < 10, pool.tail()
        assert len(pool.grep("does not exist yet")) == 1, pool.tail()
