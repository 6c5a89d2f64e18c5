"""`python -m worker.devtools.bench` on a small topic: every phase runs, at a size scaled
to the run, and the worker's correctness checks pass."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

from worker.devtools.bench.results import (
    CONSUME_CEILING,
    NAIVE,
    PREVIOUS_COPY,
    STEADY_LOAD,
    WORKER_1,
    WORKER_1_FIXED,
    WORKER_2,
    WRITE_CEILING,
    at_size,
    run_name,
)

EVENTS = 2_000
# Enough to run the "at size" phases; the real figure is millions (see
# docs/performance.md).
PRELOAD = 5_000


def test_small_benchmark_measures_everything(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            *("-m", "worker.devtools.bench", "--events", str(EVENTS), "--preload", str(PRELOAD)),
            *("--runs", "2"),
            *("--out", str(tmp_path)),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-5000:]
    result = json.loads((tmp_path / "bench.json").read_text())

    assert result["events"] == EVENTS
    assert result["correct"] is True
    assert result["checks"] and all(check["ok"] for check in result["checks"]), result["checks"]
    assert result["machine"]["nproc"] >= 1
    assert result["machine"]["kafka_version"]
    assert result["load"]["events_per_s"] > 0

    measured = {m["name"]: m for m in result["measurements"]}
    at = at_size(PRELOAD)
    assert set(measured) == {
        *(CONSUME_CEILING, PREVIOUS_COPY, WRITE_CEILING, NAIVE, WORKER_1, WORKER_1_FIXED),
        WORKER_2,
        *(PREVIOUS_COPY + at, WRITE_CEILING + at, WORKER_1 + at),
        *(run_name(WORKER_1, 2), run_name(WORKER_1_FIXED, 2)),
    }
    for name, measurement in measured.items():
        assert measurement["events_per_s"] > 0, name
        assert measurement["events_per_s_once_writing"] > 0, name
    server = {
        name: m["server_cpu_s_per_10k_events"]
        for name, m in measured.items()
        if name != CONSUME_CEILING
    }
    # Measured for every phase that stores rows. The kernel counts a
    # process's CPU in 10 ms ticks, and a phase of 2,000 events can take less
    # than that in each backend: only the sum must show it.
    assert all(cpu is not None and cpu >= 0 for cpu in server.values()), server
    assert sum(server.values()) > 0, server
    assert result["preloaded"]["events"] == PRELOAD
    # Each "at size" worker check compares the rows it added with the topic's.
    assert {c["what"]: c["actual"] for c in result["checks"]}[f"{WORKER_1 + at}: events rows"] == (
        EVENTS
    )
    # Small enough that the naive baseline finishes within its time budget.
    assert measured[NAIVE]["events"] == EVENTS
    for name, replicas in (
        *((WORKER_1, 1), (WORKER_1_FIXED, 1), (WORKER_2, 2), (WORKER_1 + at, 1)),
        *((run_name(WORKER_1, 2), 1), (run_name(WORKER_1_FIXED, 2), 1)),
    ):
        assert measured[name]["events"] == EVENTS
        assert len(measured[name]["peak_rss_mib_per_replica"]) == replicas
        assert all(rss > 0 for rss in measured[name]["peak_rss_mib_per_replica"])
        assert measured[name]["cpu_s_per_10k_events"] > 0

    assert all(ratio > 0 for ratio in result["ratios"].values()), result["ratios"]
    assert len(result["ratios"]) == 12
    # Every target of the storage work is reported, met or not (10), the
    # worker from its process's start (1), the steady run's p99 on three
    # brokers (1), the worker's CPU per event from its start on empty tables
    # and at size (2), and the workers' own start-up, as their start-up line
    # says it (1). CPU once writing is a target where some run saw a stored
    # offset before the last: 2,000 events can all go in the first commit.
    per_event = {
        name: measured[name]["cpu_us_per_event_once_writing"]
        for name in (WORKER_1, run_name(WORKER_1, 2), WORKER_1 + at)
    }
    assert all(us is None or us > 0 for us in per_event.values()), per_event
    once_writing = sum(
        any(per_event[name] is not None for name in names)
        for names in ((WORKER_1, run_name(WORKER_1, 2)), (WORKER_1 + at,))
    )
    assert len(result["targets"]) == 15 + once_writing, result["targets"]
    assert measured[WORKER_1]["startup_s"]["own"] > 0, measured[WORKER_1]
    assert all(isinstance(target["met"], bool) for target in result["targets"])
    latencies = result["latency"]
    # Full load from record timestamp and from worker start, and 20% load;
    # with the caught-up flush and with fixed batches; and the steady run of
    # three workers on three brokers.
    assert len(latencies) == 7
    assert STEADY_LOAD in {lat["name"] for lat in latencies}
    assert all(lat["rows"] > 0 and 0 < lat["p50_ms"] <= lat["p99_ms"] for lat in latencies)
    costs = result["index_costs"]
    assert costs[0]["config"] == "all indexes"
    assert costs[-1]["config"] == "primary keys only"
    assert len(costs) == 6  # all, each of the 4 secondary indexes dropped, primary keys only
    assert all(cost["events_per_s"] > 0 for cost in costs)

    if importlib.util.find_spec("matplotlib") is not None:
        assert (tmp_path / "bench.png").stat().st_size > 0
