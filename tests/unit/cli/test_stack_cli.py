"""`persister stack up --brokers N` reaches the stack, and a recorded stack
of another size, or without the proxies asked for, is refused before
anything starts; `stack net` needs a stack with proxies."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from worker.cli import app, run_app
from worker.cli.common import state
from worker.devtools import stack


def test_brokers_reach_the_stack(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    calls: list[tuple[Any, ...]] = []

    def fake_up(
        state_dir: Path, database_url: str | None, brokers: int = 1, proxy: bool = False
    ) -> stack.StackInfo:
        calls.append((state_dir, brokers, proxy))
        return stack.StackInfo("127.0.0.1:1,127.0.0.1:2,127.0.0.1:3", "postgresql://x@h/db")

    monkeypatch.setattr(stack, "stack_up", fake_up)
    result = CliRunner().invoke(
        app, ["stack", "up", "--brokers", "3", "--state-dir", str(tmp_path)]
    )
    assert result.exit_code == 0, result.output
    assert calls == [(tmp_path, 3, False)]
    assert "export KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:1,127.0.0.1:2,127.0.0.1:3\n" in result.output


def test_a_recorded_stack_of_another_size_is_refused(tmp_path: Path) -> None:
    saved = {"external_database_url": "postgresql://x@h/db", "brokers": 1, "ports": {}}
    (tmp_path / "stack.json").write_text(json.dumps(saved))
    with pytest.raises(stack.StackError, match="has 1 broker"):
        stack.stack_up(tmp_path, None, brokers=3)


def test_a_recorded_stack_without_proxies_is_refused_with_them(tmp_path: Path) -> None:
    saved: dict[str, object] = {"external_database_url": None, "brokers": 1, "ports": {}}
    (tmp_path / "stack.json").write_text(json.dumps(saved))
    with pytest.raises(stack.StackError, match="has no proxies"):
        stack.stack_up(tmp_path, None, proxy=True)


def test_the_network_of_a_stack_without_proxies_is_refused(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setattr(state, "json_logs", False)  # plain lines on stderr
    saved: dict[str, object] = {"external_database_url": None, "brokers": 1, "ports": {}}
    (tmp_path / "stack.json").write_text(json.dumps(saved))
    args = ["stack", "net", "freeze", "postgres", "--state-dir", str(tmp_path)]
    assert run_app(args) == 3
    assert capsys.readouterr().err == (
        f"the stack in {tmp_path} runs without proxies:"
        " `persister stack down`, then `persister stack up --proxy`\n"
    )
    assert run_app(["stack", "net", "jam", "postgres", "--state-dir", str(tmp_path)]) == 2


@pytest.mark.parametrize(
    "args",
    [["stack", "up"], ["stack", "down"], ["stack", "net", "freeze", "kafka"], ["produce"]],
)
def test_without_the_development_tools_their_commands_say_so(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], args: list[str]
) -> None:
    # As installed from the package, which leaves worker/devtools out.
    monkeypatch.setitem(sys.modules, "worker.devtools", None)
    monkeypatch.setattr(state, "json_logs", False)  # plain lines on stderr
    assert run_app(args) == 3
    command = " ".join(args)
    assert capsys.readouterr().err == (
        f"`persister {command}` is a development tool: run it from a source checkout\n"
    )
