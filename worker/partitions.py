"""What a worker keeps per assigned partition, and its retry policy. No I/O."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterable
from dataclasses import dataclass, field

TP = tuple[str, int]
RETRY_BASE_S = 0.2
RETRY_CAP_S = 30.0


def backoff_s(failures: int) -> float:
    """Exponential backoff with full jitter, capped."""
    return random.uniform(0, min(RETRY_CAP_S, RETRY_BASE_S * 2 ** min(failures, 16)))


@dataclass
class Owned:
    """A partition this worker is assigned."""

    # The offset the database holds for it: the fence for the next write.
    stored: int | None = None
    # False until the stored offset is loaded and the consumer seeked to it.
    ready: bool = False
    # False until dead letters a previous owner left unsent were checked
    # against the dead-letter topic (see worker.deadletter).
    dead_letters_checked: bool = False
    # Dead letters written but not yet sent to the dead-letter topic.
    dead_letters_unsent: bool = True
    failures: int = 0
    retry_at: float = 0.0
    # Monotonic time of the first of the current run of failed writes.
    failing_since: float | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


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
