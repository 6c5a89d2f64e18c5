"""What operators ask of a group's partitions, kept in `partition_controls`
(the database is the truth, so it outlives rebalances and restarts): pause
a topic or a partition, and reload a stored offset that a replay moved under
a live worker. Workers read the group's rows every `POLL_EVERY_S`, each read
bounded by READ_TIMEOUT_S (the consumer loop waits for it); a read that fails
or times out is one WARNING while that lasts (and `/readyz` 503: an
operator's pause may not apply), retried with a backoff of up to
RETRY_CAP_S, and one INFO when a read works again."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from schemas.tables import partition_controls
from worker.core.conditions import Conditions
from worker.core.retry import backoff_s
from worker.core.sql_dialect import dialect_insert
from worker.core.topic_partition import TP

logger = logging.getLogger(__name__)

POLL_EVERY_S = 1.0
# A read of the controls that takes longer is given up: the consumer loop
# waits on it, so it must not hang there (the read is one small query).
READ_TIMEOUT_S = 2.0
# After failed reads, the next waits up to this long (jittered), so a
# database that does not answer holds the loop up a fraction of the time.
RETRY_CAP_S = 10.0
WHOLE_TOPIC = -1


@dataclass(frozen=True)
class Control:
    topic: str
    partition: int
    paused: bool
    reload: int


def paused_among(controls: Iterable[Control], partitions: Iterable[TP]) -> set[TP]:
    """Which of `partitions` are paused, by their own row or their topic's."""
    paused = {(c.topic, c.partition) for c in controls if c.paused}
    return {
        (topic, partition)
        for topic, partition in partitions
        if (topic, partition) in paused or (topic, WHOLE_TOPIC) in paused
    }


async def read_controls(conn: AsyncConnection, group: str) -> list[Control]:
    c = partition_controls.c
    rows = await conn.execute(
        select(c.topic, c.partition, c.paused, c.reload).where(c.group_id == group)
    )
    return [Control(r.topic, r.partition, bool(r.paused), int(r.reload)) for r in rows]


def _upsert(
    conn: AsyncConnection,
    group: str,
    topic: str,
    partition: int,
    values: dict[str, Any],
    on_conflict: dict[str, Any] | None = None,
) -> Any:
    """Insert the group's row for `topic`'s `partition` with `values`, or
    where it exists set `on_conflict` (`values` by default) and `updated`; in
    `conn`'s dialect (PostgreSQL or SQLite)."""
    c = partition_controls.c
    stmt = dialect_insert(conn, partition_controls).values(
        group_id=group, topic=topic, partition=partition, **values
    )
    return stmt.on_conflict_do_update(
        index_elements=[c.group_id, c.topic, c.partition],
        set_={**(values if on_conflict is None else on_conflict), "updated": func.now()},
    )


async def set_paused(
    engine: AsyncEngine, group: str, topic: str, partition: int | None, paused: bool
) -> None:
    """Pause or resume a partition (None: the whole topic). Resuming the
    whole topic resumes each of its partitions too."""
    c = partition_controls.c
    where = WHOLE_TOPIC if partition is None else partition
    async with engine.begin() as conn:
        if not paused and partition is None:
            await conn.execute(
                update(partition_controls)
                .where(c.group_id == group, c.topic == topic)
                .values(paused=False, updated=func.now())
            )
            return
        await conn.execute(_upsert(conn, group, topic, where, {"paused": paused}))


async def topic_paused(engine: AsyncEngine, group: str, topic: str) -> bool:
    """Whether `topic` is paused as a whole."""
    async with engine.connect() as conn:
        controls = await read_controls(conn, group)
    return any(c.topic == topic and c.partition == WHOLE_TOPIC and c.paused for c in controls)


async def resume_one_of_paused_topic(
    engine: AsyncEngine, group: str, topic: str, partitions: Iterable[int], resumed: int
) -> None:
    """Resume one partition of a topic paused as a whole: the topic's pause
    becomes a pause of each of its other `partitions` (one transaction)."""
    async with engine.begin() as conn:
        for partition in sorted({*partitions, resumed, WHOLE_TOPIC}):
            paused = partition not in (resumed, WHOLE_TOPIC)
            await conn.execute(_upsert(conn, group, topic, partition, {"paused": paused}))


async def request_reload(
    conn: AsyncConnection, group: str, topic: str, partitions: Iterable[int]
) -> None:
    """Tell the owners of `partitions` to reload their stored offsets (in
    the caller's transaction, with the move itself)."""
    c = partition_controls.c
    for partition in partitions:
        upsert = _upsert(conn, group, topic, partition, {"reload": 1}, {"reload": c.reload + 1})
        await conn.execute(upsert)


class ControlWatcher:
    """A worker's view of its group's controls, refreshed at most every
    `POLL_EVERY_S`. A failed read keeps the last view and is reported (see
    the module docstring)."""

    def __init__(self, engine: AsyncEngine, group: str) -> None:
        self.engine = engine
        self.group = group
        self.controls: list[Control] = []
        self.problems = Conditions("controls")
        self._reloads: dict[TP, int] | None = None
        self._next_read_at = 0.0
        self._failures = 0

    async def refresh(self) -> list[TP]:
        """Re-read if due; returns the partitions whose reload was raised
        since the last read (none on the first)."""
        now = time.monotonic()
        if now < self._next_read_at:
            return []
        self._next_read_at = now + POLL_EVERY_S
        try:
            async with asyncio.timeout(READ_TIMEOUT_S):
                async with self.engine.connect() as conn:
                    self.controls = await read_controls(conn, self.group)
        except (SQLAlchemyError, OSError, TimeoutError) as exc:
            self._failures += 1
            wait_s = backoff_s(self._failures, POLL_EVERY_S, RETRY_CAP_S)
            self._next_read_at = time.monotonic() + wait_s
            self._failed(exc)
            return []
        self._failures = 0
        self.problems.clear("read", f"partition controls of group {self.group!r} read again")
        reloads = {(c.topic, c.partition): c.reload for c in self.controls}
        before, self._reloads = self._reloads, reloads
        if before is None:
            return []
        return sorted(tp for tp, n in reloads.items() if before.get(tp, 0) != n)

    def _failed(self, exc: BaseException) -> None:
        # Once while it lasts, whatever each attempt's error says.
        if "read" in self.problems:
            logger.debug("controls not read: %r", exc)
            return
        why = f"no answer within {READ_TIMEOUT_S:g} s"
        if not isinstance(exc, TimeoutError):
            inner = getattr(exc, "orig", None) or exc.__cause__ or exc
            why = f"{type(inner).__name__}: {(str(inner).strip().splitlines() or [''])[0]}"
        self.problems.raise_(
            "read",
            f"partition controls of group {self.group!r} not read ({why}): pauses and "
            "reloads operators ask for may not apply; retrying with a jittered backoff "
            f"of up to {RETRY_CAP_S:g} s",
            logging.WARNING,
        )

    def paused(self, partitions: Iterable[TP]) -> set[TP]:
        return paused_among(self.controls, partitions)
