"""`persister status` as an operator reads it: who owns which partition,
unknown groups and missing topics, and `--watch` through a database outage."""

from __future__ import annotations

import asyncio
import os
import pty
import re
import select
import subprocess
import sys
import time
from pathlib import Path

import orjson
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.integration.support import (
    create_topic,
    end_offsets,
    send,
    settings_for,
    unique,
    wait_persisted,
)
from tests.integration.workers import WorkerPool, run_command, worker_env
from worker.core import metrics
from worker.core.kafka_admin import KafkaView
from worker.devtools.loadgen import messages
from worker.devtools.stack import LocalStack, StackInfo
from worker.pipeline.offset_fence import advance_offset
from worker.services.group_lag import publish


def status(info: StackInfo, *args: str, topics: str = "events") -> tuple[int, str, str]:
    env = {"PERSISTER_TOPICS": topics, "COLUMNS": "80"}
    return run_command(info, "status", *args, env=env)


async def test_status_maps_each_partition_to_its_member(
    stack_info: StackInfo, engine: AsyncEngine, tmp_path: Path
) -> None:
    topic = unique("status")
    group = f"group-{topic}"
    await create_topic(stack_info, topic, 4)
    await send(stack_info, topic, messages(40, seed=5), partition=None)
    async with WorkerPool(worker_env(stack_info, topic, group), tmp_path / "w") as pool:
        await asyncio.to_thread(pool.start, 2)
        ends = await end_offsets(stack_info, topic, 4)
        await wait_persisted(engine, group, topic, ends)

        async def settled() -> dict[str, object]:
            while True:
                code, out, err = await asyncio.to_thread(
                    status, stack_info, "--group", group, "--json", topics=f"{topic},nosuch-topic"
                )
                assert (code, err) == (0, "")
                document: dict[str, object] = orjson.loads(out)
                members = document["members"]
                assert isinstance(members, list)
                if len(members) == 2 and all(m["partitions"] for m in members):
                    return document
                await asyncio.sleep(0.5)

        document = await asyncio.wait_for(settled(), 30)
        pids = {pool.pid(0), pool.pid(1)}
    members = document["members"]
    partitions = document["partitions"]
    assert isinstance(members, list) and isinstance(partitions, list)
    hostname = os.uname().nodename
    assert {m["client_id"] for m in members} == {f"{hostname}:{pid}" for pid in pids}
    owner = {p: m["client_id"] for m in members for p in m["partitions"]}
    assert len(owner) == 4
    assert {f"{p['topic']}[{p['partition']}]": p["member"] for p in partitions} == owner
    assert [(p["stored"], p["end"], p["lag"]) for p in partitions] == [
        (ends[i], ends[i], 0) for i in range(4)
    ]
    assert document["missing_topics"] == ["nosuch-topic"]
    leader = document["leader"]
    assert isinstance(leader, dict) and leader["holder"] in {m["client_id"] for m in members}


def test_status_of_an_unknown_group_says_so(stack_info: StackInfo, engine: AsyncEngine) -> None:
    assert status(stack_info, "--group", "nobody-knows") == (
        3,
        "",
        "group 'nobody-knows' is unknown: no members, no stored or committed offsets "
        "(check --group or PERSISTER_GROUP_ID)\n",
    )


def read_for(fd: int, seconds: float) -> str:
    out = b""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                out += os.read(fd, 65536)
            except OSError:
                break
    return out.decode(errors="replace")


def wait_for_text(fd: int, needle: str, timeout_s: float) -> str:
    seen = ""
    deadline = time.monotonic() + timeout_s
    while needle not in seen:
        assert time.monotonic() < deadline, f"{needle!r} not shown in: {seen[-2000:]}"
        seen += read_for(fd, 0.5)
    return seen


def test_watch_goes_on_through_a_database_restart(
    local_stack: LocalStack, stack_info: StackInfo
) -> None:
    topic = unique("watch")
    asyncio.run(create_topic(stack_info, topic, 1))
    group = f"group-{topic}"
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("PERSISTER_") and k not in ("DATABASE_URL", "KAFKA_BOOTSTRAP_SERVERS")
    }
    env |= {
        "KAFKA_BOOTSTRAP_SERVERS": stack_info.kafka_bootstrap_servers,
        "DATABASE_URL": stack_info.database_url,
        "PERSISTER_TOPICS": topic,
        "PERSISTER_GROUP_ID": group,
        "COLUMNS": "100",
        "TERM": "xterm",
    }
    controller, terminal = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "worker", "status", "--watch"],
        env=env,
        stdin=terminal,
        stdout=terminal,
        stderr=terminal,
        close_fds=True,
    )
    os.close(terminal)
    try:
        wait_for_text(controller, f"group '{group}'", 30)
        local_stack.stop_postgres()
        try:
            shown = wait_for_text(controller, "unreachable", 30)
            assert "; retrying" in shown
            assert proc.poll() is None
        finally:
            local_stack.start_postgres()
        # Back: the table again, without the problem line.
        after = wait_for_text(controller, f"group '{group}'", 30)
        assert proc.poll() is None
        assert "Traceback" not in after
    finally:
        proc.send_signal(2)  # Ctrl-C: how an operator leaves it
        code = proc.wait(30)
        os.close(controller)
    assert code == 0


async def test_with_a_topic_pattern_status_and_the_lag_gauge_show_every_matching_topic(
    stack_info: StackInfo, engine: AsyncEngine
) -> None:
    """The topics the pattern matches, as the workers consume them: also one
    the group has stored nothing for yet, and not the default topic list."""
    prefix = unique("pattern")
    first, second = f"{prefix}-a", f"{prefix}-b"
    group = f"group-{prefix}"
    await create_topic(stack_info, first, 2)
    await create_topic(stack_info, second, 1)
    await send(stack_info, first, messages(5, seed=1), partition=0)
    await send(stack_info, first, messages(3, seed=2), partition=1)
    await send(stack_info, second, messages(4, seed=3), partition=0)
    async with engine.begin() as conn:
        await advance_offset(conn, group, (first, 0), None, 2)
    pattern = f"{re.escape(prefix)}-.*"
    env = {"PERSISTER_TOPIC_PATTERN": pattern, "COLUMNS": "80"}

    code, out, err = await asyncio.to_thread(
        run_command, stack_info, "status", "--group", group, "--json", env=env
    )
    assert (code, err) == (0, "")
    document = orjson.loads(out)
    assert [
        (p["topic"], p["partition"], p["stored"], p["end"], p["lag"])
        for p in document["partitions"]
    ] == [(first, 0, 2, 5, 3), (first, 1, None, 3, 3), (second, 0, None, 4, 4)]
    assert (document["lag"], document["missing_topics"]) == (10, [])

    settings = settings_for(stack_info, first, topic_pattern=pattern, group_id=group)
    async with KafkaView.open(settings) as view:
        assert await publish(view, engine, settings, "retention") == 3
    text = generate_latest(metrics.registry).decode()
    gauge = {
        (s.labels["topic"], s.labels["partition"]): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "persister_group_lag_records" and s.labels["topic"].startswith(prefix)
    }
    assert gauge == {(first, "0"): 3.0, (first, "1"): 3.0, (second, "0"): 4.0}
