"""Watching a group's progress from the database while things happen to it:
a sampler of stored offsets, the pauses in which no partition was written,
and the rate stored over a window; plus a producer that keeps sending until
told to stop. Measured, reported, never asserted on tightly: the machine is
shared."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy.ext.asyncio import AsyncEngine

from tests.integration.support import send, stored_offsets
from worker.devtools.loadgen import INVALID_MESSAGES, messages
from worker.devtools.stack import StackInfo

Position = tuple[int, int]  # (partition, offset)


@dataclass
class Sample:
    at: float  # monotonic
    stored: dict[int, int]
    # Per partition, the end offset of what had been sent.
    sent: dict[int, int]

    @property
    def total(self) -> int:
        return sum(self.stored.values())

    @property
    def produced(self) -> int:
        return sum(self.sent.values())

    def waiting(self, partition: int) -> bool:
        return self.sent.get(partition, 0) > self.stored.get(partition, 0)


@dataclass
class Sampler:
    """Stored offsets of (group, topic) every `every_s`, until stopped."""

    engine: AsyncEngine
    group: str
    topic: str
    producer: Producer
    every_s: float = 0.2
    samples: list[Sample] = field(default_factory=list)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self) -> None:
        while not self._stop.is_set():
            stored = await stored_offsets(self.engine, self.group, self.topic)
            sent = dict(self.producer.ends)
            self.samples.append(Sample(time.monotonic(), stored, sent))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.every_s)

    def stop(self) -> None:
        self._stop.set()

    def window(self, start: float, end: float) -> list[Sample]:
        return [s for s in self.samples if start <= s.at <= end]

    def longest_pause(self, start: float, end: float) -> float:
        """The longest time in [start, end] in which no partition's stored
        offset moved although records were waiting: the whole group stopped
        (a rebalance, or a fault)."""
        return _longest_stall(self.window(start, end), lambda s: s.total, lambda s: s.produced)

    def longest_partition_stall(self, start: float, end: float) -> float:
        """The longest time in [start, end] one partition with records
        waiting was not written (e.g. owned by a member that is gone)."""
        inside = self.window(start, end)
        partitions = {p for sample in inside for p in sample.sent}
        return max(
            (
                _longest_stall(
                    inside,
                    lambda s, p=p: s.stored.get(p, 0),  # type: ignore[misc]
                    lambda s, p=p: s.sent.get(p, 0),  # type: ignore[misc]
                )
                for p in partitions
            ),
            default=0.0,
        )

    def rate(self, start: float, end: float) -> float:
        """Offsets stored per second over [start, end]."""
        inside = self.window(start, end)
        if len(inside) < 2 or inside[-1].at <= inside[0].at:
            return 0.0
        return (inside[-1].total - inside[0].total) / (inside[-1].at - inside[0].at)

    def offered(self, start: float, end: float) -> float:
        """Records sent per second over [start, end]."""
        inside = self.window(start, end)
        if len(inside) < 2 or inside[-1].at <= inside[0].at:
            return 0.0
        return (inside[-1].produced - inside[0].produced) / (inside[-1].at - inside[0].at)


@dataclass
class Producer:
    """Sends chunks of generated messages (every `invalid_every`-th bad) at
    a steady pace until stopped; `values` and `positions` grow in step."""

    info: StackInfo
    topic: str
    chunk: int = 1000
    pause_s: float = 0.5
    invalid_every: int = 100
    seed: int = 0
    values: list[bytes | None] = field(default_factory=list)
    positions: list[Position] = field(default_factory=list)
    # Per partition, one past the last offset sent.
    ends: dict[int, int] = field(default_factory=dict)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self) -> None:
        n = 0
        while not self._stop.is_set():
            chunk = list(messages(self.chunk, seed=self.seed * 100_000 + n, invalid_every=0))
            # Bad messages at fixed places in the stream, whatever the chunk.
            for i in range(len(chunk)):
                if self.invalid_every and (len(self.values) + i + 1) % self.invalid_every == 0:
                    chunk[i] = _bad(len(self.values) + i + 1, self.invalid_every)
            sent = await send(self.info, self.topic, chunk)
            self.values.extend(chunk)
            self.positions.extend(sent)
            for partition, offset in sent:
                self.ends[partition] = max(self.ends.get(partition, 0), offset + 1)
            n += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.pause_s)

    def stop(self) -> None:
        self._stop.set()


def _bad(i: int, every: int) -> bytes | None:
    return INVALID_MESSAGES[(i // every) % len(INVALID_MESSAGES)]


def _longest_stall(
    samples: list[Sample], done: Callable[[Sample], int], sent: Callable[[Sample], int]
) -> float:
    """The longest run of samples in which `done` did not grow while it was
    below `sent`."""
    longest, since = 0.0, None
    previous: Sample | None = None
    for sample in samples:
        moved = previous is None or done(sample) > done(previous)
        if moved or sent(sample) <= done(sample):
            since = None
        elif since is None and previous is not None:
            since = previous.at
        if since is not None:
            longest = max(longest, sample.at - since)
        previous = sample
    return longest
