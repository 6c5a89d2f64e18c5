"""`python -m worker.bench.retention` on a small expired day: the day is
dropped whole while a worker ingests, nothing is deleted row by row, and no
dead tuple is left behind."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

EXPIRED = 20_000
BACKLOG = 30_000


def test_small_retention_benchmark_drops_the_expired_day(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            *("-m", "worker.bench.retention", "--expired", str(EXPIRED)),
            *("--events", str(BACKLOG), "--out", str(tmp_path)),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-5000:]
    result = json.loads((tmp_path / "retention.json").read_text())

    assert result["expired_events"] == EXPIRED
    assert result["partitions_dropped"] == 1
    assert result["dropped_tables_left"] == 0
    assert result["rows_deleted_by_trim"] == 0
    assert result["rows_deleted_one_by_one"] == 0
    assert result["dead_tuples_after"] == 0
    assert result["worker_exit_codes"] == [0]
    # None of the expired day's events is left, only what the worker stored.
    assert 0 < result["events_left"] <= BACKLOG
    assert result["trim_seconds"] > 0
