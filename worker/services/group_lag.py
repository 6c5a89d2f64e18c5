"""The lag of every partition of the group, published by the replica that
leads retention trimming: the log end minus the stored offset, as
`persister_group_lag_records{topic,partition}`. The per-replica
`persister_lag_records` covers only the partitions a replica owns, so it
says nothing when no replica owns a partition (all of them down, stuck
before joining, drained); this one does, as long as one process runs the
trimmer. Published every PERSISTER_LEASE_TTL / 3 (the lease's renewal);
a replica that stops leading removes its series."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from aiokafka.errors import KafkaError
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from worker.core import metrics
from worker.core.conditions import Conditions
from worker.core.kafka_admin import KafkaView
from worker.core.retry import backoff_s
from worker.core.settings import Settings
from worker.operate.status import consumed_topics, gather

logger = logging.getLogger(__name__)
# After a failure: 2 s, 4 s, ... up to the publishing interval, jittered.
RETRY_BASE_S = 1.0


async def publish(view: KafkaView, engine: AsyncEngine, settings: Settings, lease: str) -> int:
    """Set the gauge for every partition of the topics the group consumes
    (with a pattern: the topics it matches) and of those it has stored
    offsets for; returns how many partitions."""
    topics = await consumed_topics(view, settings)
    status = await gather(view, engine, settings.group_id, topics, lease)
    for p in status.partitions:
        metrics.group_lag.labels(p.topic, str(p.partition)).set(p.lag)
    return len(status.partitions)


async def publish_while_leading(
    settings: Settings, engine: AsyncEngine, leading: Callable[[], bool], lease: str
) -> None:
    """Until cancelled."""
    every_s = settings.lease_ttl.total_seconds() / 3
    problems = Conditions("group_lag", unready=False)
    failures = 0
    while True:
        wait_s = every_s
        if leading():
            try:
                async with KafkaView.open(settings) as view:
                    while leading():
                        await asyncio.wait_for(publish(view, engine, settings, lease), every_s * 3)
                        problems.clear("publish", "the group's lag is published again")
                        failures = 0
                        await asyncio.sleep(every_s)
            except (KafkaError, SQLAlchemyError, OSError, TimeoutError) as exc:
                failures += 1
                wait_s = backoff_s(failures, RETRY_BASE_S, every_s)
                problems.raise_(
                    "publish",
                    f"the group's lag is not published: {exc!r}; retrying with a jittered "
                    f"backoff of up to {every_s:.0f} s",
                    logging.WARNING,
                )
        metrics.group_lag.clear()
        await asyncio.sleep(wait_s)
