"""Which unmarked dead letters of a partition may be on the dead-letter topic
already, because the database lost what this worker had written.

A database that goes back in time (a failover to an asynchronous standby
that had not received the last commits, a restore) loses dead letters this
worker sent and marked, or only their marks. The worker writes them again
(after its fence fails) or finds them unmarked: sent as they are, they would
be on the topic twice. So the sender remembers, for as long as it owns a
partition, which offsets it sent and how far its sends went; an unmarked row
among them is looked for on the topic before it is sent."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from worker.core.topic_partition import TP

# Offsets remembered as sent per partition; past it, the lower half is
# forgotten (bounded memory; those rows are then only covered by `recheck`).
SENT_KEPT = 100_000
# A look on the topic starts this long before the first send of the rows in
# doubt (a record's timestamp is taken by the producer, a little later).
LOOK_MARGIN = timedelta(seconds=30)


@dataclass
class _Partition:
    # When this worker began sending the partition's dead letters: a look on
    # the topic for rows in doubt starts there.
    since: datetime
    # Offsets whose dead letter is on the topic (acknowledged, or found there).
    sent: set[int] = field(default_factory=set)
    # The highest offset handed to the producer, answered or not.
    tried: int = -1
    # When each offset was first handed to the producer (bounded as `sent`).
    tried_at: dict[int, datetime] = field(default_factory=dict)
    # Rows at or below this offset may be on the topic already (see `recheck`).
    doubt: int = -1


class Doubts:
    """Per owned partition: what this worker sent, and what is in doubt."""

    def __init__(self) -> None:
        self._partitions: dict[TP, _Partition] = {}

    def began(self, tp: TP) -> None:
        self._partitions.setdefault(tp, _Partition(datetime.now(UTC)))

    def release(self, tp: TP) -> None:
        self._partitions.pop(tp, None)

    def tried(self, tp: TP, offset: int) -> None:
        if (p := self._partitions.get(tp)) is not None:
            p.tried = max(p.tried, offset)
            p.tried_at.setdefault(offset, datetime.now(UTC))
            if len(p.tried_at) > SENT_KEPT:
                p.tried_at = dict(sorted(p.tried_at.items())[SENT_KEPT // 2 :])

    def sent(self, tp: TP, offsets: Iterable[int]) -> None:
        if (p := self._partitions.get(tp)) is None:
            return
        p.sent.update(offsets)
        if len(p.sent) > SENT_KEPT:
            p.sent = set(sorted(p.sent)[SENT_KEPT // 2 :])

    def recheck(self, tp: TP) -> None:
        """The stored offset was not what this worker wrote (a fence): every
        dead letter it tried to send may be written again, unmarked."""
        if (p := self._partitions.get(tp)) is not None:
            p.doubt = max(p.doubt, p.tried)

    def look_back(self, tp: TP, rows: Sequence[Any]) -> datetime | None:
        """How far back to look on the topic for `rows` (unmarked dead
        letters) if some may be there already; None if none may."""
        p = self._partitions.get(tp)
        if p is None:
            return None
        doubtful = [r.offset for r in rows if r.offset <= p.doubt or r.offset in p.sent]
        if not doubtful:
            return None
        # From their first send, not from when the partition was taken (maybe
        # days ago, on a busy topic more than a look can read in time).
        first = [p.tried_at.get(offset) for offset in doubtful]
        known = [t for t in first if t is not None]
        if len(known) < len(first):
            return p.since
        return max(p.since, min(known) - LOOK_MARGIN)
