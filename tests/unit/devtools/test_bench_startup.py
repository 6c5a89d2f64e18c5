"""The benchmark reports the workers' start-up split and its target."""

from __future__ import annotations

from rich.console import Console

from worker.core.startup import StartupSplit
from worker.devtools.bench.report import print_report
from worker.devtools.bench.results import WORKER_1, WORKER_1_FIXED, Phase, Results, run_name
from worker.devtools.bench.targets import targets

OWN_TARGET = "start-up (own part) s, 1 replica"


def with_startups(*splits: StartupSplit | None) -> Results:
    found = Results(events=1_000, started="", machine={"nproc": 2})
    names = [WORKER_1, *(run_name(WORKER_1, n) for n in range(2, len(splits) + 1))]
    found.phases += [
        Phase(name, 1_000, 1.0, startup=split) for name, split in zip(names, splits, strict=True)
    ]
    # Another kind of run: not one of the one-replica runs the target takes.
    found.phases.append(Phase(WORKER_1_FIXED, 1_000, 1.0, startup=StartupSplit(9, 9, 0, 0)))
    return found


def test_the_target_is_the_median_own_part_of_the_one_replica_runs() -> None:
    run = with_startups(
        StartupSplit(0.62, 0.5, 0.02, 0.1, 1.5, 0.5, 0.38),
        StartupSplit(0.45, 0.35, 0.02, 0.08, 1.2, 0.4, 0.35),
        StartupSplit(0.48, 0.38, 0.02, 0.08),  # stopped before its first batch was said
    )
    found = [(t.value, t.limit, t.met) for t in targets(run) if t.what == OWN_TARGET]
    assert found == [(0.48, 0.5, True)]
    console = Console(record=True, width=300)
    print_report(run, console)
    assert (
        "start-up, 1 replica (median of 3 runs): own part 0.48 s (imports 0.38 s, settings "
        "0.02 s, connections 0.08 s); first batch stored 1.35 s after start (group join "
        "0.45 s, fetch and write 0.36 s)"
    ) in console.export_text()


def test_runs_that_said_nothing_of_their_start_up_report_no_target() -> None:
    run = with_startups(None, None)
    assert [t for t in targets(run) if t.what == OWN_TARGET] == []
    console = Console(record=True, width=300)
    print_report(run, console)
    assert "start-up" not in console.export_text()
