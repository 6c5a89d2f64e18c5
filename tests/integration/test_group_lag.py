"""The group's lag, published by the trimmer leader, while no replica of
the group consumes."""

from __future__ import annotations

import asyncio
import re
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.integration.support import create_topic, send, unique, wait_until
from tests.integration.test_faults import wait_ready, wait_stored
from tests.integration.workers import WorkerPool, worker_env
from worker.devtools.loadgen import messages
from worker.devtools.stack import StackInfo


def scrape(port: int) -> dict[str, dict[tuple[str, str], float]]:
    """The lag series of one replica: name -> (topic, partition) -> value."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    found: dict[str, dict[tuple[str, str], float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in ("persister_group_lag_records", "persister_lag_records"):
                key = (sample.labels["topic"], sample.labels["partition"])
                found.setdefault(sample.name, {})[key] = sample.value
    return found


async def test_the_leader_publishes_every_partitions_lag_while_the_group_is_stopped(
    stack_info: StackInfo, engine: AsyncEngine, tmp_path: Path
) -> None:
    topic = unique("group-lag")
    group = f"group-{topic}"
    await create_topic(stack_info, topic, 3)
    for partition, n in ((0, 10), (1, 20), (2, 5)):
        await send(stack_info, topic, list(messages(n, seed=80 + partition)), partition)
    env = worker_env(stack_info, topic, group)

    async with WorkerPool(env, tmp_path / "workers") as pool:
        pool.start(1)
        await wait_stored(engine, group, topic, {0: 10, 1: 20, 2: 5}, 60, pool.tail)
        assert await asyncio.to_thread(pool.stop_all) == [0], pool.tail()

    # The group is stopped; more arrives.
    await send(stack_info, topic, list(messages(3, seed=90)), 0)
    await send(stack_info, topic, list(messages(7, seed=91)), 1)
    trimmer_only = {
        **env,
        "PERSISTER_SERVICES__EVENT_PERSISTER__ENABLED": "false",
        "PERSISTER_LEASE_TTL": "3s",
    }
    async with WorkerPool(trimmer_only, tmp_path / "trimmer") as pool:
        pool.start(1)
        await wait_ready(pool, [0], 60, marker="leading retention trimming")
        found = re.search(r"serving metrics on http://127\.0\.0\.1:(\d+)/", pool.logs(0))
        assert found is not None, pool.tail()
        port = int(found.group(1))
        expected = {(topic, "0"): 3.0, (topic, "1"): 7.0, (topic, "2"): 0.0}
        seen: dict[str, dict[tuple[str, str], float]] = {}

        async def published() -> bool:
            nonlocal seen
            seen = await asyncio.to_thread(scrape, port)
            return seen.get("persister_group_lag_records") == expected

        await wait_until(published, 30, f"the group's lag {expected}; seen {seen}")
        # No replica owns a partition, so none publishes its own lag.
        assert "persister_lag_records" not in seen
        assert await asyncio.to_thread(pool.stop_all) == [0], pool.tail()
