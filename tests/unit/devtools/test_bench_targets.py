"""The benchmark's storage targets: which are reported, and met or missed."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson

from worker.devtools.bench.dataset import copy_chunks, make_dataset, make_values, with_fresh_ids
from worker.devtools.bench.results import (
    PREVIOUS_COPY,
    STEADY_LOAD,
    WORKER_1,
    WORKER_1_FIXED,
    WRITE_CEILING,
    Latency,
    Phase,
    Results,
    at_size,
    run_name,
)
from worker.devtools.bench.targets import LIGHT_LOAD, targets
from worker.pipeline.inserts import EVENT_COLUMNS, RESOURCE_COLUMNS


def results(preloaded: int = 0) -> Results:
    found = Results(events=10_000, started="", machine={}, preloaded=preloaded)
    suffixes = ["", at_size(preloaded)] if preloaded else [""]
    for at in suffixes:
        found.phases += [
            # 10,000 events/s and 2 s of server CPU per 10k events.
            Phase(PREVIOUS_COPY + at, 10_000, 1.0, server_cpu_seconds=2.0),
            Phase(WRITE_CEILING + at, 10_000, 0.5, server_cpu_seconds=1.0),
            # 13,000 events/s, 1.1 s of server CPU per 10k, 200 MiB; 3 s of
            # CPU in all, 0.15 s of it for the last 12,000 events.
            Phase(WORKER_1 + at, 13_000, 1.0, "", [200.0], 3.0, 1.43, writing_cpu=(12_000, 0.15)),
        ]
    found.latencies.append(Latency(LIGHT_LOAD, 100, 20.0, 151.0))
    return found


def test_each_target_is_met_or_missed_by_its_limit() -> None:
    found = {t.what: (round(t.value, 2), t.met) for t in targets(results())}

    assert found == {
        "worker 1 replica / COPY into the previous schema, empty tables": (1.3, True),
        "worker 1 replica / COPY into the current schema, empty tables": (0.65, False),
        "worker 1 replica from process start / COPY into the current schema, empty tables": (
            0.65,
            False,
        ),
        "PostgreSQL CPU per 10k events: worker / COPY into the previous schema, empty tables": (
            0.55,
            True,
        ),
        "p99 ms at 20% load": (151.0, False),
        "peak RSS MiB, 1 replica": (200.0, True),
        # 3 s of CPU for 13,000 events, start-up included.
        "worker CPU µs per event from process start, 1 replica": (230.77, False),
        # 0.15 s for the 12,000 written after the first.
        "worker CPU µs per event once writing, 1 replica": (12.5, True),
    }


def test_cpu_per_event_is_the_median_of_the_runs_once_writing_and_from_start() -> None:
    run = Results(events=10_000, started="", machine={})
    run.phases += [
        # Start-up's 1 s is in each run's total, never in its once-writing part.
        Phase(WORKER_1, 10_000, 1.0, cpu_seconds=1.3, writing_cpu=(9_000, 0.18)),
        Phase(run_name(WORKER_1, 2), 10_000, 1.0, cpu_seconds=1.1, writing_cpu=(9_000, 0.09)),
        Phase(run_name(WORKER_1, 3), 10_000, 1.0, cpu_seconds=1.2, writing_cpu=(9_000, 0.27)),
    ]
    found = {t.what: round(t.value, 2) for t in targets(run)}

    assert found["worker CPU µs per event once writing, 1 replica"] == 20.0
    assert found["worker CPU µs per event from process start, 1 replica"] == 120.0
    assert run.phases[0].as_json()["cpu_us_per_event_once_writing"] == 20.0


def test_full_load_is_compared_with_fixed_batches_when_they_ran() -> None:
    run = results()
    run.phases.append(Phase(WORKER_1_FIXED, 13_000, 1.04))
    found = {t.what: (round(t.value, 2), t.met) for t in targets(run)}

    assert found["full-load events/s, 1 replica: worker / the same with fixed batches"] == (
        1.04,
        True,
    )
    assert len(found) == 9


def test_the_steady_runs_latency_is_a_target_when_it_ran() -> None:
    run = results()
    run.latencies.append(Latency(STEADY_LOAD, 100, 40.0, 149.0))
    found = {t.what: (t.value, t.met) for t in targets(run)}

    assert found[f"p99 ms, {STEADY_LOAD}"] == (149.0, True)
    assert len(found) == 9


def test_targets_at_size_are_reported_only_when_measured() -> None:
    assert len(targets(results())) == 8
    found = [t.what for t in targets(results(preloaded=4_000_000))]

    assert len(found) == 14
    assert sum("4,000,000" in what for what in found) == 6


def test_fresh_ids_keep_every_row_and_its_resources_together() -> None:
    chunks = copy_chunks(make_dataset(50).events, datetime.now(UTC), 20)
    fresh = with_fresh_ids(chunks)
    id_at, event_id_at = EVENT_COLUMNS.index("id"), RESOURCE_COLUMNS.index("event_id")

    old_ids = {row[id_at] for chunk in chunks for row in chunk.events}
    new_ids = {row[id_at] for chunk in fresh for row in chunk.events}
    assert len(new_ids) == 50 and not new_ids & old_ids
    for before, after in zip(chunks, fresh, strict=True):
        assert [r[:id_at] + r[id_at + 1 :] for r in after.events] == [
            r[:id_at] + r[id_at + 1 :] for r in before.events
        ]
        assert len(after.resources) == len(before.resources)
        assert {r[event_id_at] for r in after.resources} == {r[id_at] for r in after.events}


def test_repeated_runs_are_compared_by_their_medians() -> None:
    run = results()
    # Worker runs at 13,000, 12,000 and 14,000 events/s (median 13,000);
    # fixed batches at 14,000, 10,000 and 12,500 (median 12,500).
    run.phases += [
        Phase(run_name(WORKER_1, 2), 13_000, 13_000 / 12_000),
        Phase(run_name(WORKER_1, 3), 14_000, 1.0),
        Phase(WORKER_1_FIXED, 14_000, 1.0),
        Phase(run_name(WORKER_1_FIXED, 2), 10_000, 1.0),
        Phase(run_name(WORKER_1_FIXED, 3), 12_500, 1.0),
    ]

    assert run.ratio(WORKER_1, WORKER_1_FIXED) == 13_000 / 12_500
    # A name that begins like another is not one of its runs.
    assert [p.name for p in run.runs(WORKER_1)] == [
        WORKER_1,
        run_name(WORKER_1, 2),
        run_name(WORKER_1, 3),
    ]


def test_values_alone_are_the_datasets_values() -> None:
    def without_time(values: list[bytes]) -> list[dict[str, Any]]:
        # `occurred` is a random time before now, and now moves on.
        return [{k: v for k, v in orjson.loads(b).items() if k != "occurred"} for b in values]

    assert without_time(make_values(50, seed=3)) == without_time(make_dataset(50, seed=3).values)


def test_workers_are_compared_once_writing_as_copy_is_timed() -> None:
    run = Results(events=10_000, started="", machine={})
    run.phases += [
        # COPY: 10,000 events/s from its first transaction.
        Phase(PREVIOUS_COPY, 10_000, 1.0),
        # 10,000 events in 1.25 s from process start (8,000/s); 9,000 of
        # them in 0.75 s from the first commit to the last (12,000/s).
        Phase(WORKER_1, 10_000, 1.25, writing=(9_000, 0.75)),
    ]

    worker = run.phase(WORKER_1)
    assert worker is not None
    assert (worker.rate, worker.writing_rate) == (8_000, 12_000)
    assert worker.as_json()["events_per_s_once_writing"] == 12_000
    assert run.ratio(WORKER_1, PREVIOUS_COPY) == 1.2
    # From process start, start-up included: 8,000/s.
    assert run.ratio(WORKER_1, PREVIOUS_COPY, from_start=True) == 0.8


def test_a_worker_that_committed_once_is_compared_from_its_start() -> None:
    phase = Phase(WORKER_1, 10_000, 1.25)
    assert phase.writing_rate == phase.rate == 8_000
