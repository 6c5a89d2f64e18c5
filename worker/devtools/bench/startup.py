"""The workers' start-up, as their own lines say it (`worker.core.startup`):
the median over the one-replica runs, for the report and its target. Pure."""

from __future__ import annotations

import statistics

from worker.core.startup import StartupSplit
from worker.devtools.bench.results import WORKER_1, Results

# The process's own part: imports, settings, connections, up to asking to
# join the group.
OWN_PART_LIMIT_S = 0.5


def median_split(results: Results) -> tuple[StartupSplit, int] | None:
    """Each part's median over the runs of one replica that said it, and
    how many runs said the first line; None if none did."""
    said = [p.startup for p in results.runs(WORKER_1) if p.startup is not None]
    if not said:
        return None
    median = StartupSplit(
        statistics.median(s.own for s in said),
        statistics.median(s.imports for s in said),
        statistics.median(s.settings for s in said),
        statistics.median(s.connections for s in said),
        _median([s.first_batch for s in said]),
        _median([s.group_join for s in said]),
        _median([s.fetch_and_write for s in said]),
    )
    return median, len(said)


def _median(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


def startup_line(results: Results) -> str | None:
    found = median_split(results)
    if found is None:
        return None
    s, runs = found
    line = (
        f"start-up, 1 replica (median of {runs} runs): own part {s.own:.2f} s "
        f"(imports {s.imports:.2f} s, settings {s.settings:.2f} s, "
        f"connections {s.connections:.2f} s)"
    )
    if s.first_batch is not None and s.group_join is not None and s.fetch_and_write is not None:
        line += (
            f"; first batch stored {s.first_batch:.2f} s after start "
            f"(group join {s.group_join:.2f} s, fetch and write {s.fetch_and_write:.2f} s)"
        )
    return line
