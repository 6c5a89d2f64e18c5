"""Per-partition buffers and the flush triggers. Pure state, no I/O.

A partition's buffer holds fetched records in offset order. It is *due* when
the consumer has caught up with the partition (the last fetch reached the end
of its log: waiting would only add latency; `when_caught_up`, on by default),
or it holds `batch_size`
records, or `max_batch_bytes`, or its oldest record has waited
`flush_every_s`. Batches so grow with the load: while one is written, what
arrives meanwhile queues up and goes in the next; with a backlog, the fetches
do not reach the log end and batches fill to `batch_size`. A flush takes a
batch off the front with `peek` and removes it with `consume` only after the
batch is durably written, so a failed write leaves the buffer exactly as it
was.

The consumer's position can run ahead of the last record: commit and abort
markers of transactional producers, aborted batches and compacted records
take offsets but are never returned. `add` takes that position, and a batch
that empties the buffer stores it (`next_offset`), so the stored offset
reaches the log end; a buffer with no records but a position ahead of the
stored offset is due like one holding records, to write the offset alone.
"""

from __future__ import annotations

from bisect import bisect_right
from collections import deque
from collections.abc import Container, Iterable
from dataclasses import dataclass, field
from itertools import accumulate, islice
from typing import Protocol

from worker.core.topic_partition import TP


class Record(Protocol):
    """What the batching and decoding need of a Kafka record (aiokafka's
    ConsumerRecord has it)."""

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def timestamp(self) -> int: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...


def record_size(record: Record) -> int:
    return len(record.value or b"") + len(record.key or b"")


@dataclass
class PartitionBuffer:
    records: deque[Record] = field(default_factory=deque)
    # Each record's key and value bytes, in step with `records`.
    sizes: deque[int] = field(default_factory=deque)
    nbytes: int = 0
    # Monotonic time the oldest buffered record arrived; None when empty.
    since: float | None = None
    # The next offset to accept: anything below it is a re-fetch of records
    # already buffered or written. None accepts anything (position unknown).
    position: int | None = None
    # The offset stored after the last batch written (or loaded at reset);
    # None if nothing is stored for the partition.
    base: int | None = None
    # The last fetch reached the end of the partition's log: nothing more is
    # waiting in Kafka, so waiting for more records only adds latency.
    caught_up: bool = False

    @property
    def advance_pending(self) -> bool:
        """No records, but the position moved past what is stored."""
        return not self.records and self.position is not None and self.position != self.base


@dataclass(frozen=True)
class Triggers:
    batch_size: int
    max_batch_bytes: int
    flush_every_s: float
    when_caught_up: bool = True


