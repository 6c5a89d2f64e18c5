"""The alert rules that ship in compose/ are valid and fire on sample series
when they should and not before (`promtool test rules`). promtool is a
prerequisite: without it these fail, with how to get it."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from worker.devtools.prerequisites import PROMTOOL_MISSING

COMPOSE = Path(__file__).parents[2] / "compose"


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("promtool")
    if tool is None:
        pytest.fail(PROMTOOL_MISSING)
    return subprocess.run(
        [tool, *args], cwd=COMPOSE, capture_output=True, text=True, timeout=60, check=False
    )


def test_the_rules_are_valid() -> None:
    checked = promtool("check", "rules", "alerts.yml")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 7 rules found" in checked.stdout


def test_the_rules_fire_on_sample_series() -> None:
    tested = promtool("test", "rules", "alerts_test.yml")
    assert tested.returncode == 0, tested.stdout + tested.stderr
