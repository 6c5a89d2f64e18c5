"""What the benchmark measured, in one place for the table, the JSON and the chart."""

from __future__ import annotations

import argparse
import json
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from worker.core.startup import StartupSplit


@dataclass
class Phase:
    """One row of the result table: `events` handled in `seconds` of wall time."""

    name: str
    events: int
    seconds: float
    note: str = ""
    # Worker runs only: peak RSS of each replica, and CPU over the run, summed.
    peak_rss_mib: list[float] = field(default_factory=list)
    cpu_seconds: float | None = None
    # The PostgreSQL server's CPU (all its processes) over the phase.
    server_cpu_seconds: float | None = None
    # Worker runs only: (events, seconds) from the first commit to the last,
    # start-up left out (see `db.writing`).
    writing: tuple[int, float] | None = None
    # Worker runs only: the first replica's start-up lines, read back.
    startup: StartupSplit | None = None
    # Worker runs only: (events stored, CPU seconds of all replicas) between
    # two polls while writing, start-up left out (`Replicas.wait_caught_up`).
    writing_cpu: tuple[int, float] | None = None

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0

    @property
    def writing_rate(self) -> float:
        """Events/s once writing: the worker's from its first commit, or the
        phase's own (COPY phases are timed from their first transaction)."""
        if self.writing is None:
            return self.rate
        events, seconds = self.writing
        return events / seconds

    @property
    def cpu_s_per_10k(self) -> float | None:
        if self.cpu_seconds is None or not self.events:
            return None
        return self.cpu_seconds / self.events * 10_000

    @property
    def writing_cpu_us_per_event(self) -> float | None:
        """The replicas' CPU per event once writing: the cost of each event,
        without the start-up every run pays once (reported apart)."""
        if self.writing_cpu is None or self.writing_cpu[0] <= 0:
            return None
        events, cpu_s = self.writing_cpu
        return cpu_s / events * 1e6

    @property
    def server_cpu_s_per_10k(self) -> float | None:
        if self.server_cpu_seconds is None or not self.events:
            return None
        return self.server_cpu_seconds / self.events * 10_000

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "events": self.events,
            "seconds": round(self.seconds, 3),
            "events_per_s": round(self.rate, 1),
            "events_per_s_once_writing": round(self.writing_rate, 1),
            "note": self.note,
            "peak_rss_mib_per_replica": [round(m, 1) for m in self.peak_rss_mib],
            "peak_rss_mib_sum": round(sum(self.peak_rss_mib), 1) if self.peak_rss_mib else None,
            "cpu_seconds": None if self.cpu_seconds is None else round(self.cpu_seconds, 2),
            "cpu_s_per_10k_events": _round(self.cpu_s_per_10k, 3),
            "cpu_us_per_event_once_writing": _round(self.writing_cpu_us_per_event, 2),
            "server_cpu_seconds": _round(self.server_cpu_seconds, 2),
            "server_cpu_s_per_10k_events": _round(self.server_cpu_s_per_10k, 3),
            "startup_s": None if self.startup is None else asdict(self.startup),
        }


@dataclass(frozen=True)
class Latency:
    """Record timestamp -> row visible, over `rows` rows."""

    name: str
    rows: int
    p50_ms: float
    p99_ms: float
    note: str = ""

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "rows": self.rows,
            "p50_ms": round(self.p50_ms, 1),
            "p99_ms": round(self.p99_ms, 1),
            "note": self.note,
        }


@dataclass(frozen=True)
class IndexCost:
    """The COPY write path with a set of secondary indexes dropped."""

    config: str
    dropped: tuple[str, ...]
    events: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True)
class Check:
    """One correctness check: a count that must come out exactly as expected."""

    what: str
    expected: int
    actual: int

    @property
    def ok(self) -> bool:
        return self.expected == self.actual


