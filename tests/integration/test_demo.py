"""`make demo` end to end: its own stack, two workers, 100,000 events."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path


def test_demo_persists_everything_and_stops_cleanly() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "worker.devtools.demo"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "COLUMNS": "120"},
    )
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    # 100,000 messages, every 10,000th one bad: 99,990 events, 10 dead letters.
    found = re.search(r"(\d+) events, (\d+) resource rows, (\d+) dead letters", out)
    assert found is not None, out
    assert (int(found.group(1)), int(found.group(3))) == (99_990, 10)
    assert "workers stopped with exit codes [0, 0]" in out
    assert re.search(r"│\s+\d+ │\s+(\d+) │\s+\1 │\s+0 │", out), out  # a lag-0 row


def test_demo_prefect_prints_the_flow_run_s_events_and_stops_cleanly() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "worker.devtools.demo_prefect"],
        capture_output=True,
        text=True,
        timeout=300,
        env={k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "PERSISTER_"))},
    )
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    # The run's 7 events: its Pending, Running, heartbeat and Completed, and
    # its task run's Pending, Running and Completed.
    events = re.findall(r"│ [\d:.]+ │ (prefect\.[\w.-]+)\s+│", out)
    assert sorted(events) == sorted(
        [f"prefect.flow-run.{s}" for s in ("Pending", "Running", "heartbeat", "Completed")]
        + [f"prefect.task-run.{s}" for s in ("Pending", "Running", "Completed")]
    ), out
    assert re.search(r"^7 events; from starting the flow run", out, re.MULTILINE), out
    assert "worker stopped with exit code 0" in out
    assert not list(Path(tempfile.gettempdir()).glob("persister-demo-prefect-*"))
