"""What one attempt at a partition's unsent dead letters came to, and how it
is reported: each problem logged once, shown by `/readyz` while it lasts,
and ended with one line. Pure, but for the logging."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Row

from worker.core.conditions import Conditions
from worker.core.topic_partition import TP
from worker.pipeline.dead_letters.records import Outgoing, reduced

RETRY_BASE_S, RETRY_CAP_S = 0.5, 5.0  # waits up to 1 s, 2 s, 4 s, then 5 s


@dataclass(frozen=True)
class Inflight:
    """A send no attempt has seen answered yet."""

    tp: TP
    record: Outgoing
    future: asyncio.Future[Any]
    sent_at: float


@dataclass
class Outcome:
    """What one attempt at a partition's unsent dead letters came to."""

    sent: int = 0
    reduced: int = 0
    # The first failure, if any; the failed dead letters are retried.
    error: str | None = None
    # A failure after which a dead letter may be on the topic nonetheless.
    unsure: bool = False
    # The broker refused a record outright (see the sender's REFUSED).
    refused: bool = False
    # A send went unanswered for the sender's STUCK_S.
    stuck: bool = False
    # The first dead letter that does not fit the topic even reduced.
    unfit: str | None = None

    @property
    def done(self) -> bool:
        return self.error is None and self.unfit is None

    def failed(self, error: str, unsure: bool) -> None:
        self.error = self.error or error
        self.unsure = self.unsure or unsure


def report(conditions: Conditions, tp: TP, topic: str, outcome: Outcome) -> None:
    """Start or end the partition's conditions: each is logged once, and
    shown by `/readyz` while it lasts (the events themselves keep flowing)."""
    where = f"{tp[0]}[{tp[1]}]"
    if outcome.error is None:
        conditions.clear(f"{where} send", f"{where}: dead letters reach {topic} again")
    else:
        reason = (
            f"{where}: dead letters not sent to {topic}: {outcome.error}; "
            f"retrying with a jittered backoff of up to {RETRY_CAP_S:.0f} s "
            "(they are in the persister_dead_letters table)"
        )
        conditions.raise_(f"{where} send", reason, logging.WARNING)
    if outcome.unfit is None:
        conditions.clear(f"{where} unfit", f"{where}: every dead letter fits {topic} again")
    else:
        conditions.raise_(f"{where} unfit", f"{where}: {outcome.unfit}")


def unfit_reason(row: Row[Any], group_id: str, topic: str, limit: int) -> str:
    size = reduced(row, group_id).size
    return (
        f"the dead letter of offset {row.offset} does not fit {topic} even reduced "
        f"({size} bytes, the topic takes {limit}); raise the topic's max.message.bytes, "
        f"it is retried with a jittered backoff of up to {RETRY_CAP_S:.0f} s"
    )
