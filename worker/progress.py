"""What a worker reports about its progress, once per loop: the lag of each
partition it owns, how many it does not fetch, and whether a write has been
failing (for `/readyz`)."""

from __future__ import annotations

from aiokafka import AIOKafkaConsumer, TopicPartition

from worker import metrics
from worker.fetching import log_end
from worker.partitions import TP, Owned


def report(consumer: AIOKafkaConsumer, owned: dict[TP, Owned], n_paused: int) -> None:
    """Gauges and readiness."""
    metrics.paused_partitions.set(n_paused)
    failing = [o.failing_since for o in owned.values() if o.failing_since is not None]
    metrics.readiness.stuck_since = min(failing, default=None)
    for tp, state in owned.items():
        end = log_end(consumer, TopicPartition(*tp))
        if end is not None and state.stored is not None:
            metrics.lag.labels(tp[0], str(tp[1])).set(end - state.stored)