class Accumulator:
    """Buffers records per partition and decides when each is due a flush."""

    def __init__(self, triggers: Triggers) -> None:
        self.triggers = triggers
        self._buffers: dict[TP, PartitionBuffer] = {}
        self._nbytes = 0

    @property
    def buffered_bytes(self) -> int:
        """Key and value bytes held across all partitions."""
        return self._nbytes

    def buffered(self, tp: TP) -> int:
        buffer = self._buffers.get(tp)
        return len(buffer.records) if buffer else 0

    def partitions(self) -> list[TP]:
        """Partitions with records to write or an offset to store."""
        return [tp for tp, b in self._buffers.items() if b.records or b.advance_pending]

    def reset(self, tp: TP, position: int | None) -> None:
        """Forget what is buffered; accept records from `position` on, the
        offset stored for the partition."""
        self.forget(tp)
        self._buffers[tp] = PartitionBuffer(position=position, base=position)

    def rewind(self, tp: TP, position: int, now: float) -> None:
        """Forget what is buffered and accept records from `position` on,
        keeping the stored offset: the next batch moves it to wherever the
        records now start (a topic recreated under the worker)."""
        base = self._buffers[tp].base if tp in self._buffers else None
        self.forget(tp)
        self._buffers[tp] = buffer = PartitionBuffer(position=position, base=base)
        if buffer.advance_pending:
            buffer.since = now

    def position(self, tp: TP) -> int | None:
        """The next offset this partition accepts (None: not known yet)."""
        buffer = self._buffers.get(tp)
        return buffer.position if buffer else None

    def forget(self, tp: TP) -> None:
        buffer = self._buffers.pop(tp, None)
        if buffer is not None:
            self._nbytes -= buffer.nbytes

    def add(
        self,
        tp: TP,
        records: Iterable[Record],
        now: float,
        fetched_to: int | None = None,
        log_end: int | None = None,
    ) -> int:
        """Append records in offset order, skipping re-fetched ones; then move
        the position on to `fetched_to` (the consumer's position after this
        fetch) when it is further, and note whether it reached `log_end` (the
        end of the log as the fetch saw it). Returns how many were added."""
        buffer = self._buffers.setdefault(tp, PartitionBuffer())
        fresh = records if isinstance(records, list) else list(records)
        # A fetch's records come in offset order: only a head can be re-fetched.
        if buffer.position is not None and fresh and fresh[0].offset < buffer.position:
            fresh = [record for record in fresh if record.offset >= buffer.position]
        added = len(fresh)
        if added:
            sizes = list(map(record_size, fresh))
            buffer.records.extend(fresh)
            buffer.sizes.extend(sizes)
            size = sum(sizes)
            buffer.nbytes += size
            self._nbytes += size
            buffer.position = fresh[-1].offset + 1
        if fetched_to is not None and (buffer.position is None or fetched_to > buffer.position):
            buffer.position = fetched_to
        buffer.caught_up = (
            log_end is not None and buffer.position is not None and buffer.position >= log_end
        )
        if (added or buffer.advance_pending) and buffer.since is None:
            buffer.since = now
        return added

    def is_due(self, tp: TP, now: float) -> bool:
        buffer = self._buffers.get(tp)
        if buffer is None or not (buffer.records or buffer.advance_pending):
            return False
        t = self.triggers
        return (
            (t.when_caught_up and buffer.caught_up)
            or len(buffer.records) >= t.batch_size
            or buffer.nbytes >= t.max_batch_bytes
            or (buffer.since is not None and now - buffer.since >= t.flush_every_s)
        )

    def due(self, now: float) -> list[TP]:
        return [tp for tp in self._buffers if self.is_due(tp, now)]

    def next_due_in(self, now: float, exclude: Container[TP] = ()) -> float | None:
        """Seconds until the oldest buffered record makes its partition due
        (partitions in `exclude`, e.g. being flushed already, left out)."""
        waits = [
            max(0.0, b.since + self.triggers.flush_every_s - now)
            for tp, b in self._buffers.items()
            if b.since is not None and tp not in exclude
        ]
        return min(waits, default=None)

    def peek(self, tp: TP) -> list[Record]:
        """The next batch: at most `batch_size` records and `max_batch_bytes`
        (but always at least one record, however large)."""
        buffer = self._buffers.get(tp)
        if buffer is None:
            return []
        # The leading records whose running total of bytes fits, at least one.
        limit = min(len(buffer.records), self.triggers.batch_size)
        running = list(accumulate(islice(buffer.sizes, limit)))
        count = max(1, bisect_right(running, self.triggers.max_batch_bytes)) if limit else 0
        return list(islice(buffer.records, count))

    def next_offset(self, tp: TP, batch: list[Record]) -> int | None:
        """The offset to store after writing `batch` (from `peek`, with no
        await in between): past its last record, or the position when it
        takes every record buffered (markers and skipped batches after the
        last record included). None when there is nothing to store."""
        buffer = self._buffers.get(tp)
        if buffer is None:
            return None
        if len(batch) == len(buffer.records) and buffer.position is not None:
            return buffer.position
        return batch[-1].offset + 1 if batch else None

    def generation(self, tp: TP) -> object:
        """Changes when the buffer is reset or rewound: a batch peeked before
        that is not in the buffer any more."""
        return self._buffers.get(tp)

    def consume(
        self,
        tp: TP,
        count: int,
        stored: int | None = None,
        generation: object = None,
    ) -> None:
        """Remove the first `count` records after they were written, with
        `stored` the offset that write stored (default: past the last one).
        With the `generation` the batch was peeked in, a buffer reset since
        then only takes note of the stored offset."""
        buffer = self._buffers[tp]
        if generation is not None and generation is not buffer:
            if stored is not None:
                buffer.base = stored
            return
        if count:
            size = sum(islice(buffer.sizes, count))
            buffer.nbytes -= size
            self._nbytes -= size
            buffer.base = buffer.records[count - 1].offset + 1
            for _ in range(count):
                buffer.records.popleft()
                buffer.sizes.popleft()
        if stored is not None:
            buffer.base = stored
        # What is left arrived no earlier than `since`: keeping that clock errs
        # towards flushing it early, never late.
        if not buffer.records and not buffer.advance_pending:
            buffer.since = None
