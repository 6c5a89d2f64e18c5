"""Watching worker replicas while their network is silent: their /readyz
answers (how fast, what they say) and the times of their log lines."""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime

from tests.integration.workers import WorkerPool

PROBE_EVERY_S = 0.25
# Longer than any answer we accept, so a slow answer is measured, not cut off.
PROBE_TIMEOUT_S = 5.0
_SERVING = re.compile(r"serving metrics on http://127\.0\.0\.1:(\d+)/metrics")


def metrics_port(pool: WorkerPool, slot: int) -> int | None:
    """The port the latest start of `slot` serves /readyz on (it was given port 0)."""
    found = _SERVING.findall(pool.current_log(slot))
    return int(found[-1]) if found else None


@dataclass(frozen=True)
class Probe:
    slot: int
    started: float  # wall clock, to compare with the workers' log times
    answered: float
    status: int  # 0: no HTTP answer at all
    body: str

    @property
    def took(self) -> float:
        return self.answered - self.started


def probe(slot: int, port: int) -> Probe:
    started = time.time()
    try:
        with urllib.request.urlopen(
            f"http://127.0.0.1:{port}/readyz", timeout=PROBE_TIMEOUT_S
        ) as response:
            status, body = response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        status, body = exc.code, exc.read().decode()
    except OSError as exc:
        status, body = 0, repr(exc)
    return Probe(slot, started, time.time(), status, body)


@dataclass
class Prober:
    """Asks every watched replica's /readyz every PROBE_EVERY_S, all at once, until stopped."""

    ports: dict[int, int]
    probes: list[Probe] = field(default_factory=list)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)

    def forget(self, slot: int) -> None:
        """Stop asking `slot` (before it is signalled to stop)."""
        self.ports.pop(slot, None)

    async def run(self) -> None:
        while not self._stop.is_set():
            asked = [asyncio.to_thread(probe, s, p) for s, p in list(self.ports.items())]
            self.probes.extend(await asyncio.gather(*asked))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), PROBE_EVERY_S)

    def stop(self) -> None:
        self._stop.set()

    def unanswered(self, start: float, end: float, within_s: float) -> list[Probe]:
        """Probes started in [start, end] (wall clock) answered late or not at all."""
        return [
            p
            for p in self.probes
            if start <= p.started <= end and (p.status == 0 or p.took >= within_s)
        ]

    def first_stalled(self, slot: int, since: float) -> Probe | None:
        """The first answer of `slot` after `since` that is a 503 naming a stall."""
        for p in self.probes:
            if p.slot == slot and p.answered >= since and p.status == 503 and "stalled" in p.body:
                return p
        return None


async def happens(check: Callable[[], Awaitable[bool]], within_s: float, every_s: float) -> bool:
    """Whether `check` turns true within `within_s` (polled every `every_s`)."""
    deadline = time.monotonic() + within_s
    while not await check():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(every_s)
    return True


def log_time(line: str) -> float:
    """The wall-clock time at the start of a worker's text log line."""
    return datetime.fromisoformat(line.split(" ", 1)[0]).timestamp()


def first_line(pool: WorkerPool, needles: tuple[str, ...], since: float) -> tuple[int, float, str]:
    """The earliest line (slot, time, text) of any slot, logged after `since`
    (wall clock), that contains every one of `needles`; (-1, inf, "") if none."""
    best = (-1, float("inf"), "")
    for tagged in pool.grep(needles[0]):
        slot_tag, line = tagged.split(" ", 1)
        if not all(n in line for n in needles):
            continue
        with contextlib.suppress(ValueError):
            at = log_time(line)
            if since <= at < best[1]:
                best = (int(slot_tag.strip("[]")), at, line)
    return best


def last_line(pool: WorkerPool, slot: int) -> str:
    lines = [line for line in pool.current_log(slot).splitlines() if line.strip()]
    return lines[-1] if lines else ""
