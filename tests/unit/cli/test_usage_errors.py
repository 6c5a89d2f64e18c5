"""A usage error is one clean line on stderr and exit code 2: the parser's
sentences in the product's voice, and where the help is."""

from __future__ import annotations

import pytest

from worker.cli import run_app
from worker.cli.failures import EXIT_BAD_SETTINGS, usage_line


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (["x"], "error: no such command 'x'; see `persister --help`"),
        (
            ["staus"],
            "error: no such command 'staus' (did you mean 'status', 'stack', 'pause'?); "
            "see `persister --help`",
        ),
        (["replay"], "error: missing option '--topic'; see `persister replay --help`"),
        (["stack", "x"], "error: no such command 'x'; see `persister stack --help`"),
        (
            ["stack", "net", "bogus", "kafka"],
            "error: invalid value for 'action': 'bogus' is not one of 'freeze', 'heal', "
            "'reset'; see `persister stack net --help`",
        ),
    ],
    ids=["unknown", "misspelt", "missing-option", "unknown-subcommand", "bad-choice"],
)
def test_a_usage_error_is_one_clean_line(
    args: list[str], line: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_app(args) == EXIT_BAD_SETTINGS
    captured = capsys.readouterr()
    assert (captured.out, captured.err) == ("", f"{line}\n")


def test_an_acronym_keeps_its_capitals() -> None:
    assert usage_line("URL is missing.", "persister x") == (
        "error: URL is missing; see `persister x --help`"
    )
