"""/metrics counts the asyncio tasks alive, so a leak shows as growth."""

from __future__ import annotations

import asyncio
import re

from prometheus_client import generate_latest

from worker.core import metrics


def tasks_metric() -> float:
    text = generate_latest(metrics.registry).decode()
    found = re.search(r"^persister_asyncio_tasks (\S+)$", text, flags=re.MULTILINE)
    assert found is not None, "persister_asyncio_tasks is not exported"
    return float(found.group(1))


async def test_the_gauge_counts_tasks_alive_in_the_loop() -> None:
    before = tasks_metric()
    stop = asyncio.Event()
    extra = [asyncio.create_task(stop.wait()) for _ in range(5)]
    await asyncio.sleep(0)
    assert tasks_metric() == before + 5
    stop.set()
    await asyncio.gather(*extra)
    assert tasks_metric() == before


def test_outside_a_loop_it_reads_zero() -> None:
    assert tasks_metric() == 0