@dataclass
class Results:
    events: int
    started: str
    machine: dict[str, Any]
    load_seconds: float = 0.0
    load_bytes: int = 0
    phases: list[Phase] = field(default_factory=list)
    latencies: list[Latency] = field(default_factory=list)
    index_costs: list[IndexCost] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    # Events already stored for the "at size" phases (0: none run).
    preloaded: int = 0
    preload_seconds: float = 0.0
    finished: str = ""
    total_seconds: float = 0.0
    # Why the run stopped early, if it did.
    error: str = ""

    @property
    def correct(self) -> bool:
        return not self.error and bool(self.checks) and all(c.ok for c in self.checks)

    def phase(self, name: str) -> Phase | None:
        return next((p for p in self.phases if p.name == name), None)

    def runs(self, name: str) -> list[Phase]:
        """The phase `name` and its repeats (`run_name(name, n)`)."""
        return [p for p in self.phases if p.name == name or p.name.startswith(name + RUN)]

    def ratio(
        self, name: str, base: str, server_cpu: bool = False, from_start: bool = False
    ) -> float | None:
        """`name`'s events/s once writing (`from_start`: from its process's
        start) over `base`'s once writing (or their server CPU per 10k
        events), each the median of its runs."""
        mine = _median(self.runs(name), server_cpu, from_start)
        other = _median(self.runs(base), server_cpu)
        return mine / other if mine is not None and other else None

    def ratios(self) -> dict[str, float | None]:
        found = {
            "worker_1_over_write_ceiling": self.ratio(WORKER_1, WRITE_CEILING),
            "worker_1_from_start_over_write_ceiling": self.ratio(
                WORKER_1, WRITE_CEILING, from_start=True
            ),
            "worker_1_over_previous_copy": self.ratio(WORKER_1, PREVIOUS_COPY),
            "worker_1_over_naive": self.ratio(WORKER_1, NAIVE),
            "worker_1_over_consume_ceiling": self.ratio(WORKER_1, CONSUME_CEILING),
            "worker_1_over_fixed_batches": self.ratio(WORKER_1, WORKER_1_FIXED),
            "server_cpu_copy_over_previous_copy": self.ratio(
                WRITE_CEILING, PREVIOUS_COPY, server_cpu=True
            ),
            "server_cpu_worker_1_over_previous_copy": self.ratio(
                WORKER_1, PREVIOUS_COPY, server_cpu=True
            ),
        }
        if self.preloaded:
            at = at_size(self.preloaded)
            found |= {
                "at_size_worker_1_over_write_ceiling": self.ratio(
                    WORKER_1 + at, WRITE_CEILING + at
                ),
                "at_size_worker_1_over_previous_copy": self.ratio(
                    WORKER_1 + at, PREVIOUS_COPY + at
                ),
                "at_size_server_cpu_copy_over_previous_copy": self.ratio(
                    WRITE_CEILING + at, PREVIOUS_COPY + at, server_cpu=True
                ),
                "at_size_server_cpu_worker_1_over_previous_copy": self.ratio(
                    WORKER_1 + at, PREVIOUS_COPY + at, server_cpu=True
                ),
            }
        return found


def _median(phases: list[Phase], server_cpu: bool, from_start: bool = False) -> float | None:
    if server_cpu:
        values = [p.server_cpu_s_per_10k for p in phases]
    else:
        values = [p.rate if from_start else p.writing_rate for p in phases]
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


CONSUME_CEILING = "consume ceiling"
WRITE_CEILING = "write ceiling (COPY)"
PREVIOUS_COPY = "COPY, previous schema + default settings"
NAIVE = "naive baseline"
WORKER_1 = "worker, 1 replica"
# The same with PERSISTER_FLUSH_WHEN_CAUGHT_UP=false: batches by size, bytes
# or age only.
FIXED_BATCHES = ", fixed batches"
WORKER_1_FIXED = WORKER_1 + FIXED_BATCHES
WORKER_2 = "worker, 2 replicas"
# The latency of `worker.devtools.bench.steady`.
STEADY_LOAD = "steady 20% load, 3 workers on 3 brokers, from record timestamp"
# Names the repeats of a phase: "worker, 1 replica (run 2)".
RUN = " (run "


def run_name(name: str, run: int) -> str:
    return f"{name}{RUN}{run})"


def at_size(preloaded: int) -> str:
    """The suffix of a phase run on tables already holding `preloaded` events."""
    return f", {preloaded:,} stored"


def write_steps(args: argparse.Namespace, name: str, steps: list[dict[str, Any]]) -> Path:
    """`name` in `args.out`: the run's arguments and its steps, as JSON."""
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    path = out / name
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    path.write_text(json.dumps({"settings": settings, "steps": steps}, indent=1) + "\n")
    return path
