"""The alert rules that ship in compose/: every alert has a test case that
fires it, and names metrics the worker exports. promtool's checks of the same
rules are integration tests (tests/integration/test_alert_rules.py): they
need the tool."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from worker.core.metrics import registry

COMPOSE = Path(__file__).parents[2] / "compose"


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
