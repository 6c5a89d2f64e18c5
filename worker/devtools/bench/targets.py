"""The storage targets, checked against one run's figures. Pure.

A target that a run did not measure (no "at size" phases without
--preload) is left out rather than reported as met or missed."""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from worker.devtools.bench.results import STEADY_LOAD, WORKER_1, Results, at_size
from worker.devtools.bench.startup import OWN_PART_LIMIT_S, median_split

LIGHT_LOAD = "20% load, from record timestamp"
RSS_LIMIT_MIB = 250.0
# The worker's own CPU per event, its process alone (the database's is
# reported beside it, per 10k events): once writing, and from the process's
# start, which adds the start-up's fixed cost spread over the run's events.
WORKER_CPU_LIMIT_US = 15.0
P99_LIMIT_MS = 150.0


@dataclass(frozen=True)
class Target:
    what: str
    value: float
    limit: float
    # True: value must be at least `limit`; False: at most.
    at_least: bool

    @property
    def met(self) -> bool:
        return self.value >= self.limit if self.at_least else self.value <= self.limit

    def as_json(self) -> dict[str, object]:
        return {
            "what": self.what,
            "value": round(self.value, 3),
            "limit": self.limit,
            "at_least": self.at_least,
            "met": self.met,
        }


def _ratios(results: Results, prefix: str, where: str) -> list[Target]:
    ratios = results.ratios()
    wanted = [
        ("worker_1_over_previous_copy", "worker 1 replica / COPY into the previous schema", 1.25),
        ("worker_1_over_write_ceiling", "worker 1 replica / COPY into the current schema", 1.0),
    ]
    if not prefix:
        # Start-up counts here: what a replica that just started delivers.
        wanted.append(
            (
                "worker_1_from_start_over_write_ceiling",
                "worker 1 replica from process start / COPY into the current schema",
                0.9,
            )
        )
    found = [
        Target(f"{what}, {where}", value, limit, True)
        for key, what, limit in wanted
        if (value := ratios.get(prefix + key)) is not None
    ]
    cpu = ratios.get(prefix + "server_cpu_worker_1_over_previous_copy")
    if cpu is not None:
        what = f"PostgreSQL CPU per 10k events: worker / COPY into the previous schema, {where}"
        found.append(Target(what, cpu, 0.6, False))
    return found


def targets(results: Results) -> list[Target]:
    found = _ratios(results, "", "empty tables")
    if results.preloaded:
        found += _ratios(results, "at_size_", f"{results.preloaded:,} events stored")
    fixed = results.ratios().get("worker_1_over_fixed_batches")
    if fixed is not None:
        what = "full-load events/s, 1 replica: worker / the same with fixed batches"
        found.append(Target(what, fixed, 1.0, True))
    for name, what in ((LIGHT_LOAD, "p99 ms at 20% load"), (STEADY_LOAD, "p99 ms, " + STEADY_LOAD)):
        measured = next((lat for lat in results.latencies if lat.name == name), None)
        if measured is not None:
            found.append(Target(what, measured.p99_ms, P99_LIMIT_MS, False))
    runs = [(WORKER_1, "")]
    if results.preloaded:
        runs.append((WORKER_1 + at_size(results.preloaded), f", {results.preloaded:,} stored"))
    for name, where in runs:
        worker = results.phase(name)
        if worker is not None and worker.peak_rss_mib:
            what = f"peak RSS MiB, 1 replica{where}"
            found.append(Target(what, max(worker.peak_rss_mib), RSS_LIMIT_MIB, False))
        repeats = results.runs(name)
        once_writing = _median([p.writing_cpu_us_per_event for p in repeats])
        if once_writing is not None:
            what = f"worker CPU µs per event once writing, 1 replica{where}"
            found.append(Target(what, once_writing, WORKER_CPU_LIMIT_US, False))
        if (per_10k := _median([p.cpu_s_per_10k for p in repeats])) is not None:
            what = f"worker CPU µs per event from process start, 1 replica{where}"
            found.append(Target(what, per_10k * 100, WORKER_CPU_LIMIT_US, False))
    if (startup := median_split(results)) is not None:
        own = startup[0].own
        found.append(Target("start-up (own part) s, 1 replica", own, OWN_PART_LIMIT_S, False))
    return found


def _median(values: list[float | None]) -> float | None:
    measured = [v for v in values if v is not None]
    return statistics.median(measured) if measured else None
