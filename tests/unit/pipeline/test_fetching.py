"""The fetch loop's bookkeeping of what it fetched (`worker.pipeline.fetching`)."""

from __future__ import annotations

from aiokafka import AIOKafkaConsumer

from worker.pipeline.batching import Accumulator, Triggers
from worker.pipeline.fetching import Fetching
from worker.pipeline.partitions import Owned


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
