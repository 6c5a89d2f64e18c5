"""The one retry policy: exponential backoff with full jitter, capped. No I/O.

Every loop that waits before trying again what failed (a batch write, joining
the group, the database at start-up, sending dead letters, a retriable Kafka
admin call, publishing the group's lag) waits `backoff_s`, each with its own
base and cap. The jitter spreads the replicas of a group that failed together
(a database restart) instead of sending them back all at once.
"""

from __future__ import annotations

import random

# 2**32 times any base is past every cap: the exponent stops growing there.
MAX_DOUBLINGS = 32


def backoff_s(attempt: int, base_s: float, cap_s: float, rng: random.Random | None = None) -> float:
    """The wait after `attempt` failures in a row (1 for the first): uniform
    between 0 and `base_s * 2**attempt`, at most `cap_s`."""
    ceiling = min(cap_s, base_s * 2 ** min(max(attempt, 0), MAX_DOUBLINGS))
    return (rng or random).uniform(0, ceiling)
