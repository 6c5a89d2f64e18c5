"""A partition's failed attempt (a write, an offset load, a seek): when it
tries again, and what is said about it.

Each partition retries on its own with the one backoff policy, but the lines
are per kind of failure, not per partition and attempt: one WARNING when a
failure starts (an ERROR, and `/readyz` 503, when only a person can fix it:
a refused login, a missing privilege or table), one INFO line when no
partition has it any more. Attempts are logged at DEBUG.
"""

from __future__ import annotations

import logging
import time

from worker.core.conditions import Conditions
from worker.core.errors import describe, needs_operator
from worker.core.retry import backoff_s
from worker.core.topic_partition import TP
from worker.pipeline.partition_state import RETRY_BASE_S, RETRY_CAP_S, Owned, fields

logger = logging.getLogger(__name__)


class Retries:
    def __init__(self) -> None:
        # Partitions whose last attempt failed, with the failure's wording.
        self._failing: dict[TP, str] = {}
        self._transient = Conditions("write_retry", unready=False)
        self._needs_operator = Conditions("needs_operator")

    def failed(self, tp: TP, state: Owned, doing: str, exc: BaseException) -> None:
        state.failures += 1
        now = time.monotonic()
        if state.failing_since is None:
            state.failing_since = now
        delay_s = backoff_s(state.failures, RETRY_BASE_S, RETRY_CAP_S)
        state.retry_at = now + delay_s
        # The driver's words, without SQLAlchemy's wrapping.
        first_line = describe(exc)[1][:300]
        logger.debug(
            "%s[%d]: %s failed (attempt %d, retry in %.1fs): %s: %s",
            *tp,
            doing,
            state.failures,
            delay_s,
            type(exc).__name__,
            first_line,
            extra=fields(tp, attempt=state.failures, retry_in_s=round(delay_s, 1)),
        )
        wording = f"{doing} failed: {type(exc).__name__}" + (
            f": {first_line}" if first_line else ""
        )
        if self._failing.get(tp) not in (None, wording):
            # Failing otherwise now: the old failure ends without a "works again".
            self._end(tp, said=False)
        self._failing[tp] = wording
        if wording in self._transient or wording in self._needs_operator:
            return
        retrying = (
            f"(first on {tp[0]}[{tp[1]}]); retrying with backoff, every {RETRY_CAP_S:.0f} s at most"
        )
        if needs_operator(exc):
            self._needs_operator.raise_(wording, f"{wording} {retrying} until fixed")
        else:
            self._transient.raise_(wording, f"{wording} {retrying}", logging.WARNING)

    def succeeded(self, tp: TP) -> None:
        """`tp` did what failed (or left): a failure no other partition has is over."""
        self._end(tp, said=True)

    def _end(self, tp: TP, said: bool) -> None:
        wording = self._failing.pop(tp, None)
        if wording is None or wording in self._failing.values():
            return
        resolved = f"{wording.split(' failed: ')[0]} works again" if said else None
        for conditions in (self._transient, self._needs_operator):
            conditions.clear(wording, resolved)
