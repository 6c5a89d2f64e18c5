"""`--help` shows a flag as a flag: no value placeholder after it, while
options that take a value keep theirs."""

from __future__ import annotations

import re
from collections.abc import Iterator

import typer
from typer.core import TyperGroup
from typer.testing import CliRunner

from worker.cli import app


def command_paths(command: object, path: tuple[str, ...] = ()) -> Iterator[list[str]]:
    yield list(path)
    if isinstance(command, TyperGroup):
        for name, sub in command.commands.items():
            yield from command_paths(sub, (*path, name))


def help_of(path: list[str]) -> str:
    result = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "120"})
    assert result.exit_code == 0, result.output
    return result.output


def test_no_help_shows_a_placeholder_for_a_flag() -> None:
    paths = list(command_paths(typer.main.get_command(app)))
    assert len(paths) > 10  # every command and group, the app itself too
    shown = {" ".join(path): help_of(path) for path in paths}
    assert {path: text for path, text in shown.items() if "<bool>" in text} == {}


def test_flags_stand_alone_and_valued_options_keep_their_type() -> None:
    text = help_of(["replay"])
    assert re.search(r"--dry-run +Show, change nothing\.", text), text
    assert re.search(r"--help +Show this message and exit\.", text), text
    assert re.search(r"--topic +<str> +The topic to replay\.", text), text
    assert re.search(r"--partition +<int> +Only this partition\.", text), text
