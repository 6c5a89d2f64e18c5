"""The alert rules that ship in compose/: valid, and firing on sample series
when they should and not before (`promtool test rules`)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from worker.core.metrics import registry

COMPOSE = Path(__file__).parents[2] / "compose"


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("promtool")
    if tool is None:
        pytest.fail("promtool is missing: install Debian's prometheus package (.ci/run does)")
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


def test_every_alert_is_exercised_and_names_existing_metrics() -> None:
    rules = yaml.safe_load((COMPOSE / "alerts.yml").read_text())["groups"][0]["rules"]
    tests = yaml.safe_load((COMPOSE / "alerts_test.yml").read_text())["tests"]
    firing = {
        case["alertname"]
        for test in tests
        for case in test["alert_rule_test"]
        if case.get("exp_alerts")
    }
    assert firing == {rule["alert"] for rule in rules}
    exported = {family.name for family in registry.collect()}
    for rule in rules:
        for name in {n.removesuffix("_total") for n in _metric_names(rule["expr"])}:
            assert name in exported, (rule["alert"], name)


def _metric_names(expr: str) -> set[str]:
    return set(re.findall(r"persister_[a-z_]+", expr))
