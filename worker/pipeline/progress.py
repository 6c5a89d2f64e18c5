"""What a worker reports about its progress, once per loop: the lag of each
partition it owns, how many it does not fetch, whether a write has been
failing (for `/readyz`), and at most every `THROUGHPUT_EVERY_S` a line with
its throughput and lag."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, TopicPartition

from worker.core import metrics
from worker.core.topic_partition import TP
from worker.pipeline.batching import Record
from worker.pipeline.fetching import log_end
from worker.pipeline.partition_state import Owned, fields
from worker.pipeline.writer import Written

logger = logging.getLogger(__name__)

THROUGHPUT_EVERY_S = 60.0


def report_write(
    tp: TP, state: Owned, batch: list[Record], written: Written, next_offset: int, took_s: float
) -> None:
    """Metrics and lines for a batch just committed (`state` not yet updated)."""
    if batch:
        dead = {offset for offset, _ in written.rejected}
        metrics.observe_batch(
            len(batch),
            written.events,
            written.resources,
            written.rejected,
            took_s,
            # Each event's age, not the batch's: dead letters are no events.
            [r.timestamp for r in batch if r.offset not in dead],
            written.inserted,
            written.committed_at,
        )
    if state.failures and state.failing_since is not None:
        # Per partition, so DEBUG: `Retries` says once that writing works again.
        logger.debug(
            "%s[%d]: writing works again after %d failed attempts in %.1f s",
            *tp,
            state.failures,
            time.monotonic() - state.failing_since,
            extra=fields(tp, attempt=state.failures + 1),
        )
    logger.debug(
        "%s[%d]: wrote %d events up to offset %d",
        *tp,
        written.events,
        next_offset,
        extra=fields(tp, offset=next_offset, batch_size=len(batch), duration_s=round(took_s, 3)),
    )


@dataclass
class Throughput:
    """When to log the throughput line: every `every_s` at most, and only
    if events were written since the last one or some lag is left (an idle,
    caught-up replica stays quiet). No I/O."""

    every_s: float = THROUGHPUT_EVERY_S
    since: float | None = None
    events_then: int = 0

    def due(self, now: float, events: int, lag: int) -> tuple[int, float] | None:
        """(events written, seconds) since the last line, if one is due."""
        if self.since is None:
            self.since, self.events_then = now, events
            return None
        took_s = now - self.since
        if took_s < self.every_s:
            return None
        written = events - self.events_then
        self.since, self.events_then = now, events
        return (written, took_s) if written or lag else None


class Progress:
    def __init__(self, every_s: float = THROUGHPUT_EVERY_S) -> None:
        self.throughput = Throughput(every_s)

    def report(
        self, consumer: AIOKafkaConsumer, owned: dict[TP, Owned], n_paused: int, events: int
    ) -> None:
        """Gauges and readiness; `events`: written so far, in all."""
        metrics.paused_partitions.set(n_paused)
        failing = [o.failing_since for o in owned.values() if o.failing_since is not None]
        metrics.readiness.stuck_since = min(failing, default=None)
        lag = 0
        for tp, state in owned.items():
            end = log_end(consumer, TopicPartition(*tp))
            if end is not None and state.stored is not None:
                metrics.lag.labels(tp[0], str(tp[1])).set(end - state.stored)
                lag += end - state.stored
        due = self.throughput.due(time.monotonic(), events, lag)
        if due is not None:
            written, took_s = due
            rate = written / took_s if took_s else 0.0
            logger.info(
                "wrote %d events in %.0f s (%.0f events/s); lag %d records on %d partitions",
                written,
                took_s,
                rate,
                lag,
                len(owned),
                extra={"events": written, "events_per_s": round(rate, 1), "lag": lag},
            )
