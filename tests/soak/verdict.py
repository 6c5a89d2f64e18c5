"""The soak's end: wait for the lag to reach zero, count what the database
holds, judge the samples, write soak.json and soak.png."""

from __future__ import annotations

import contextlib
import json
import shutil
import statistics
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from schemas.tables import dead_letters, event_resources, events
from tests.integration.support import wait_until
from tests.integration.workers import WorkerPool
from tests.soak.latency import Latency, lines
from tests.soak.load import Load
from tests.soak.probes import Sample
from tests.soak.watch import Watch

SETTLE_S = 600.0
# Lag counts as back near zero at this many seconds of load, after a fault.
NEAR_ZERO_S = 5.0
RECOVERY_S = 300.0
GROWTH_LIMIT = 0.10


@dataclass
class Final:
    sent: int
    recent_sent: int
    recent_stored: int
    recent_resources_sent: int
    recent_resources_stored: int
    bad_sent: int
    dead_letters: int
    old_sent: int
    old_left: int
    lag: int | None
    crashes: list[str]


@dataclass
class Report:
    minutes: float
    rate: float
    faults: list[tuple[float, float, str]]
    samples: list[Sample]
    final: Final
    exit_codes: list[int]
    latency: Latency | None = None


def recent_since(load: Load) -> datetime:
    """The old events occurred long before this; the recent ones after it."""
    return load.started - timedelta(minutes=30)


async def settle(watch: Watch, load: Load, pool: WorkerPool) -> Final:
    """Wait for the lag to reach zero, then count."""

    async def caught_up() -> bool:
        return await watch.lag() == 0

    # Not reaching it is judged below: the lag is part of the report.
    with contextlib.suppress(AssertionError):
        await wait_until(caught_up, SETTLE_S, "the lag to reach zero", 1.0)
    engine = watch.engine
    cutoff = recent_since(load)
    async with engine.connect() as conn:
        recent = await conn.scalar(select(func.count()).where(events.c.occurred >= cutoff))
        old = await conn.scalar(select(func.count()).where(events.c.occurred < cutoff))
        resources = await conn.scalar(
            select(func.count()).where(event_resources.c.occurred >= cutoff)
        )
        bad = await conn.scalar(select(func.count()).select_from(dead_letters))
    return Final(
        load.sent,
        load.recent,
        int(recent or 0),
        load.recent_resources,
        int(resources or 0),
        load.bad,
        int(bad or 0),
        load.old,
        int(old or 0),
        await watch.lag(),
        [str(c) for c in pool.crashes()],
    )


def _quarter_means(report: Report, value: Any) -> tuple[float, float]:
    """Mean of `value(sample)` over the second and over the last quarter of the run."""
    end = report.minutes * 60
    means = []
    for start, stop in ((end / 4, end / 2), (end * 3 / 4, end)):
        values = [v for s in report.samples if start <= s.t < stop and (v := value(s)) is not None]
        means.append(statistics.fmean(values) if values else 0.0)
    return means[0], means[1]


def _per_worker(sample: Sample, field: str) -> float | None:
    values = [getattr(w, field) for w in sample.workers.values() if getattr(w, field) is not None]
    return statistics.fmean(values) if values else None


def recoveries(report: Report) -> list[tuple[str, float | None]]:
    """For each fault, seconds from its end until the lag was near zero (None: never)."""
    near_zero = max(1000.0, report.rate * NEAR_ZERO_S)
    found = []
    for _began, ended, label in report.faults:
        after = [s for s in report.samples if ended <= s.t <= ended + RECOVERY_S]
        back = next((s.t - ended for s in after if s.lag is not None and s.lag <= near_zero), None)
        found.append((label, back))
    return found


def checks(report: Report) -> list[tuple[str, bool, str]]:
    f = report.final
    out = [
        (
            "no event lost or duplicated",
            f.recent_stored == f.recent_sent,
            f"{f.recent_stored} of {f.recent_sent}",
        ),
        (
            "resource rows exact",
            f.recent_resources_stored == f.recent_resources_sent,
            f"{f.recent_resources_stored} of {f.recent_resources_sent}",
        ),
        ("dead letters exact", f.dead_letters == f.bad_sent, f"{f.dead_letters} of {f.bad_sent}"),
        ("lag zero at the end", f.lag == 0, f"lag {f.lag}"),
        (
            "trimming deleted the old events",
            f.old_left < f.old_sent,
            f"{f.old_left} of {f.old_sent} left",
        ),
        ("no worker crashed", not f.crashes, "; ".join(f.crashes) or "none"),
        ("every worker exited 0", all(c == 0 for c in report.exit_codes), str(report.exit_codes)),
    ]
    for name, field in (("RSS", "rss_mib"), ("asyncio tasks", "tasks")):
        second, last = _quarter_means(report, lambda s, f=field: _per_worker(s, f))
        growth = last / second - 1 if second else 0.0
        detail = f"{second:.1f} -> {last:.1f} per worker ({growth:+.1%})"
        out.append((f"{name} grows at most 10%", growth <= GROWTH_LIMIT, detail))
    for label, back in recoveries(report):
        detail = "never" if back is None else f"{back:.0f} s after"
        out.append((f"lag near zero after: {label}", back is not None, detail))
    return out


def write(report: Report, out: Path, logs: list[str]) -> bool:
    out.mkdir(parents=True, exist_ok=True)
    results = checks(report)
    for name, ok, detail in results:
        print(f"{'PASS' if ok else 'FAIL'}  {name}: {detail}")
    for line in lines(report.latency) if report.latency else []:
        print(line)
    data = asdict(report) | {"checks": results, "recoveries": recoveries(report)}
    (out / "soak.json").write_text(json.dumps(data, indent=1, default=str) + "\n")
    for log in logs:
        shutil.copy(log, out / Path(log).name)
    from tests.soak.chart import plot

    plot(report, out / "soak.png")
    print(f"wrote {out / 'soak.json'} and {out / 'soak.png'}")
    return all(ok for _, ok, _ in results)
