"""The soak's steady load: events at a fixed rate, half of them older than
the retention (for the trimmer to delete), one in a thousand a bad message,
with running totals of what the database must end up holding."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from aiokafka import AIOKafkaProducer

from worker.devtools.loadgen import INVALID_MESSAGES, encode, make_event

BAD_EVERY = 1000
TICK_S = 0.5


@dataclass
class Load:
    bootstrap: str
    topic: str
    rate: float  # events per second
    # Events this much older than now are trimmed as soon as the trimmer runs.
    old_by: timedelta
    recent: int = 0
    recent_resources: int = 0
    old: int = 0
    bad: int = 0
    started: datetime = field(default_factory=lambda: datetime.now(UTC))
    _stop: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def sent(self) -> int:
        return self.recent + self.old + self.bad

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        rng = random.Random(1)
        producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap, acks="all", enable_idempotence=True, linger_ms=20
        )
        await producer.start()
        began = time.monotonic()
        try:
            while not self._stop.is_set():
                due = int((time.monotonic() - began) * self.rate) - self.sent
                # At most a second's worth at a time: a stop is heard soon
                # after a broker outage held the sends back.
                await self._send(producer, rng, min(due, int(self.rate)))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), TICK_S)
        finally:
            await producer.stop()

    async def _send(self, producer: AIOKafkaProducer, rng: random.Random, count: int) -> None:
        futures = []
        now = datetime.now(UTC)
        for _ in range(count):
            n = self.sent + 1
            if n % BAD_EVERY == 0:
                value = INVALID_MESSAGES[(n // BAD_EVERY) % len(INVALID_MESSAGES)]
                self.bad += 1
            elif n % 2:
                event = make_event(rng, occurred=now)
                self.recent += 1
                self.recent_resources += 1 + len(event["related"])
                value = encode(event)
            else:
                value = encode(make_event(rng, occurred=now - self.old_by))
                self.old += 1
            key = b"tombstone" if value is None else None
            futures.append(await producer.send(self.topic, value, key=key))
        for future in futures:
            await future
