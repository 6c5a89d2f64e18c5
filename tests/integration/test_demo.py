"""`make demo` end to end: its own stack, two workers, 100,000 events."""

from __future__ import annotations

import os
import re
import subprocess
import sys


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
