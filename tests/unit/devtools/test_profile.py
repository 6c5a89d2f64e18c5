"""`make profile` prints one row per step of the write path, in µs per event."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from worker.devtools import profile
from worker.devtools.bench.dataset import make_values

STEPS = [
    "`read_envelope`, with the rules",
    "`event_values`, with JSON text",
    "`resource_values`",
    "whole `to_rows`",
    "the COPY records (stamped, resources in order)",
]


def test_the_table_has_every_step_with_a_figure(capsys: pytest.CaptureFixture[str]) -> None:
    profile.main(["--count", "300", "--batch", "100", "--repeat", "1"])
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "300 events, 100 per batch, best of 1 (CPU time)"
    assert out[1:3] == ["| step | µs/event |", "|---|---:|"]
    rows = [re.fullmatch(r"\| (.+) \| (\d+\.\d) \|", line) for line in out[3:]]
    assert [m.group(1) for m in rows if m] == STEPS
    assert all(m is not None and float(m.group(2)) > 0 for m in rows)


def test_an_event_file_is_read_one_message_per_line(tmp_path: Path) -> None:
    values = make_values(5)
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"\n".join(values) + b"\n\n")
    assert profile.read_values(path, 100) == values
    assert profile.read_values(path, 2) == values[:2]
