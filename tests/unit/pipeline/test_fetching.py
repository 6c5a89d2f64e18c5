"""The fetch loop's bookkeeping of what it fetched (`worker.pipeline.fetching`)."""

from __future__ import annotations

from aiokafka import AIOKafkaConsumer, TopicPartition

from worker.pipeline.batching import Accumulator, Triggers
from worker.pipeline.fetching import Fetching, log_end
from worker.pipeline.partition_state import Owned
from worker.pipeline.progress import Progress


async def test_a_partition_the_consumer_no_longer_has_is_left_for_its_revoke() -> None:
    """A deleted topic leaves the consumer's assignment before the rebalance
    that revokes it: the partition, still owned and ready, is skipped, where
    asking the consumer for its log end would raise and stop the worker."""
    consumer = AIOKafkaConsumer(bootstrap_servers="127.0.0.1:9")
    owned = {("gone", 0): Owned(stored=100, ready=True)}
    accumulator = Accumulator(Triggers(1000, 1_000_000, 1.0))
    fetching = Fetching(accumulator, owned, lambda: consumer, fetch_retry_s=60)

    try:
        fetching._take({})
    finally:
        await consumer.stop()

    assert accumulator.buffered_bytes == 0


async def test_progress_reports_no_lag_for_a_partition_the_consumer_no_longer_has() -> None:
    """The same window, seen by the gauges: the report between fetches skips
    the partition, where asking for its log end stopped the worker."""
    consumer = AIOKafkaConsumer(bootstrap_servers="127.0.0.1:9")
    owned = {("gone", 0): Owned(stored=100, ready=True)}
    try:
        Progress().report(consumer, owned, n_paused=0, events=0)
        assert log_end(consumer, TopicPartition("gone", 0)) is None
    finally:
        await consumer.stop()
