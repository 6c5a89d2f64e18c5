"""What a worker keeps per assigned partition, and the base and cap of its
write retries (`worker.core.retry`). No I/O."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass, field

from worker.core.topic_partition import TP

RETRY_BASE_S = 0.2
RETRY_CAP_S = 30.0


@dataclass
class Owned:
    """A partition this worker is assigned."""

    # The offset the database holds for it: the fence for the next write.
    stored: int | None = None
    # False until the stored offset is loaded and the consumer seeked to it.
    ready: bool = False
    failures: int = 0
    retry_at: float = 0.0
    # Monotonic time of the first of the current run of failed writes.
    failing_since: float | None = None
    # Fetches that failed in a way waiting does not heal (see
    # `worker.pipeline.fetching`), and when to fetch the partition again.
    fetch_failures: int = 0
    fetch_retry_at: float = 0.0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def should_pause(self, held: int, two_batches: int, over_bound: bool, now: float) -> bool:
        """Stop fetching while not positioned yet, while waiting to retry a
        write or a fetch, while holding two batches already, and while all
        buffers together are over their bound and this one holds anything."""
        return (
            not self.ready
            or self.retry_at > now
            or self.fetch_retry_at > now
            or held >= two_batches
            or (over_bound and held > 0)
        )


@dataclass
class Stats:
    events: int = 0
    resources: int = 0
    dead_letters: int = 0
    batches: int = 0
    fence_failures: int = 0
    write_failures: int = 0
    isolation_attempts: int = 0
    rebalances: int = 0
    rebalance_pause_s: float = 0.0


def names(partitions: Iterable[TP]) -> str:
    return ", ".join(f"{t}[{p}]" for t, p in sorted(partitions)) or "nothing"


def fields(tp: TP, **more: object) -> dict[str, object]:
    """A log line's fields about `tp` (`extra=`; JSON logs show them)."""
    return {"topic": tp[0], "partition": tp[1], **more}
